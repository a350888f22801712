// The torch op: cuda_matmul::gemm(rung, A, B, C, alpha, beta) writes C = alpha * A @ B + beta * C in place.
// Python (cuda_matmul.ops) validates inputs with messages that name the problem; the checks here are
// the last line of defence for callers that reach the op directly.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include "ladder.h"

namespace {
using Launcher = void (*)(int, int, int, float, const float *, const float *, float, float *, cudaStream_t);
constexpr Launcher FP32_RUNGS[] = {sgemm_01_naive,        sgemm_02_coalesced,  sgemm_03_smem_tiling,
                                   sgemm_04_blocktile_1d, sgemm_05_blocktile_2d, sgemm_06_vectorized,
                                   sgemm_07_warptile,     sgemm_08_double_buffer};
constexpr int64_t NUM_FP32 = sizeof(FP32_RUNGS) / sizeof(FP32_RUNGS[0]);
constexpr int64_t TENSOR_CORE_RUNG = 9, WGMMA_RUNG = 10;

void gemm(int64_t rung, const at::Tensor &A, const at::Tensor &B, at::Tensor &C, double alpha, double beta) {
  TORCH_CHECK(A.is_cuda() && B.is_cuda() && C.is_cuda(), "gemm: A, B and C must be CUDA tensors");
  TORCH_CHECK(A.dim() == 2 && B.dim() == 2 && C.dim() == 2, "gemm: A, B and C must be 2-D");
  TORCH_CHECK(A.is_contiguous() && B.is_contiguous() && C.is_contiguous(), "gemm: tensors must be contiguous");
  const int64_t M = A.size(0), K = A.size(1), N = B.size(1);
  TORCH_CHECK(B.size(0) == K && C.size(0) == M && C.size(1) == N, "gemm: shapes do not compose");
  TORCH_CHECK(C.scalar_type() == at::kFloat, "gemm: C must be float32");
  TORCH_CHECK(M < (1LL << 31) / std::max<int64_t>(N, 1) && M * K < (1LL << 31) && K * N < (1LL << 31),
              "gemm: matrices over 2^31 elements are not supported (32-bit indexing)");
  if (M == 0 || N == 0) return;
  const c10::cuda::CUDAGuard guard(A.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(A.device().index()).stream();
  if (rung >= 1 && rung <= NUM_FP32) {
    TORCH_CHECK(A.scalar_type() == at::kFloat && B.scalar_type() == at::kFloat, "gemm: fp32 rungs take float32");
    FP32_RUNGS[rung - 1](M, N, K, alpha, A.data_ptr<float>(), B.data_ptr<float>(), beta, C.data_ptr<float>(), stream);
  } else if (rung == TENSOR_CORE_RUNG) {
    TORCH_CHECK(A.scalar_type() == at::kBFloat16 && B.scalar_type() == at::kBFloat16,
                "gemm: the tensor-core rung takes bfloat16 A and B");
    gemm_09_tensor_core(M, N, K, alpha, A.data_ptr(), B.data_ptr(), beta, C.data_ptr<float>(), stream);
  } else if (rung == WGMMA_RUNG) {
    TORCH_CHECK(A.scalar_type() == at::kBFloat16 && B.scalar_type() == at::kBFloat16,
                "gemm: the wgmma rung takes bfloat16 A and B");
    // TMA needs 16-byte row strides and the sm_90a kernel; other shapes or GPUs take rung 9's kernel.
    if (gemm_10_wgmma_supported(N, K, A.data_ptr(), B.data_ptr()))
      gemm_10_wgmma(M, N, K, alpha, A.data_ptr(), B.data_ptr(), beta, C.data_ptr<float>(), stream);
    else
      gemm_09_tensor_core(M, N, K, alpha, A.data_ptr(), B.data_ptr(), beta, C.data_ptr<float>(), stream);
  } else {
    TORCH_CHECK(false, "gemm: no rung ", rung);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
}  // namespace

TORCH_LIBRARY(cuda_matmul, m) {
  m.def("gemm(int rung, Tensor A, Tensor B, Tensor(a!) C, float alpha, float beta) -> ()");
}
TORCH_LIBRARY_IMPL(cuda_matmul, CUDA, m) { m.impl("gemm", &gemm); }
