// The CPU implementation of every op: plain loops split across threads with at::parallel_for, math in
// fp32 (fp64 for double inputs), so the extension, autograd and gradcheck run where there is no GPU.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include "gelu_ops.h"

namespace custom_gelu {
namespace {
template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

constexpr int64_t GRAIN = 1 << 14;

template <Approx A>
at::Tensor fwd(const at::Tensor &x, const at::Tensor *bias) {
  auto y = at::empty_like(x, at::MemoryFormat::Contiguous);
  const auto xc = x.contiguous();
  const int64_t n = xc.numel(), cols = bias ? bias->numel() : 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gelu_fwd_cpu", [&] {
    using F = acc_t<scalar_t>;
    const scalar_t *xp = xc.data_ptr<scalar_t>(), *bp = bias ? bias->data_ptr<scalar_t>() : nullptr;
    scalar_t *yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, n, GRAIN, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const F v = F(xp[i]) + (bp ? F(bp[i % cols]) : F(0));
        yp[i] = scalar_t(gelu_value<A, F>(v));
      }
    });
  });
  return y;
}

template <Approx A>
std::tuple<at::Tensor, at::Tensor> bwd(const at::Tensor &grad, const at::Tensor &x, const at::Tensor *bias) {
  auto dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  const auto xc = x.contiguous(), gc = grad.contiguous();
  const int64_t n = xc.numel(), cols = bias ? bias->numel() : 1;
  at::Tensor db;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gelu_bwd_cpu", [&] {
    using F = acc_t<scalar_t>;
    const scalar_t *xp = xc.data_ptr<scalar_t>(), *gp = gc.data_ptr<scalar_t>();
    const scalar_t *bp = bias ? bias->data_ptr<scalar_t>() : nullptr;
    scalar_t *dp = dx.data_ptr<scalar_t>();
    at::parallel_for(0, n, GRAIN, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const F v = F(xp[i]) + (bp ? F(bp[i % cols]) : F(0));
        dp[i] = scalar_t(F(gp[i]) * gelu_grad<A, F>(v));
      }
    });
    if (bias) {  // column sums in the accumulation type, then rounded once
      auto acc = at::zeros({cols}, x.options().dtype(std::is_same_v<F, double> ? at::kDouble : at::kFloat));
      F *ap = acc.template data_ptr<F>();
      const int64_t rows = cols ? n / cols : 0;
      at::parallel_for(0, cols, 64, [&](int64_t lo, int64_t hi) {
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = lo; c < hi; ++c) ap[c] += F(dp[r * cols + c]);
      });
      db = acc.to(x.scalar_type());
    }
  });
  return {dx, db};
}
}  // namespace

at::Tensor gelu_fwd_cpu(const at::Tensor &x, int64_t approx) {
  return approx ? fwd<Approx::Tanh>(x, nullptr) : fwd<Approx::None>(x, nullptr);
}
at::Tensor gelu_bwd_cpu(const at::Tensor &grad, const at::Tensor &x, int64_t approx) {
  return std::get<0>(approx ? bwd<Approx::Tanh>(grad, x, nullptr) : bwd<Approx::None>(grad, x, nullptr));
}
at::Tensor bias_gelu_fwd_cpu(const at::Tensor &x, const at::Tensor &b, int64_t approx) {
  const auto bc = b.contiguous();
  return approx ? fwd<Approx::Tanh>(x, &bc) : fwd<Approx::None>(x, &bc);
}
std::tuple<at::Tensor, at::Tensor> bias_gelu_bwd_cpu(const at::Tensor &grad, const at::Tensor &x, const at::Tensor &b,
                                                     int64_t approx) {
  const auto bc = b.contiguous();
  return approx ? bwd<Approx::Tanh>(grad, x, &bc) : bwd<Approx::None>(grad, x, &bc);
}
}  // namespace custom_gelu
