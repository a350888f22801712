// Rung 2: the same arithmetic, threads remapped so a warp covers 32 consecutive columns of one row.
// B loads and C stores become one 128-byte transaction per warp; the A element is a broadcast.
#include "common.cuh"

constexpr int BS = 32;

__global__ void sgemm_coalesced_kernel(SGEMM_ARGS) {
  const int row = blockIdx.y * BS + threadIdx.x / BS;
  const int col = blockIdx.x * BS + threadIdx.x % BS;
  if (row < M && col < N) {
    float acc = 0.0f;
    for (int k = 0; k < K; ++k) acc += A[row * K + k] * B[k * N + col];
    epilogue(&C[row * N + col], acc, alpha, beta);
  }
}

void sgemm_02_coalesced(SGEMM_ARGS, cudaStream_t stream) {
  dim3 grid(ceil_div(N, BS), ceil_div(M, BS));
  sgemm_coalesced_kernel<<<grid, BS * BS, 0, stream>>>(M, N, K, alpha, A, B, beta, C);
}
