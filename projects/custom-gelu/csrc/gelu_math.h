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
