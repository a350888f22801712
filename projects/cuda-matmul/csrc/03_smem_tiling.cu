// Rung 3: 32x32 tiles of A and B staged in shared memory. Each element loaded from global memory is
// reused 32 times from shared memory, cutting global traffic by 32x; now shared-memory loads (two per
// FMA) are the bottleneck.
#include "common.cuh"

constexpr int BS = 32;

__global__ void sgemm_smem_kernel(SGEMM_ARGS) {
  __shared__ float As[BS][BS];
  __shared__ float Bs[BS][BS];
  const int tr = threadIdx.x / BS, tc = threadIdx.x % BS;
  const int row = blockIdx.y * BS + tr, col = blockIdx.x * BS + tc;
  float acc = 0.0f;
  // excerpt: tile-loop
  for (int k0 = 0; k0 < K; k0 += BS) {
    As[tr][tc] = (row < M && k0 + tc < K) ? A[row * K + k0 + tc] : 0.0f;
    Bs[tr][tc] = (k0 + tr < K && col < N) ? B[(k0 + tr) * N + col] : 0.0f;
    __syncthreads();
    for (int k = 0; k < BS; ++k) acc += As[tr][k] * Bs[k][tc];
    __syncthreads();
  }
  // end-excerpt
  if (row < M && col < N) epilogue(&C[row * N + col], acc, alpha, beta);
}

void sgemm_03_smem_tiling(SGEMM_ARGS, cudaStream_t stream) {
  dim3 grid(ceil_div(N, BS), ceil_div(M, BS));
  sgemm_smem_kernel<<<grid, BS * BS, 0, stream>>>(M, N, K, alpha, A, B, beta, C);
}
