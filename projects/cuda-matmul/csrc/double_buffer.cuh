// Rung 8's kernel, templated on the warp-tile shape W and the pipeline depth STAGES so the tuner can
// instantiate any configuration; 08_double_buffer.cu instantiates the tuned one.
#pragma once
#include "warptile.cuh"

template <class W, bool VEC>
__device__ __forceinline__ void load_tile(SGEMM_ARGS, int k0, float (*As)[W::BM], float (*Bs)[W::BN]) {
  constexpr int BM = W::BM, BN = W::BN, BK = W::BK;
  const int tid = threadIdx.x, row0 = blockIdx.y * BM, col0 = blockIdx.x * BN;
#pragma unroll
  for (int f = tid; f < BM * BK / 4; f += W::THREADS) {  // A: transposed on the way in, 4 bytes at a time
    const int r = f / (BK / 4), c = (f % (BK / 4)) * 4;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const bool ok = row0 + r < M && k0 + c + e < K;
      cp_async_4(&As[c + e][r], ok ? &A[(row0 + r) * K + k0 + c + e] : A, ok);
    }
  }
#pragma unroll
  for (int f = tid; f < BK * BN / 4; f += W::THREADS) {  // B: 16-byte chunks when rows are aligned
    const int r = f / (BN / 4), c = (f % (BN / 4)) * 4;
    if constexpr (VEC) {
      const bool ok = k0 + r < K && col0 + c < N;
      cp_async_16(&Bs[r][c], ok ? &B[(k0 + r) * N + col0 + c] : B, ok);
    } else {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const bool ok = k0 + r < K && col0 + c + e < N;
        cp_async_4(&Bs[r][c + e], ok ? &B[(k0 + r) * N + col0 + c + e] : B, ok);
      }
    }
  }
}

template <class W, int STAGES, bool VEC>
__global__ void __launch_bounds__(W::THREADS) sgemm_double_buffer_kernel(SGEMM_ARGS) {
  __shared__ alignas(16) float As[STAGES][W::BK][W::BM];
  __shared__ alignas(16) float Bs[STAGES][W::BK][W::BN];
  const typename W::Thread t(threadIdx.x);
  float acc[W::ACC] = {0.0f};
  const int tiles = ceil_div(K, W::BK);
  // excerpt: pipeline
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {  // fill all stages but one
    if (s < tiles) load_tile<W, VEC>(M, N, K, alpha, A, B, beta, C, s * W::BK, As[s], Bs[s]);
    cp_async_commit();
  }
  for (int i = 0; i < tiles; ++i) {
    cp_async_wait<STAGES - 2>();  // tile i has landed; up to STAGES - 2 later tiles may still be in flight
    __syncthreads();              // ...for every thread, and everyone is done with the stage refilled next
    const int next = i + STAGES - 1;
    if (next < tiles) load_tile<W, VEC>(M, N, K, alpha, A, B, beta, C, next * W::BK, As[next % STAGES], Bs[next % STAGES]);
    cp_async_commit();
    W::mma_tile(As[i % STAGES], Bs[i % STAGES], t, acc);
  }
  // end-excerpt
  W::store(M, N, K, alpha, A, B, beta, C, t, acc);
}

template <class W, int STAGES>
void launch_double_buffer(SGEMM_ARGS, cudaStream_t stream) {
  dim3 grid(ceil_div(N, W::BN), ceil_div(M, W::BM));
  if (vec4_ok(N, K, A, B))
    sgemm_double_buffer_kernel<W, STAGES, true><<<grid, W::THREADS, 0, stream>>>(M, N, K, alpha, A, B, beta, C);
  else
    sgemm_double_buffer_kernel<W, STAGES, false><<<grid, W::THREADS, 0, stream>>>(M, N, K, alpha, A, B, beta, C);
}
