// GELU and its derivative, shared by the CPU and CUDA implementations (host and device).
//   exact: y = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)),    y' = Phi(x) + x phi(x)
//   tanh:  y = 0.5 x (1 + tanh u), u = sqrt(2/pi) (x + 0.044715 x^3),
//          y' = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
#pragma once
#include <cmath>

#if defined(__CUDACC__)
#define GELU_HD __host__ __device__ __forceinline__
#else
#define GELU_HD inline
#endif

enum class Approx : int { None = 0, Tanh = 1 };

template <typename F>
struct GeluConst {
  static constexpr F inv_sqrt2 = F(0.70710678118654752440);   // 1/sqrt(2)
  static constexpr F inv_sqrt_2pi = F(0.39894228040143267794);  // 1/sqrt(2 pi) = phi(0)
  static constexpr F sqrt_2_over_pi = F(0.79788456080286535588);
  static constexpr F k = F(0.044715);
};

// excerpt: erfc-cdf
// The CUDA kernels' exact GELU for fp32, fp16 and bf16. At the copy rate the SMs have about 40 instruction
// slots per fp32 value and 20 per 16-bit one, and erff alone takes about 25 (two polynomials and the
// selects between them). So Phi goes through erfc, Phi(x) = erfc(-x / sqrt 2) / 2, with Numerical Recipes'
// erfcc, erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z / 2), P a degree-9 Chebyshev fit with a relative
// error below 1.2e-7 for every z >= 0: one reciprocal, nine FMAs and one base-2 exponential (log2 e folded
// into the coefficients, so ex2 and rcp are single hardware approximations, 2 ulp at most). The result is
// within 2e-6 (relative) of the true value for |x| < 4 and 2e-5 out to |x| = 14, where 0.5 (1 + erf)
// cancels: erff's form is off by 1e-3 already at x = -4 in fp32 and returns 0 below x ~ -8 (torch's GELU,
// fp64 too). The exponent carries +24, taken back by an exact power-of-two multiply, so values whose
// exponential alone would be subnormal (flushed by ex2.approx.ftz) survive when the product is not.
GELU_HD float ex2_approx(float a) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(a));
  return r;
#else
  return std::exp2(a);
#endif
}

GELU_HD float rcp_approx(float a) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(a));
  return r;
#else
  return 1.0f / a;
#endif
}

struct ErfcFast {
  static constexpr float log2e = 1.4426950408889634f;
  static constexpr float shift = 24.0f;               // exponent bias, removed by * 2^-24
  static constexpr float unshift = 5.9604644775390625e-8f;  // 2^-24
  static constexpr float neg_half_log2e = -0.7213475204444817f;  // -log2(e) / 2: x^2 / 2 in base 2
  static constexpr float log2_pdf0 = -1.3257480647361593f;       // log2(1 / sqrt(2 pi))
};

// Phi(x) and its tail term: returns Phi(x); the caller gets x*x in base-2 units to reuse
GELU_HD float normal_cdf_erfc_fast(float x, float xx) {
  using C = ErfcFast;
  const float t = rcp_approx(1.0f + 0.35355339059327373f * std::fabs(x));  // z / 2 = |x| / (2 sqrt 2)
  // log2(e) * P(t), with -1 (the halving of erfc) and the exponent shift in the constant term
  constexpr float c[10] = {0.17087277f * C::log2e,  -0.82215223f * C::log2e, 1.48851587f * C::log2e,
                           -1.13520398f * C::log2e, 0.27886807f * C::log2e,  -0.18628806f * C::log2e,
                           0.09678418f * C::log2e,  0.37409196f * C::log2e,  1.00002368f * C::log2e,
                           -1.26551223f * C::log2e - 1.0f + C::shift};
  float p = c[0];
  for (int i = 1; i < 10; ++i) p = p * t + c[i];  // a constant trip count: unrolled by both compilers
  const float half_erfc = t * ex2_approx(xx * C::neg_half_log2e + p) * C::unshift;
  return x >= 0.0f ? 1.0f - half_erfc : half_erfc;
}

GELU_HD float gelu_value_erfc_fast(float x) { return x * normal_cdf_erfc_fast(x, x * x); }

GELU_HD float gelu_grad_erfc_fast(float x) {
  using C = ErfcFast;
  const float xx = x * x;
  const float x_pdf = x * ex2_approx(xx * C::neg_half_log2e + (C::log2_pdf0 + C::shift)) * C::unshift;
  return normal_cdf_erfc_fast(x, xx) + x_pdf;
}

// the tanh form, as x * sigmoid(2u): 0.5 (1 + tanh u) = 1 / (1 + exp(-2u)), one ex2 and one rcp (16-bit
// kernels only: fp32 tanhf already keeps up with memory)
GELU_HD float gelu_value_tanh_fast(float x) {
  constexpr float c1 = -2.0f * 0.7978845608028654f * ErfcFast::log2e;  // -2u log2(e) = x (c1 + c2 x^2)
  constexpr float c2 = c1 * 0.044715f;
  return x * rcp_approx(1.0f + ex2_approx(x * (c1 + c2 * x * x)));
}
// end-excerpt

// excerpt: derivative
template <Approx A, typename F>
GELU_HD F gelu_value(F x) {
  using C = GeluConst<F>;
  if constexpr (A == Approx::None) {
    return F(0.5) * x * (F(1) + erf(x * C::inv_sqrt2));
  } else {
    const F u = C::sqrt_2_over_pi * (x + C::k * x * x * x);
    return F(0.5) * x * (F(1) + tanh(u));
  }
}

template <Approx A, typename F>
GELU_HD F gelu_grad(F x) {
  using C = GeluConst<F>;
  if constexpr (A == Approx::None) {
    const F cdf = F(0.5) * (F(1) + erf(x * C::inv_sqrt2));
    const F pdf = C::inv_sqrt_2pi * exp(F(-0.5) * x * x);
    return cdf + x * pdf;
  } else {
    const F x2 = x * x;
    const F t = tanh(C::sqrt_2_over_pi * (x + C::k * x2 * x));
    return F(0.5) * (F(1) + t) + F(0.5) * x * (F(1) - t * t) * C::sqrt_2_over_pi * (F(1) + F(3) * C::k * x2);
  }
}
// end-excerpt
