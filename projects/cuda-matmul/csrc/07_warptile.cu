// Rung 7: warp tiling. Each warp owns a 64x64 region and each thread 8x16 outputs (128 accumulators):
// 6 shared-memory vector loads feed 128 FMAs, and the threads of a warp read neighbouring addresses
// (broadcasts where they share a row, no bank conflicts). BK = 16 halves the barriers per FMA.
#include "warptile.cuh"

using W = WarpTile<128, 128, 16, 64, 64, 4, 8, 4>;
constexpr int BM = W::BM, BN = W::BN, BK = W::BK, THREADS = W::THREADS;

template <bool VEC>
__global__ void __launch_bounds__(THREADS) sgemm_warptile_kernel(SGEMM_ARGS) {
  __shared__ alignas(16) float As[BK][BM];  // transposed
  __shared__ alignas(16) float Bs[BK][BN];
  const int tid = threadIdx.x;
  const W::Thread t(tid);
  const int row0 = blockIdx.y * BM, col0 = blockIdx.x * BN;
  float acc[W::ACC] = {0.0f};
  for (int k0 = 0; k0 < K; k0 += BK) {
#pragma unroll
    for (int f = tid; f < BM * BK / 4; f += THREADS) {  // float4 chunks of A: 4 per thread
      const int r = f / (BK / 4), c = (f % (BK / 4)) * 4;
      float4 a = make_float4(0.f, 0.f, 0.f, 0.f);
      if constexpr (VEC) {
        if (row0 + r < M && k0 + c < K) a = *reinterpret_cast<const float4 *>(&A[(row0 + r) * K + k0 + c]);
      } else {
        float *v = &a.x;
        for (int e = 0; e < 4; ++e)
          if (row0 + r < M && k0 + c + e < K) v[e] = A[(row0 + r) * K + k0 + c + e];
      }
      As[c + 0][r] = a.x;
      As[c + 1][r] = a.y;
      As[c + 2][r] = a.z;
      As[c + 3][r] = a.w;
    }
#pragma unroll
    for (int f = tid; f < BK * BN / 4; f += THREADS) {  // float4 chunks of B: 4 per thread
      const int r = f / (BN / 4), c = (f % (BN / 4)) * 4;
      float4 b = make_float4(0.f, 0.f, 0.f, 0.f);
      if constexpr (VEC) {
        if (k0 + r < K && col0 + c < N) b = *reinterpret_cast<const float4 *>(&B[(k0 + r) * N + col0 + c]);
      } else {
        float *v = &b.x;
        for (int e = 0; e < 4; ++e)
          if (k0 + r < K && col0 + c + e < N) v[e] = B[(k0 + r) * N + col0 + c + e];
      }
      *reinterpret_cast<float4 *>(&Bs[r][c]) = b;
    }
    __syncthreads();
    W::mma_tile(As, Bs, t, acc);
    __syncthreads();
  }
  W::store(M, N, K, alpha, A, B, beta, C, t, acc);
}

void sgemm_07_warptile(SGEMM_ARGS, cudaStream_t stream) {
  dim3 grid(ceil_div(N, BN), ceil_div(M, BM));
  if (vec4_ok(N, K, A, B))
    sgemm_warptile_kernel<true><<<grid, THREADS, 0, stream>>>(M, N, K, alpha, A, B, beta, C);
  else
    sgemm_warptile_kernel<false><<<grid, THREADS, 0, stream>>>(M, N, K, alpha, A, B, beta, C);
}
