// Rung 10: Hopper's own tensor-core path (sm_90a). bf16 A and B, fp32 accumulation and output.
// Three things change against rung 9's WMMA kernel:
//  - TMA: one thread issues bulk tensor copies (cp.async.bulk.tensor) that land tiles in shared memory
//    already in the 128-byte swizzle the tensor cores read without bank conflicts, and zero-fill
//    everything past M, N or K, so no thread computes an address or a bound in the main loop.
//  - wgmma: a warpgroup (4 warps) issues one asynchronous 64 x 256 x 16 MMA reading both operands
//    straight from shared memory through 64-bit descriptors; no fragment loads into registers.
//  - warp specialisation: warpgroup 0 only produces (TMA), warpgroups 1 and 2 only consume (wgmma),
//    handing STAGES shared-memory buffers back and forth through mbarriers (full: data landed;
//    empty: both consumers are done reading). setmaxnreg moves registers from producer to consumers,
//    which hold the 64 x 256 fp32 accumulator tile: 128 registers per thread.
// Block tile 128 x 256 x 64, four stages (4 x 48 KiB of shared memory), blocks launched in groups of
// GROUP_M row tiles for L2 reuse. A is K-major (row-major M x K);
// B is row-major K x N, i.e. N-major, which wgmma reads transposed (imm-trans-b = 1).
// TMA needs 16-byte row strides, so the binding routes shapes with K or N not a multiple of 8 to rung 9.
#include <cuda.h>  // CUtensorMap and its enums only; the driver function is fetched at run time
#include <cuda_bf16.h>
#include <cudaTypedefs.h>

#include <stdexcept>
#include <string>

#include "common.cuh"

namespace {
constexpr int BM = 128, BN = 256, BK = 64, STAGES = 4, GROUP_M = 16;
constexpr int CONSUMERS = 2, THREADS = 128 * (1 + CONSUMERS);
constexpr int SWIZZLE_BYTES = 128, CHUNK = SWIZZLE_BYTES / 2;  // 64 bf16 per swizzled row
constexpr int A_STAGE_BYTES = BM * BK * 2, B_STAGE_BYTES = BK * BN * 2;
constexpr int B_CHUNK_BYTES = BK * SWIZZLE_BYTES;  // one 64-column slice of the B tile, BK rows
constexpr int SMEM_BYTES = 1024 + STAGES * (A_STAGE_BYTES + B_STAGE_BYTES) + 2 * STAGES * 8;
static_assert(BK == CHUNK, "one A row of the tile is exactly one 128-byte swizzle row");

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// --- mbarrier: a shared-memory barrier that also counts bytes delivered by TMA ---
__device__ __forceinline__ void bar_init(uint64_t *bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(count));
}
__device__ __forceinline__ void bar_expect_bytes(uint64_t *bar, int bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void bar_arrive(uint64_t *bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(bar)) : "memory");
}
// Blocks until the phase with this parity has completed. On a fresh barrier, parity 1 (the phase
// "before" the first) counts as complete, which is how the producer's first pass over the empty
// buffers goes through without waiting.
__device__ __forceinline__ void bar_wait(uint64_t *bar, int parity) {
  unsigned done = 0;
  while (!done) {
    asm volatile(
        "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
        : "=r"(done)
        : "r"(smem_addr(bar)), "r"(parity)
        : "memory");
  }
}

// --- TMA: a 2-D box of the tensor map at (inner, outer) element coordinates into shared memory ---
__device__ __forceinline__ void tma_load(void *dst, const CUtensorMap *map, int inner, int outer, uint64_t *bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];" ::
          "r"(smem_addr(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(inner), "r"(outer), "r"(smem_addr(bar))
      : "memory");
}

// --- wgmma ---
// Shared-memory matrix descriptor: start address, leading- and stride-dimension byte offsets (all in
// 16-byte units) and the swizzle mode (1 = 128-byte). For the K-major A tile (128-byte rows of 64 k):
// stride = 8 rows = 1024 bytes, leading unused. For the N-major B tile, stored as 64-column slices of
// BK rows: leading = one slice (the next 64 columns), stride = 8 k-rows = 1024 bytes.
__device__ __forceinline__ uint64_t smem_desc(const void *p, unsigned leading_bytes, unsigned stride_bytes) {
  return static_cast<uint64_t>((smem_addr(p) & 0x3FFFF) >> 4) | static_cast<uint64_t>(leading_bytes >> 4) << 16 |
         static_cast<uint64_t>(stride_bytes >> 4) << 32 | 1ull << 62;
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N> __device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}

// d[64 x 256] += A[64 x 16] (K-major) * B[16 x 256] (N-major). Accumulator layout per thread: for the
// j-th 8-column block, d[4j], d[4j+1] at row 16*warp + lane/4, columns 8j + 2*(lane%4) + {0, 1};
// d[4j+2], d[4j+3] eight rows below.
__device__ __forceinline__ void wgmma_m64n256k16(float (&d)[128], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63,"
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79,"
      "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95,"
      "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111,"
      "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127},"
      " %128, %129, 1, 1, 1, 0, 1;\n"  // scale-d = 1 (accumulate), scale-a/b = 1, trans-a = 0, trans-b = 1
      "}\n"
#define D8(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
              "+f"(d[i + 6]), "+f"(d[i + 7])
      : D8(0), D8(8), D8(16), D8(24), D8(32), D8(40), D8(48), D8(56), D8(64), D8(72), D8(80), D8(88), D8(96),
        D8(104), D8(112), D8(120)
#undef D8
      : "l"(a), "l"(b));
}
#endif

__global__ void __launch_bounds__(THREADS, 1)
    gemm_bf16_wgmma_kernel(int M, int N, int K, float alpha, float beta, float *C,
                           const __grid_constant__ CUtensorMap a_map, const __grid_constant__ CUtensorMap b_map) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ unsigned char smem_raw[];
  // 128-byte swizzle atoms are 8 rows x 128 bytes and must start on a 1024-byte boundary.
  unsigned char *smem = smem_raw + ((1024 - smem_addr(smem_raw) % 1024) % 1024);
  unsigned char *sA = smem, *sB = smem + STAGES * A_STAGE_BYTES;
  uint64_t *full = reinterpret_cast<uint64_t *>(sB + STAGES * B_STAGE_BYTES), *empty = full + STAGES;

  // Grouped launch order: consecutive blocks walk down GROUP_M row tiles before moving right, so one
  // wave of 132 blocks touches a 2048 x ~2048 patch of C and its A rows and B columns stay in L2
  // (row-major order would stream all of B through L2 every wave once B outgrows it).
  const int tiles_m = ceil_div(M, BM), tiles_n = ceil_div(N, BN), per_group = GROUP_M * tiles_n;
  const int first_m = blockIdx.x / per_group * GROUP_M, group_rows = min(tiles_m - first_m, GROUP_M);
  const int m0 = (first_m + blockIdx.x % per_group % group_rows) * BM, n0 = blockIdx.x % per_group / group_rows * BN;
  const int wg = threadIdx.x / 128;
  const int k_tiles = ceil_div(K, BK);
  if (threadIdx.x == 0) {
    for (int s = 0; s < STAGES; ++s) {
      bar_init(&full[s], 1);                    // the producer's expect_tx arrival; TMA bytes finish it
      bar_init(&empty[s], CONSUMERS * 128);     // every consumer thread, after its wgmma read the stage
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();

  // excerpt: producer-consumer
  if (wg == 0) {  // producer warpgroup: one thread issues every copy, the rest only give up registers
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
    if (threadIdx.x == 0) {
      for (int kt = 0; kt < k_tiles; ++kt) {
        const int s = kt % STAGES;
        bar_wait(&empty[s], ((kt / STAGES) & 1) ^ 1);
        bar_expect_bytes(&full[s], A_STAGE_BYTES + B_STAGE_BYTES);  // out-of-bounds zeros count too
        tma_load(sA + s * A_STAGE_BYTES, &a_map, kt * BK, m0, &full[s]);
        for (int j = 0; j < BN / CHUNK; ++j)
          tma_load(sB + s * B_STAGE_BYTES + j * B_CHUNK_BYTES, &b_map, n0 + j * CHUNK, kt * BK, &full[s]);
      }
    }
    return;
  }

  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");
  const int c = wg - 1;  // this consumer's 64-row half of the block tile
  float d[128];
#pragma unroll
  for (int i = 0; i < 128; ++i) d[i] = 0.0f;
  for (int kt = 0; kt < k_tiles; ++kt) {
    const int s = kt % STAGES;
    bar_wait(&full[s], (kt / STAGES) & 1);
    const unsigned char *a_tile = sA + s * A_STAGE_BYTES + c * 64 * SWIZZLE_BYTES;
    const unsigned char *b_tile = sB + s * B_STAGE_BYTES;
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < BK / 16; ++k)  // 16 k = 32 bytes along an A row; 16 B rows = 2048 bytes
      wgmma_m64n256k16(d, smem_desc(a_tile + k * 32, 16, 1024),
                       smem_desc(b_tile + k * 16 * SWIZZLE_BYTES, B_CHUNK_BYTES, 1024));
    wgmma_commit();
    // Keep this stage's MMAs in flight; the previous stage's are done, so its buffer goes back.
    wgmma_wait<1>();
    if (kt > 0) bar_arrive(&empty[(kt - 1) % STAGES]);
  }
  wgmma_wait<0>();
  // end-excerpt

  const int t = threadIdx.x % 128, warp = t / 32, lane = t % 32;
  const int row = m0 + c * 64 + warp * 16 + lane / 4;
  const bool pairs = N % 2 == 0;  // then every (row, even col) float2 is 8-byte aligned
#pragma unroll
  for (int j = 0; j < BN / 8; ++j) {
    const int col = n0 + j * 8 + 2 * (lane % 4);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = row + 8 * h;
      if (r >= M) continue;
      float *out = C + static_cast<size_t>(r) * N + col;
      const float v0 = alpha * d[4 * j + 2 * h], v1 = alpha * d[4 * j + 2 * h + 1];
      if (pairs && col + 1 < N) {
        float2 v = make_float2(v0, v1);
        if (beta != 0.0f) {
          const float2 old = *reinterpret_cast<float2 *>(out);
          v.x += beta * old.x;
          v.y += beta * old.y;
        }
        *reinterpret_cast<float2 *>(out) = v;
      } else {
        if (col < N) out[0] = beta == 0.0f ? v0 : v0 + beta * out[0];
        if (col + 1 < N) out[1] = beta == 0.0f ? v1 : v1 + beta * out[1];
      }
    }
  }
#else
  __trap();  // built without sm_90a; the binding never launches it then (gemm_10_wgmma_supported)
#endif
}

// A 2-D bf16 tensor map: rows of `inner` elements, `outer` rows, a box of CHUNK x box_outer, 128-byte swizzle.
CUtensorMap make_map(const void *base, int inner, int outer, int box_outer) {
  static PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void *fn = nullptr;
    cudaDriverEntryPointQueryResult found;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found) !=
            cudaSuccess ||
        found != cudaDriverEntryPointSuccess)
      throw std::runtime_error("gemm rung 10: the CUDA driver has no cuTensorMapEncodeTiled (needs CUDA 12+)");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  CUtensorMap map;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(inner), static_cast<cuuint64_t>(outer)};
  const cuuint64_t row_stride[1] = {static_cast<cuuint64_t>(inner) * 2};
  const cuuint32_t box[2] = {CHUNK, static_cast<cuuint32_t>(box_outer)}, step[2] = {1, 1};
  const CUresult err = encode(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void *>(base), dims, row_stride,
                              box, step, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                              CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (err != CUDA_SUCCESS)
    throw std::runtime_error("gemm rung 10: cuTensorMapEncodeTiled failed with CUresult " + std::to_string(err));
  return map;
}
}  // namespace

// TMA wants 16-byte aligned bases and row strides. The kernel body exists only in the sm_90a build, which
// build.py makes whenever it targets compute capability 9.0 (an sm_90a binary runs on exactly that).
bool gemm_10_wgmma_supported(int N, int K, const void *A, const void *B) {
  int device = 0, major = 0, minor = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  return major == 9 && minor == 0 && K > 0 && N % 8 == 0 && K % 8 == 0 && reinterpret_cast<size_t>(A) % 16 == 0 &&
         reinterpret_cast<size_t>(B) % 16 == 0;
}

void gemm_10_wgmma(int M, int N, int K, float alpha, const void *A, const void *B, float beta, float *C,
                   cudaStream_t stream) {
  const CUtensorMap a_map = make_map(A, K, M, BM);     // A: M rows of K
  const CUtensorMap b_map = make_map(B, N, K, BK);     // B: K rows of N, loaded as 64-column slices
  static const bool sized = [] {
    return cudaFuncSetAttribute(gemm_bf16_wgmma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM_BYTES) ==
           cudaSuccess;
  }();
  if (!sized) throw std::runtime_error("gemm rung 10: could not reserve shared memory for the kernel");
  const int blocks = ceil_div(M, BM) * ceil_div(N, BN);
  gemm_bf16_wgmma_kernel<<<blocks, THREADS, SMEM_BYTES, stream>>>(M, N, K, alpha, beta, C, a_map, b_map);
}
