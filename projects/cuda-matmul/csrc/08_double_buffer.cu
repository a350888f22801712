// Rung 8: multi-stage buffering with cp.async. While the warps multiply tile t out of one shared-memory
// stage, tiles t+1.. are already on their way into the others, copied straight from global to shared
// memory without passing through registers: memory latency hides behind the math. Every copy's address
// and bound is planned once per thread, and the fragments of the next k-step load while the current one
// is multiplied (double_buffer.cuh). The tile shape and the number of stages come from the tuning sweep
// (results/<gpu>/tuning.json).
#include "double_buffer.cuh"

// The fastest of the sweep on an H100 at 4096^3: 128 x 256 block tiles, 8 warps of 32 x 128, each thread
// 8 x 16 outputs (one 256-thread block per SM), three 16-deep stages (73 KiB of shared memory).
using Tuned = WarpTile<128, 256, 16, 32, 128, 4, 4, 4>;
constexpr int TUNED_STAGES = 3;

void sgemm_08_double_buffer(SGEMM_ARGS, cudaStream_t stream) {
  launch_double_buffer<Tuned, TUNED_STAGES>(M, N, K, alpha, A, B, beta, C, stream);
}
