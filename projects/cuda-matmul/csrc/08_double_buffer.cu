// Rung 8: double buffering with cp.async. While the warps multiply tile t out of one shared-memory
// stage, the copy engine path fills the other stage with tile t+1, straight from global to shared
// memory without passing through registers: memory latency hides behind the math. A is still
// transposed on the way in, one 4-byte cp.async per element; B moves in 16-byte cp.async chunks.
#include "warptile.cuh"

using namespace warptile;

template <bool VEC>
__device__ __forceinline__ void load_tile(SGEMM_ARGS, int k0, float (*As)[BM], float (*Bs)[BN]) {
  const int tid = threadIdx.x, row0 = blockIdx.y * BM, col0 = blockIdx.x * BN;
#pragma unroll
  for (int f = tid; f < BM * BK / 4; f += THREADS) {
    const int r = f / (BK / 4), c = (f % (BK / 4)) * 4;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const bool ok = row0 + r < M && k0 + c + e < K;
      cp_async_4(&As[c + e][r], ok ? &A[(row0 + r) * K + k0 + c + e] : A, ok);
    }
  }
#pragma unroll
  for (int f = tid; f < BK * BN / 4; f += THREADS) {
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

template <bool VEC>
__global__ void __launch_bounds__(THREADS) sgemm_double_buffer_kernel(SGEMM_ARGS) {
  __shared__ alignas(16) float As[2][BK][BM];
  __shared__ alignas(16) float Bs[2][BK][BN];
  const Thread t(threadIdx.x);
  float acc[WMITER * TM * WNITER * TN] = {0.0f};
  // excerpt: pipeline
  const int tiles = ceil_div(K, BK);
  load_tile<VEC>(M, N, K, alpha, A, B, beta, C, 0, As[0], Bs[0]);
  cp_async_commit();
  for (int i = 0; i < tiles; ++i) {
    if (i + 1 < tiles) {
      load_tile<VEC>(M, N, K, alpha, A, B, beta, C, (i + 1) * BK, As[(i + 1) % 2], Bs[(i + 1) % 2]);
      cp_async_commit();
      cp_async_wait<1>();  // tile i has landed; tile i+1 may still be in flight
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    mma_tile(As[i % 2], Bs[i % 2], t, acc);
    __syncthreads();  // stage i%2 is refilled by the next iteration's load
  }
  // end-excerpt
  store(M, N, K, alpha, A, B, beta, C, t, acc);
}

void sgemm_08_double_buffer(SGEMM_ARGS, cudaStream_t stream) {
  dim3 grid(ceil_div(N, BN), ceil_div(M, BM));
  if (vec4_ok(N, K, A, B))
    sgemm_double_buffer_kernel<true><<<grid, THREADS, 0, stream>>>(M, N, K, alpha, A, B, beta, C);
  else
    sgemm_double_buffer_kernel<false><<<grid, THREADS, 0, stream>>>(M, N, K, alpha, A, B, beta, C);
}
