// Rung 9: tensor cores. bf16 A and B, fp32 accumulation and output, through WMMA (mma.sync on the
// tensor cores, 16x16x16 per instruction group). 128x128x32 block tiles, 8 warps of 64x32, two
// cp.async stages; shared-memory rows padded by 16 bytes so the fragment loads avoid bank conflicts.
// The fp32 epilogue goes through a small per-warp staging tile, so any M and N are handled.
#include <cuda_bf16.h>
#include <mma.h>

#include "common.cuh"

using namespace nvcuda;
using bf16 = __nv_bfloat16;

namespace {
constexpr int BM = 128, BN = 128, BK = 32, WM = 64, WN = 32, PAD = 8;
constexpr int WARPS = (BM / WM) * (BN / WN);  // 8
constexpr int THREADS = WARPS * 32;
constexpr int FM = WM / 16, FN = WN / 16;  // fragments per warp: 4 x 2

template <bool VEC>
__device__ __forceinline__ void load_tile(int M, int N, int K, const bf16 *A, const bf16 *B, int k0,
                                          bf16 (*As)[BK + PAD], bf16 (*Bs)[BN + PAD]) {
  const int tid = threadIdx.x, row0 = blockIdx.y * BM, col0 = blockIdx.x * BN;
  for (int f = tid; f < BM * BK / 8; f += THREADS) {  // 16-byte chunks of 8 bf16
    const int r = f / (BK / 8), c = (f % (BK / 8)) * 8;
    if constexpr (VEC) {
      const bool ok = row0 + r < M && k0 + c < K;
      cp_async_16(&As[r][c], ok ? &A[(row0 + r) * K + k0 + c] : A, ok);
    } else {
      for (int e = 0; e < 8; ++e)
        As[r][c + e] = (row0 + r < M && k0 + c + e < K) ? A[(row0 + r) * K + k0 + c + e] : __float2bfloat16(0.f);
    }
  }
  for (int f = tid; f < BK * BN / 8; f += THREADS) {
    const int r = f / (BN / 8), c = (f % (BN / 8)) * 8;
    if constexpr (VEC) {
      const bool ok = k0 + r < K && col0 + c < N;
      cp_async_16(&Bs[r][c], ok ? &B[(k0 + r) * N + col0 + c] : B, ok);
    } else {
      for (int e = 0; e < 8; ++e)
        Bs[r][c + e] = (k0 + r < K && col0 + c + e < N) ? B[(k0 + r) * N + col0 + c + e] : __float2bfloat16(0.f);
    }
  }
}

template <bool VEC>
__global__ void __launch_bounds__(THREADS) gemm_bf16_wmma_kernel(int M, int N, int K, float alpha, const bf16 *A,
                                                                 const bf16 *B, float beta, float *C) {
  __shared__ alignas(128) bf16 As[2][BM][BK + PAD];
  __shared__ alignas(128) bf16 Bs[2][BK][BN + PAD];
  __shared__ alignas(128) float Cs[WARPS][16 * 16];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wr = warp / (BN / WN), wc = warp % (BN / WN);
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[FM][FN];
#pragma unroll
  for (int i = 0; i < FM; ++i)
#pragma unroll
    for (int j = 0; j < FN; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  const int tiles = ceil_div(K, BK);
  load_tile<VEC>(M, N, K, A, B, 0, As[0], Bs[0]);
  cp_async_commit();
  for (int t = 0; t < tiles; ++t) {
    if (t + 1 < tiles) {
      load_tile<VEC>(M, N, K, A, B, (t + 1) * BK, As[(t + 1) % 2], Bs[(t + 1) % 2]);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const int s = t % 2;
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a[FM];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> b[FN];
#pragma unroll
      for (int i = 0; i < FM; ++i) wmma::load_matrix_sync(a[i], &As[s][wr * WM + i * 16][kk], BK + PAD);
#pragma unroll
      for (int j = 0; j < FN; ++j) wmma::load_matrix_sync(b[j], &Bs[s][kk][wc * WN + j * 16], BN + PAD);
#pragma unroll
      for (int i = 0; i < FM; ++i)
#pragma unroll
        for (int j = 0; j < FN; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
  const int row0 = blockIdx.y * BM + wr * WM, col0 = blockIdx.x * BN + wc * WN;
#pragma unroll
  for (int i = 0; i < FM; ++i)
#pragma unroll
    for (int j = 0; j < FN; ++j) {
      wmma::store_matrix_sync(Cs[warp], acc[i][j], 16, wmma::mem_row_major);
      __syncwarp();
      for (int e = lane; e < 256; e += 32) {
        const int r = row0 + i * 16 + e / 16, c = col0 + j * 16 + e % 16;
        if (r < M && c < N) epilogue(&C[r * N + c], Cs[warp][e], alpha, beta);
      }
      __syncwarp();
    }
}
}  // namespace

void gemm_09_tensor_core(int M, int N, int K, float alpha, const void *A, const void *B, float beta, float *C,
                         cudaStream_t stream) {
  const auto *a = static_cast<const bf16 *>(A);
  const auto *b = static_cast<const bf16 *>(B);
  dim3 grid(ceil_div(N, BN), ceil_div(M, BM));
  const bool vec = K % 8 == 0 && N % 8 == 0 && reinterpret_cast<size_t>(A) % 16 == 0 &&
                   reinterpret_cast<size_t>(B) % 16 == 0;  // 16-byte chunks of 8 bf16 along rows
  if (vec)
    gemm_bf16_wmma_kernel<true><<<grid, THREADS, 0, stream>>>(M, N, K, alpha, a, b, beta, C);
  else
    gemm_bf16_wmma_kernel<false><<<grid, THREADS, 0, stream>>>(M, N, K, alpha, a, b, beta, C);
}
