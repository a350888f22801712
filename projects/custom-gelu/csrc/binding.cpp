// The ops, their schemas and their per-device kernels. Autograd and the fake (meta) implementations
// that torch.compile traces with are registered from Python (custom_gelu.ops), next to the wrappers.
#include <torch/extension.h>

#include "gelu_ops.h"

namespace custom_gelu {
namespace {
void check(const at::Tensor &x, const char *what) {
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), what, ": GELU needs a floating-point tensor, got ", x.scalar_type());
}
void check_bias(const at::Tensor &x, const at::Tensor &b) {
  check(x, "x");
  TORCH_CHECK(b.dim() == 1 && x.dim() >= 1 && x.size(-1) == b.size(0), "bias must be 1-D with x.size(-1) = ",
              x.dim() ? x.size(-1) : 0, " elements, got shape ", b.sizes());
  TORCH_CHECK(b.scalar_type() == x.scalar_type(), "bias dtype ", b.scalar_type(), " differs from x dtype ",
              x.scalar_type());
  TORCH_CHECK(b.device() == x.device(), "bias is on ", b.device(), " but x is on ", x.device());
}

template <at::Tensor (*Impl)(const at::Tensor &, int64_t)>
at::Tensor unary(const at::Tensor &x, int64_t approx) {
  check(x, "x");
  return Impl(x, approx);
}
template <at::Tensor (*Impl)(const at::Tensor &, const at::Tensor &, int64_t)>
at::Tensor grad_unary(const at::Tensor &g, const at::Tensor &x, int64_t approx) {
  check(x, "x");
  TORCH_CHECK(g.sizes() == x.sizes() && g.scalar_type() == x.scalar_type() && g.device() == x.device(),
              "grad must match x in shape, dtype and device");
  return Impl(g, x, approx);
}
template <at::Tensor (*Impl)(const at::Tensor &, const at::Tensor &, int64_t)>
at::Tensor bias_fwd(const at::Tensor &x, const at::Tensor &b, int64_t approx) {
  check_bias(x, b);
  return Impl(x, b, approx);
}
template <std::tuple<at::Tensor, at::Tensor> (*Impl)(const at::Tensor &, const at::Tensor &, const at::Tensor &,
                                                     int64_t)>
std::tuple<at::Tensor, at::Tensor> bias_bwd(const at::Tensor &g, const at::Tensor &x, const at::Tensor &b,
                                            int64_t approx) {
  check_bias(x, b);
  TORCH_CHECK(g.sizes() == x.sizes() && g.scalar_type() == x.scalar_type() && g.device() == x.device(),
              "grad must match x in shape, dtype and device");
  return Impl(g, x, b, approx);
}
}  // namespace
}  // namespace custom_gelu

using namespace custom_gelu;

TORCH_LIBRARY(custom_gelu, m) {
  m.def("gelu_fwd(Tensor x, int approximate) -> Tensor");
  m.def("gelu_bwd(Tensor grad, Tensor x, int approximate) -> Tensor");
  m.def("bias_gelu_fwd(Tensor x, Tensor bias, int approximate) -> Tensor");
  m.def("bias_gelu_bwd(Tensor grad, Tensor x, Tensor bias, int approximate) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(custom_gelu, CPU, m) {
  m.impl("gelu_fwd", &unary<gelu_fwd_cpu>);
  m.impl("gelu_bwd", &grad_unary<gelu_bwd_cpu>);
  m.impl("bias_gelu_fwd", &bias_fwd<bias_gelu_fwd_cpu>);
  m.impl("bias_gelu_bwd", &bias_bwd<bias_gelu_bwd_cpu>);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(custom_gelu, CUDA, m) {
  m.impl("gelu_fwd", &unary<gelu_fwd_cuda>);
  m.impl("gelu_bwd", &grad_unary<gelu_bwd_cuda>);
  m.impl("bias_gelu_fwd", &bias_fwd<bias_gelu_fwd_cuda>);
  m.impl("bias_gelu_bwd", &bias_bwd<bias_gelu_bwd_cuda>);
}
#endif
