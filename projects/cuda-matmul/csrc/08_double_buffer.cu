// Rung 8: multi-stage buffering with cp.async. While the warps multiply tile t out of one shared-memory
// stage, tiles t+1.. are already on their way into the others, copied straight from global to shared
// memory without passing through registers: memory latency hides behind the math. A is still
// transposed on the way in, one 4-byte cp.async per element; B moves in 16-byte chunks. The tile shape
// and the number of stages come from the tuning sweep (results/<gpu>/tuning.json).
#include "double_buffer.cuh"

// The fastest of the sweep on an H100 at 4096^3: 8 warps of 64 x 32, three stages (48 KiB of shared memory).
using Tuned = WarpTile<128, 128, 16, 64, 32, 2, 8, 4>;
constexpr int TUNED_STAGES = 3;

void sgemm_08_double_buffer(SGEMM_ARGS, cudaStream_t stream) {
  launch_double_buffer<Tuned, TUNED_STAGES>(M, N, K, alpha, A, B, beta, C, stream);
}
