// Rung 6: 16-byte loads. Global loads of A and B move 4 floats per instruction, and A is stored
// transposed in shared memory (k-major) so each thread reads its 8 A values, like its 8 B values,
// as two 16-byte shared loads instead of eight 4-byte ones. Falls back to scalar loads when K or N is
// not a multiple of 4 (rows would not be 16-byte aligned).
#include "common.cuh"

constexpr int BM = 128, BN = 128, BK = 8, TM = 8, TN = 8;
constexpr int THREADS = (BM / TM) * (BN / TN);  // 256

template <bool VEC>
__global__ void __launch_bounds__(THREADS) sgemm_vectorized_kernel(SGEMM_ARGS) {
  __shared__ alignas(16) float As[BK][BM];  // transposed: As[k][m]
  __shared__ alignas(16) float Bs[BK][BN];
  const int tid = threadIdx.x;
  const int tr = tid / (BN / TN), tc = tid % (BN / TN);
  const int row0 = blockIdx.y * BM, col0 = blockIdx.x * BN;
  const int a_r = tid / (BK / 4), a_c = (tid % (BK / 4)) * 4;  // one float4 of A per thread
  const int b_r = tid / (BN / 4), b_c = (tid % (BN / 4)) * 4;  // one float4 of B per thread
  float acc[TM][TN] = {{0.0f}};
  float regM[TM], regN[TN];
  for (int k0 = 0; k0 < K; k0 += BK) {
    if constexpr (VEC) {
      float4 a = make_float4(0.f, 0.f, 0.f, 0.f), b = a;
      if (row0 + a_r < M && k0 + a_c < K) a = *reinterpret_cast<const float4 *>(&A[(row0 + a_r) * K + k0 + a_c]);
      if (k0 + b_r < K && col0 + b_c < N) b = *reinterpret_cast<const float4 *>(&B[(k0 + b_r) * N + col0 + b_c]);
      As[a_c + 0][a_r] = a.x;
      As[a_c + 1][a_r] = a.y;
      As[a_c + 2][a_r] = a.z;
      As[a_c + 3][a_r] = a.w;
      *reinterpret_cast<float4 *>(&Bs[b_r][b_c]) = b;
    } else {
#pragma unroll
      for (int v = 0; v < 4; ++v) {
        As[a_c + v][a_r] = (row0 + a_r < M && k0 + a_c + v < K) ? A[(row0 + a_r) * K + k0 + a_c + v] : 0.0f;
        Bs[b_r][b_c + v] = (k0 + b_r < K && col0 + b_c + v < N) ? B[(k0 + b_r) * N + col0 + b_c + v] : 0.0f;
      }
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < BK; ++k) {
      *reinterpret_cast<float4 *>(&regM[0]) = *reinterpret_cast<const float4 *>(&As[k][tr * TM]);
      *reinterpret_cast<float4 *>(&regM[4]) = *reinterpret_cast<const float4 *>(&As[k][tr * TM + 4]);
      *reinterpret_cast<float4 *>(&regN[0]) = *reinterpret_cast<const float4 *>(&Bs[k][tc * TN]);
      *reinterpret_cast<float4 *>(&regN[4]) = *reinterpret_cast<const float4 *>(&Bs[k][tc * TN + 4]);
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] += regM[i] * regN[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int r = row0 + tr * TM + i, c = col0 + tc * TN + j;
      if (r < M && c < N) epilogue(&C[r * N + c], acc[i][j], alpha, beta);
    }
}

void sgemm_06_vectorized(SGEMM_ARGS, cudaStream_t stream) {
  dim3 grid(ceil_div(N, BN), ceil_div(M, BM));
  if (vec4_ok(N, K, A, B))
    sgemm_vectorized_kernel<true><<<grid, THREADS, 0, stream>>>(M, N, K, alpha, A, B, beta, C);
  else
    sgemm_vectorized_kernel<false><<<grid, THREADS, 0, stream>>>(M, N, K, alpha, A, B, beta, C);
}
