// Rung 4: each thread computes TM = 8 outputs down a column. The B value it reads from shared memory
// is reused for 8 FMAs held in registers, so shared-memory loads per FMA fall from 2 to about 1.1.
#include "common.cuh"

constexpr int BM = 64, BN = 64, BK = 8, TM = 8;
constexpr int THREADS = BM * BN / TM;  // 512

__global__ void __launch_bounds__(THREADS) sgemm_blocktile_1d_kernel(SGEMM_ARGS) {
  __shared__ float As[BM][BK];
  __shared__ float Bs[BK][BN];
  const int tid = threadIdx.x;
  const int tc = tid % BN, tr = tid / BN;  // tr: which group of TM rows
  const int row0 = blockIdx.y * BM, col0 = blockIdx.x * BN;
  const int a_r = tid / BK, a_c = tid % BK;  // 512 threads load the 64x8 A tile, one element each
  const int b_r = tid / BN, b_c = tid % BN;  // and the 8x64 B tile
  float acc[TM] = {0.0f};
  for (int k0 = 0; k0 < K; k0 += BK) {
    As[a_r][a_c] = (row0 + a_r < M && k0 + a_c < K) ? A[(row0 + a_r) * K + k0 + a_c] : 0.0f;
    Bs[b_r][b_c] = (k0 + b_r < K && col0 + b_c < N) ? B[(k0 + b_r) * N + col0 + b_c] : 0.0f;
    __syncthreads();
    for (int k = 0; k < BK; ++k) {
      const float b = Bs[k][tc];
#pragma unroll
      for (int i = 0; i < TM; ++i) acc[i] += As[tr * TM + i][k] * b;
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int r = row0 + tr * TM + i, c = col0 + tc;
    if (r < M && c < N) epilogue(&C[r * N + c], acc[i], alpha, beta);
  }
}

void sgemm_04_blocktile_1d(SGEMM_ARGS, cudaStream_t stream) {
  dim3 grid(ceil_div(N, BN), ceil_div(M, BM));
  sgemm_blocktile_1d_kernel<<<grid, THREADS, 0, stream>>>(M, N, K, alpha, A, B, beta, C);
}
