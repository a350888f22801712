// Rung 5: each thread computes an 8x8 patch as an outer product of 8 A values and 8 B values held in
// registers: 64 FMAs per 16 shared-memory loads. 128x128 block tiles also halve global traffic again.
#include "common.cuh"

constexpr int BM = 128, BN = 128, BK = 8, TM = 8, TN = 8;
constexpr int THREADS = (BM / TM) * (BN / TN);  // 256

__global__ void __launch_bounds__(THREADS) sgemm_blocktile_2d_kernel(SGEMM_ARGS) {
  __shared__ float As[BM][BK];
  __shared__ float Bs[BK][BN];
  const int tid = threadIdx.x;
  const int tr = tid / (BN / TN), tc = tid % (BN / TN);
  const int row0 = blockIdx.y * BM, col0 = blockIdx.x * BN;
  float acc[TM][TN] = {{0.0f}};
  float regM[TM], regN[TN];
  for (int k0 = 0; k0 < K; k0 += BK) {
    for (int i = tid; i < BM * BK; i += THREADS) {
      const int r = i / BK, c = i % BK;
      As[r][c] = (row0 + r < M && k0 + c < K) ? A[(row0 + r) * K + k0 + c] : 0.0f;
    }
    for (int i = tid; i < BK * BN; i += THREADS) {
      const int r = i / BN, c = i % BN;
      Bs[r][c] = (k0 + r < K && col0 + c < N) ? B[(k0 + r) * N + col0 + c] : 0.0f;
    }
    __syncthreads();
    // excerpt: outer-product
#pragma unroll
    for (int k = 0; k < BK; ++k) {
#pragma unroll
      for (int i = 0; i < TM; ++i) regM[i] = As[tr * TM + i][k];
#pragma unroll
      for (int j = 0; j < TN; ++j) regN[j] = Bs[k][tc * TN + j];
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] += regM[i] * regN[j];
    }
  // end-excerpt
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int r = row0 + tr * TM + i, c = col0 + tc * TN + j;
      if (r < M && c < N) epilogue(&C[r * N + c], acc[i][j], alpha, beta);
    }
}

void sgemm_05_blocktile_2d(SGEMM_ARGS, cudaStream_t stream) {
  dim3 grid(ceil_div(N, BN), ceil_div(M, BM));
  sgemm_blocktile_2d_kernel<<<grid, THREADS, 0, stream>>>(M, N, K, alpha, A, B, beta, C);
}
