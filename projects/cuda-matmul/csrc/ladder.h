// The launchers of every rung, one per source file, as the binding sees them.
#pragma once
#include <cuda_runtime.h>

#define SGEMM_LAUNCHER(name) \
  void name(int M, int N, int K, float alpha, const float *A, const float *B, float beta, float *C, cudaStream_t s)
SGEMM_LAUNCHER(sgemm_01_naive);
SGEMM_LAUNCHER(sgemm_02_coalesced);
SGEMM_LAUNCHER(sgemm_03_smem_tiling);
SGEMM_LAUNCHER(sgemm_04_blocktile_1d);
SGEMM_LAUNCHER(sgemm_05_blocktile_2d);
SGEMM_LAUNCHER(sgemm_06_vectorized);
SGEMM_LAUNCHER(sgemm_07_warptile);
SGEMM_LAUNCHER(sgemm_08_double_buffer);
void gemm_09_tensor_core(int M, int N, int K, float alpha, const void *A, const void *B, float beta, float *C,
                         cudaStream_t s);
void gemm_10_wgmma(int M, int N, int K, float alpha, const void *A, const void *B, float beta, float *C,
                   cudaStream_t s);
bool gemm_10_wgmma_supported(int N, int K, const void *A, const void *B);
