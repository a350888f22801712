// Shared by every rung: the launcher signature, ceil-div, the BLAS epilogue, cp.async wrappers.
// Kernel files include only CUDA headers (no torch), so each compiles alone for its resource report.
#pragma once
#include <cuda_runtime.h>

#define SGEMM_ARGS int M, int N, int K, float alpha, const float *A, const float *B, float beta, float *C

__host__ __device__ constexpr int ceil_div(int a, int b) { return (a + b - 1) / b; }

// BLAS semantics: with beta == 0, C is write-only (never read, so NaN or garbage in it cannot leak).
__device__ __forceinline__ void epilogue(float *c, float acc, float alpha, float beta) {
  *c = beta == 0.0f ? alpha * acc : alpha * acc + beta * *c;
}

__device__ __forceinline__ unsigned smem_addr(const void *p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// Asynchronous global->shared copies (sm_80+). src_bytes < size zero-fills the rest: out-of-bounds
// elements become 0 without a branch around the copy.
__device__ __forceinline__ void cp_async_4(void *dst, const void *src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void cp_async_16(void *dst, const void *src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// float4 loads need 16-byte alignment: rows of A and B start aligned when K and N are multiples of 4.
inline bool vec4_ok(int N, int K, const void *A, const void *B) {
  return N % 4 == 0 && K % 4 == 0 && reinterpret_cast<size_t>(A) % 16 == 0 && reinterpret_cast<size_t>(B) % 16 == 0;
}
