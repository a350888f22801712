// The op implementations per device, as the binding registers them.
#pragma once
#include <ATen/ATen.h>

#include <tuple>

#include "gelu_math.h"

namespace custom_gelu {
at::Tensor gelu_fwd_cpu(const at::Tensor &x, int64_t approx);
at::Tensor gelu_bwd_cpu(const at::Tensor &grad, const at::Tensor &x, int64_t approx);
at::Tensor bias_gelu_fwd_cpu(const at::Tensor &x, const at::Tensor &b, int64_t approx);
std::tuple<at::Tensor, at::Tensor> bias_gelu_bwd_cpu(const at::Tensor &grad, const at::Tensor &x, const at::Tensor &b,
                                                     int64_t approx);
#ifdef WITH_CUDA
at::Tensor gelu_fwd_cuda(const at::Tensor &x, int64_t approx);
at::Tensor gelu_bwd_cuda(const at::Tensor &grad, const at::Tensor &x, int64_t approx);
at::Tensor bias_gelu_fwd_cuda(const at::Tensor &x, const at::Tensor &b, int64_t approx);
std::tuple<at::Tensor, at::Tensor> bias_gelu_bwd_cuda(const at::Tensor &grad, const at::Tensor &x,
                                                      const at::Tensor &b, int64_t approx);
#endif
}  // namespace custom_gelu
