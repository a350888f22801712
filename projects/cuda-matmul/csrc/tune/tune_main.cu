// Tuning probe for rung 8: one warp-tile shape and pipeline depth, chosen at compile time with -D
// (TBM TBN TBK TWM TWN TWNITER TTM TTN TSTAGES), checked against a simple reference kernel and timed
// at n x n x n. Prints one JSON line. Built and run by cuda_matmul.tune; not part of the extension.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "../double_buffer.cuh"

using W = WarpTile<TBM, TBN, TBK, TWM, TWN, TWNITER, TTM, TTN>;

__global__ void reference_kernel(int n, const float *A, const float *B, float *C) {
  const int row = blockIdx.y, col = blockIdx.x * blockDim.x + threadIdx.x;
  if (col < n) {
    float acc = 0.0f;
    for (int k = 0; k < n; ++k) acc += A[row * n + k] * B[k * n + col];
    C[row * n + col] = acc;
  }
}

#define CHECK(x)                                                                         \
  do {                                                                                   \
    cudaError_t e = (x);                                                                 \
    if (e != cudaSuccess) {                                                              \
      printf("{\"error\": \"%s at line %d\"}\n", cudaGetErrorString(e), __LINE__);       \
      return 1;                                                                          \
    }                                                                                    \
  } while (0)

int main(int argc, char **argv) {
  const int n = argc > 1 ? atoi(argv[1]) : 4096;
  const size_t bytes = size_t(n) * n * sizeof(float);
  std::vector<float> h(size_t(n) * n);
  std::mt19937 gen(0);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  float *A, *B, *C, *R, *flush;
  CHECK(cudaMalloc(&A, bytes));
  CHECK(cudaMalloc(&B, bytes));
  CHECK(cudaMalloc(&C, bytes));
  CHECK(cudaMalloc(&R, bytes));
  CHECK(cudaMalloc(&flush, 256 << 20));
  for (auto &x : h) x = dist(gen);
  CHECK(cudaMemcpy(A, h.data(), bytes, cudaMemcpyHostToDevice));
  for (auto &x : h) x = dist(gen);
  CHECK(cudaMemcpy(B, h.data(), bytes, cudaMemcpyHostToDevice));

  launch_double_buffer<W, TSTAGES>(n, n, n, 1.0f, A, B, 0.0f, C, 0);
  CHECK(cudaGetLastError());
  reference_kernel<<<dim3((n + 255) / 256, n), 256>>>(n, A, B, R);
  CHECK(cudaDeviceSynchronize());
  std::vector<float> c(size_t(n) * n), r(size_t(n) * n);
  CHECK(cudaMemcpy(c.data(), C, bytes, cudaMemcpyDeviceToHost));
  CHECK(cudaMemcpy(r.data(), R, bytes, cudaMemcpyDeviceToHost));
  double num = 0, den = 0;
  for (size_t i = 0; i < c.size(); ++i) num += (c[i] - r[i]) * double(c[i] - r[i]), den += double(r[i]) * r[i];

  cudaEvent_t start, stop;
  CHECK(cudaEventCreate(&start));
  CHECK(cudaEventCreate(&stop));
  std::vector<float> ms;
  for (int rep = 0; rep < 23; ++rep) {
    CHECK(cudaMemsetAsync(flush, rep, 256 << 20));  // evict L2 between calls
    CHECK(cudaEventRecord(start));
    launch_double_buffer<W, TSTAGES>(n, n, n, 1.0f, A, B, 0.0f, C, 0);
    CHECK(cudaEventRecord(stop));
    CHECK(cudaEventSynchronize(stop));
    float t;
    CHECK(cudaEventElapsedTime(&t, start, stop));
    if (rep >= 3) ms.push_back(t);  // three warm-up calls
  }
  std::sort(ms.begin(), ms.end());
  const double median = ms[ms.size() / 2];
  printf("{\"tflops\": %.3f, \"median_ms\": %.4f, \"rel_err\": %.3g, \"threads\": %d, \"smem_bytes\": %d}\n",
         2.0 * n * n * double(n) / (median * 1e-3) / 1e12, median, std::sqrt(num / den), W::THREADS,
         int(sizeof(Stages<W, TSTAGES>)));
  return 0;
}
