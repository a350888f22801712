// The warp-tiled inner product shared by rungs 7 and 8: a 128x128 block tile split into 64x64 warp
// tiles, each warp tile walked in WNITER sub-tiles so a warp's 32 threads read contiguous shared memory.
#pragma once
#include "common.cuh"

namespace warptile {
constexpr int BM = 128, BN = 128, BK = 16;
constexpr int WM = 64, WN = 64, WNITER = 4;
constexpr int TM = 8, TN = 4;
constexpr int THREADS = (BM / WM) * (BN / WN) * 32;          // 128: four warps
constexpr int WMITER = (WM * WN) / (32 * TM * TN * WNITER);  // 1
constexpr int WSUBM = WM / WMITER, WSUBN = WN / WNITER;      // 64 x 16 per sub-tile
static_assert((WSUBM / TM) * (WSUBN / TN) == 32, "a warp's threads must tile a sub-tile exactly");

struct Thread {
  int warp_row, warp_col, t_row, t_col;
  __device__ explicit Thread(int tid) {
    const int warp = tid / 32, lane = tid % 32;
    warp_row = warp / (BN / WN);
    warp_col = warp % (BN / WN);
    t_row = lane / (WSUBN / TN);
    t_col = lane % (WSUBN / TN);
  }
};

// acc += As^T[k] (x) Bs[k] over one BK slice; As is k-major (transposed), both in shared memory.
__device__ __forceinline__ void mma_tile(const float (*As)[BM], const float (*Bs)[BN], const Thread &t,
                                         float (&acc)[WMITER * TM * WNITER * TN]) {
  float regM[WMITER * TM], regN[WNITER * TN];
#pragma unroll
  for (int k = 0; k < BK; ++k) {
#pragma unroll
    for (int wm = 0; wm < WMITER; ++wm)
#pragma unroll
      for (int i = 0; i < TM; i += 4)
        *reinterpret_cast<float4 *>(&regM[wm * TM + i]) =
            *reinterpret_cast<const float4 *>(&As[k][t.warp_row * WM + wm * WSUBM + t.t_row * TM + i]);
#pragma unroll
    for (int wn = 0; wn < WNITER; ++wn)
      *reinterpret_cast<float4 *>(&regN[wn * TN]) =
          *reinterpret_cast<const float4 *>(&Bs[k][t.warp_col * WN + wn * WSUBN + t.t_col * TN]);
#pragma unroll
    for (int i = 0; i < WMITER * TM; ++i)
#pragma unroll
      for (int j = 0; j < WNITER * TN; ++j) acc[i * WNITER * TN + j] += regM[i] * regN[j];
  }
}

__device__ __forceinline__ void store(SGEMM_ARGS, const Thread &t, const float (&acc)[WMITER * TM * WNITER * TN]) {
  const int row0 = blockIdx.y * BM, col0 = blockIdx.x * BN;
#pragma unroll
  for (int wm = 0; wm < WMITER; ++wm)
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int wn = 0; wn < WNITER; ++wn)
#pragma unroll
        for (int j = 0; j < TN; ++j) {
          const int r = row0 + t.warp_row * WM + wm * WSUBM + t.t_row * TM + i;
          const int c = col0 + t.warp_col * WN + wn * WSUBN + t.t_col * TN + j;
          if (r < M && c < N) epilogue(&C[r * N + c], acc[(wm * TM + i) * WNITER * TN + wn * TN + j], alpha, beta);
        }
}
}  // namespace warptile
