// Rung 1: one thread per output element, threadIdx.x walking down a column of C.
// Adjacent threads read A rows K floats apart and write C elements N floats apart: every warp
// access touches 32 different cache lines. This is the baseline everything else is measured from.
#include "common.cuh"

// excerpt: naive
__global__ void sgemm_naive_kernel(SGEMM_ARGS) {
  const int row = blockIdx.x * blockDim.x + threadIdx.x;
  const int col = blockIdx.y * blockDim.y + threadIdx.y;
  if (row < M && col < N) {
    float acc = 0.0f;
    for (int k = 0; k < K; ++k) acc += A[row * K + k] * B[k * N + col];
    epilogue(&C[row * N + col], acc, alpha, beta);
  }
}
// end-excerpt

void sgemm_01_naive(SGEMM_ARGS, cudaStream_t stream) {
  dim3 block(32, 32), grid(ceil_div(M, 32), ceil_div(N, 32));
  sgemm_naive_kernel<<<grid, block, 0, stream>>>(M, N, K, alpha, A, B, beta, C);
}
