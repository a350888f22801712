// The warp-tiled inner product shared by rungs 7 and 8, templated on its tile shape so the shape can be
// tuned (tune/tune_warptile.py): a BM x BN block tile split into WM x WN warp tiles, each walked in
// WNITER sub-tiles so a warp's 32 threads read contiguous shared memory; TM x TN outputs per sub-tile.
#pragma once
#include "common.cuh"

template <int BM_, int BN_, int BK_, int WM_, int WN_, int WNITER_, int TM_, int TN_>
struct WarpTile {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, WM = WM_, WN = WN_, WNITER = WNITER_, TM = TM_, TN = TN_;
  static constexpr int THREADS = (BM / WM) * (BN / WN) * 32;
  static constexpr int WMITER = (WM * WN) / (32 * TM * TN * WNITER);
  static constexpr int WSUBM = WM / WMITER, WSUBN = WN / WNITER;
  static constexpr int ACC = WMITER * TM * WNITER * TN;  // accumulators per thread
  static_assert(WMITER >= 1 && (WSUBM / TM) * (WSUBN / TN) == 32, "a warp's threads must tile a sub-tile exactly");
  static_assert(TM % 4 == 0 && TN % 4 == 0 && BK % 4 == 0, "fragments move as float4");

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

  struct Fragments {
    float m[WMITER * TM], n[WNITER * TN];  // a thread's A column and B row pieces at one k
  };

  // Row k of the transposed A tile (rows LDA floats apart: BM plus any padding) and of the B tile, as this
  // thread's fragments, in 16-byte loads.
  template <int LDA>
  static __device__ __forceinline__ void load_fragments(const float (*As)[LDA], const float (*Bs)[BN], int k,
                                                        const Thread &t, Fragments &f) {
#pragma unroll
    for (int wm = 0; wm < WMITER; ++wm)
#pragma unroll
      for (int i = 0; i < TM; i += 4)
        *reinterpret_cast<float4 *>(&f.m[wm * TM + i]) =
            *reinterpret_cast<const float4 *>(&As[k][t.warp_row * WM + wm * WSUBM + t.t_row * TM + i]);
#pragma unroll
    for (int wn = 0; wn < WNITER; ++wn)
#pragma unroll
      for (int j = 0; j < TN; j += 4)
        *reinterpret_cast<float4 *>(&f.n[wn * TN + j]) =
            *reinterpret_cast<const float4 *>(&Bs[k][t.warp_col * WN + wn * WSUBN + t.t_col * TN + j]);
  }

  static __device__ __forceinline__ void outer_product(const Fragments &f, float (&acc)[ACC]) {
#pragma unroll
    for (int i = 0; i < WMITER * TM; ++i)
#pragma unroll
      for (int j = 0; j < WNITER * TN; ++j) acc[i * WNITER * TN + j] += f.m[i] * f.n[j];
  }

  // acc += As^T[k] (x) Bs[k] over one BK slice, both in shared memory.
  template <int LDA>
  static __device__ __forceinline__ void mma_tile(const float (*As)[LDA], const float (*Bs)[BN], const Thread &t,
                                                  float (&acc)[ACC]) {
    Fragments f;
#pragma unroll
    for (int k = 0; k < BK; ++k) {
      load_fragments(As, Bs, k, t, f);
      outer_product(f, acc);
    }
  }

  static __device__ __forceinline__ void store(SGEMM_ARGS, const Thread &t, const float (&acc)[ACC]) {
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
};
