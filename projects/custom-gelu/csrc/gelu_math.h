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
// Phi(x) through erfc: Phi(x) = 0.5 erfc(-x / sqrt 2), with erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z/2),
// P a degree-9 Chebyshev fit (Numerical Recipes' erfcc), relative error below 1.2e-7 for every z >= 0.
// One reciprocal, ten FMAs and one exponential, against erff's two polynomials and the selects between
// them: what lets the 16-bit kernels, eight values per 16-byte load, keep up with memory. And unlike
// 0.5 (1 + erf(x / sqrt 2)), it keeps its relative accuracy in the negative tail, where 1 + erf cancels to
// 0 (torch's GELU returns 0 there from x < -8 or so, fp64 too).
template <typename F>
GELU_HD F fast_exp(F a) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(F) == 4) return __expf(a);  // ex2.approx: 2 ulp, plenty for a 16-bit result
#endif
  return std::exp(a);
}

template <typename F>
GELU_HD F fast_rcp(F a) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(F) == 4) return __fdividef(F(1), a);  // rcp.approx, for a in [1, inf)
#endif
  return F(1) / a;
}

template <typename F>
GELU_HD F normal_cdf_erfc(F x) {
  const F z = (x < F(0) ? -x : x) * GeluConst<F>::inv_sqrt2;
  const F t = fast_rcp(F(1) + F(0.5) * z);
  constexpr F c[10] = {F(0.17087277), F(-0.82215223), F(1.48851587), F(-1.13520398), F(0.27886807),
                       F(-0.18628806), F(0.09678418),  F(0.37409196), F(1.00002368),  F(-1.26551223)};
  F p = c[0];
  for (int i = 1; i < 10; ++i) p = p * t + c[i];  // a constant trip count: unrolled by both compilers
  const F half_erfc = F(0.5) * t * fast_exp(p - z * z);
  return x >= F(0) ? F(1) - half_erfc : half_erfc;
}

// The exact form through normal_cdf_erfc (the fp16 and bf16 CUDA kernels use these)
template <typename F>
GELU_HD F gelu_value_erfc(F x) {
  return x * normal_cdf_erfc(x);
}

template <typename F>
GELU_HD F gelu_grad_erfc(F x) {
  return normal_cdf_erfc(x) + x * GeluConst<F>::inv_sqrt_2pi * fast_exp(F(-0.5) * x * x);
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
