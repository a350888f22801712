// Rung 8's kernel, templated on the warp-tile shape W and the pipeline depth STAGES so the tuner can
// instantiate any configuration; 08_double_buffer.cu instantiates the tuned one.
//
// Two things make it fast, besides the cp.async stages themselves:
// - The copy of a tile is planned once per thread, outside the k-loop: which elements of A and which
//   16-byte chunks of B the thread moves, their global addresses (advanced by one tile per step) and
//   whether their row or column lies inside the matrix. A k-step issues its cp.asyncs with no index
//   arithmetic, and only the last, partial tile along K checks bounds per element. (A first version
//   recomputed every address and bound per element, in a loop the compiler could not unroll: most of the
//   main loop's instructions besides the FMAs were that arithmetic.) Each warp-wide copy of A reads 4 rows
//   x 8 columns (four 32-byte sectors) and writes them transposed into 32 different banks.
// - Fragments are double-buffered in registers: the shared-memory loads for step k + 1 are issued before
//   the FMAs of step k, and the barrier between tiles sits before the last step's FMAs, so the next
//   tile's first fragments load while those run. Without this, warps waited on shared-memory loads
// (Nsight Compute's short-scoreboard stall) at every k-step.
#pragma once
#include "warptile.cuh"

template <class W, bool VEC>
struct TileCopy {
  static constexpr int BM = W::BM, BN = W::BN, BK = W::BK, THREADS = W::THREADS, WARPS = THREADS / 32;
  // A is stored transposed, [BK][BM + 4]: with the 4-float pad, the 4 rows x 8 columns a warp copies at
  // once land in 32 different banks (rows stay 16-byte aligned for the fragment loads).
  static constexpr int LDA = BM + 4;
  static constexpr int A_ROW_SETS = BM / 4 / WARPS;  // 4-row groups per warp; each spans the tile's BK
  static constexpr int A_K_BLOCKS = BK / 8;
  static constexpr int B_CHUNKS = BK * BN / 4 / THREADS;
  static constexpr int B_ROW_STEP = THREADS / (BN / 4);  // k-rows between a thread's B chunks
  static_assert(BM % (4 * WARPS) == 0 && BK % 8 == 0, "A tile must split into 4 x 8 pieces, evenly over the warps");
  static_assert(B_CHUNKS >= 1 && B_CHUNKS * THREADS * 4 == BK * BN && THREADS % (BN / 4) == 0,
                "B tile must split into 16-byte chunks, evenly over the threads");

  const float *a[A_ROW_SETS], *b[B_CHUNKS];
  const float *a_base, *b_base;  // A and B themselves: the source named by a copy that reads nothing
  int a_row, a_k, b_row, b_col;  // this thread's first element / chunk, inside the tile
  int b_cols_left;               // columns of B from this thread's chunk to the matrix edge
  size_t b_step;                 // elements from one tile of B to the next
  bool a_ok[A_ROW_SETS], b_ok;   // row of A / column of B inside the matrix

  __device__ TileCopy(SGEMM_ARGS) {
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int row0 = blockIdx.y * BM, col0 = blockIdx.x * BN;
    a_base = A;
    b_base = B;
    a_row = warp * 4 + lane / 8;
    a_k = lane % 8;
#pragma unroll
    for (int j = 0; j < A_ROW_SETS; ++j) {
      const int r = row0 + a_row + j * 4 * WARPS;
      a_ok[j] = r < M;
      a[j] = A + size_t(a_ok[j] ? r : 0) * K + a_k;  // rows past M point at row 0 and copy nothing
    }
    b_row = tid / (BN / 4);
    b_col = (tid % (BN / 4)) * 4;
    b_cols_left = N - (col0 + b_col);
    b_ok = b_cols_left > 0;
    b_step = size_t(BK) * N;
#pragma unroll
    for (int i = 0; i < B_CHUNKS; ++i) b[i] = B + size_t(b_row + i * B_ROW_STEP) * N + (b_ok ? col0 + b_col : 0);
  }

  // Issue the copies of the tile starting at k0 into one stage, then step the addresses to the next tile.
  __device__ __forceinline__ void issue(int K, int k0, float (*As)[LDA], float (*Bs)[BN]) {
    if (K - k0 >= BK) {  // a whole tile along K: only the fixed row (A) and column (B) bounds apply
#pragma unroll
      for (int j = 0; j < A_ROW_SETS; ++j)
#pragma unroll
        for (int kb = 0; kb < A_K_BLOCKS; ++kb) cp_async_4(&As[kb * 8 + a_k][a_row + j * 4 * WARPS], a[j] + kb * 8, a_ok[j]);
#pragma unroll
      for (int i = 0; i < B_CHUNKS; ++i) {
        float *dst = &Bs[b_row + i * B_ROW_STEP][b_col];
        if constexpr (VEC) {  // N % 4 == 0: a chunk is wholly inside or wholly past N
          cp_async_16(dst, b[i], b_ok);
        } else {
#pragma unroll
          for (int e = 0; e < 4; ++e) cp_async_4(dst + e, e < b_cols_left ? b[i] + e : b_base, e < b_cols_left);
        }
      }
    } else {
      issue_tail(K - k0, As, Bs);
    }
#pragma unroll
    for (int j = 0; j < A_ROW_SETS; ++j) a[j] += BK;
#pragma unroll
    for (int i = 0; i < B_CHUNKS; ++i) b[i] += b_step;
  }

  // The last tile along K: every element checked, and a copy that reads nothing names A or B itself, so no
  // address past the matrix is ever formed into a request.
  __device__ __forceinline__ void issue_tail(int k_left, float (*As)[LDA], float (*Bs)[BN]) {
#pragma unroll
    for (int j = 0; j < A_ROW_SETS; ++j)
#pragma unroll
      for (int kb = 0; kb < A_K_BLOCKS; ++kb) {
        const bool ok = a_ok[j] && kb * 8 + a_k < k_left;
        cp_async_4(&As[kb * 8 + a_k][a_row + j * 4 * WARPS], ok ? a[j] + kb * 8 : a_base, ok);
      }
#pragma unroll
    for (int i = 0; i < B_CHUNKS; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const bool ok = b_row + i * B_ROW_STEP < k_left && e < b_cols_left;
        cp_async_4(&Bs[b_row + i * B_ROW_STEP][b_col + e], ok ? b[i] + e : b_base, ok);
      }
  }
};

// Dynamic shared memory: the tuned stages (three of 128 + 4 and 256 columns by 16 rows, 73 KiB) are past the
// 48 KiB a kernel may declare statically.
template <class W, int STAGES>
struct Stages {
  float a[STAGES][W::BK][TileCopy<W, true>::LDA];
  float b[STAGES][W::BK][W::BN];
};

// A thread with 64 accumulators fits in 128 registers: asking the compiler for that lets two 256-thread
// blocks share an SM (16 warps to hide latency). Larger thread tiles get the whole register file.
template <class W>
constexpr int min_blocks_per_sm() { return W::ACC <= 64 ? 65536 / (W::THREADS * 128) : 1; }

template <class W, int STAGES, bool VEC>
__global__ void __launch_bounds__(W::THREADS, min_blocks_per_sm<W>()) sgemm_double_buffer_kernel(SGEMM_ARGS) {
  static_assert(STAGES >= 2, "a stage to read and one to fill");
  extern __shared__ float4 smem[];
  auto &s = *reinterpret_cast<Stages<W, STAGES> *>(smem);
  const typename W::Thread t(threadIdx.x);
  TileCopy<W, VEC> copy(M, N, K, alpha, A, B, beta, C);
  float acc[W::ACC] = {0.0f};
  const int tiles = ceil_div(K, W::BK);
  // excerpt: pipeline
#pragma unroll
  for (int st = 0; st < STAGES; ++st) {  // fill every stage
    if (st < tiles) copy.issue(K, st * W::BK, s.a[st], s.b[st]);
    cp_async_commit();
  }
  cp_async_wait<STAGES - 1>();  // tile 0 has landed
  __syncthreads();
  typename W::Fragments f[2];
  W::load_fragments(s.a[0], s.b[0], 0, t, f[0]);
  int read = 0;  // the stage holding tile i
  for (int i = 0; i < tiles; ++i) {
#pragma unroll
    for (int k = 0; k < W::BK; ++k) {
      if (k < W::BK - 1) {
        W::load_fragments(s.a[read], s.b[read], k + 1, t, f[(k + 1) % 2]);
      } else {  // tile i's last fragments are in registers: its stage can take tile i + STAGES
        cp_async_wait<STAGES - 2>();  // tile i + 1 has landed; later tiles may still be in flight
        __syncthreads();              // ...for every thread, and every thread is done reading tile i
        if (i + STAGES < tiles) copy.issue(K, (i + STAGES) * W::BK, s.a[read], s.b[read]);
        cp_async_commit();
        read = read == STAGES - 1 ? 0 : read + 1;
        if (i + 1 < tiles) W::load_fragments(s.a[read], s.b[read], 0, t, f[0]);
      }
      W::outer_product(f[k % 2], acc);
    }
  }
  // end-excerpt
  W::store(M, N, K, alpha, A, B, beta, C, t, acc);
}

template <class W, int STAGES, bool VEC>
void launch_double_buffer_as(SGEMM_ARGS, cudaStream_t stream) {
  constexpr int bytes = sizeof(Stages<W, STAGES>);
  auto kernel = sgemm_double_buffer_kernel<W, STAGES, VEC>;
  if (bytes > 48 * 1024) cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  dim3 grid(ceil_div(N, W::BN), ceil_div(M, W::BM));
  kernel<<<grid, W::THREADS, bytes, stream>>>(M, N, K, alpha, A, B, beta, C);
}

template <class W, int STAGES>
void launch_double_buffer(SGEMM_ARGS, cudaStream_t stream) {
  if (vec4_ok(N, K, A, B))
    launch_double_buffer_as<W, STAGES, true>(M, N, K, alpha, A, B, beta, C, stream);
  else
    launch_double_buffer_as<W, STAGES, false>(M, N, K, alpha, A, B, beta, C, stream);
}
