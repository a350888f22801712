// CUDA kernels: GELU forward and backward, plain and with a fused bias, fp32 / fp16 / bf16.
// Memory-bound only if the math is cheap enough: 16-byte vector loads and stores, one vector per thread over
// as many blocks as it takes, fp32 math (the erfc form with hardware approximations, gelu_math.h), one pass.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <type_traits>

#include "gelu_ops.h"

namespace custom_gelu {
namespace {
// 128 threads per block: an A/B on the H100 at 2^26 elements (throwaway probe) gave 128 the edge over 256
// in every case (fp32 forward +2%, bf16 forward +1%) and 512 the worst
constexpr int THREADS = 128;

template <typename T>
struct alignas(16) Pack {
  static constexpr int N = 16 / sizeof(T);
  T v[N];
};

int num_sms() {
  static int sms = [] {
    int dev = 0, n = 0;
    C10_CUDA_CHECK(cudaGetDevice(&dev));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    return n;
  }();
  return sms;
}

int64_t grid_for(int64_t work_items) {
  // one 16-byte vector per thread and as many blocks as that takes (the grid-stride loop only matters past
  // 2^31 - 1 blocks): short-lived blocks let the scheduler keep every SM full to the end
  return std::max<int64_t>(1, std::min<int64_t>((work_items + THREADS - 1) / THREADS, (int64_t(1) << 31) - 1));
}

bool aligned16(const void *p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename T>
using math_t = std::conditional_t<std::is_same_v<T, double>, double, float>;  // fp32 registers unless fp64

// fp32, fp16 and bf16 use the erfc form of the exact GELU (gelu_math.h: fewer instructions, and accurate in
// the negative tail where 0.5 (1 + erf) cancels); 16-bit types also take the tanh form as x sigmoid(2u).
// fp64 keeps erf and tanh.
template <Approx A, typename T>
__device__ __forceinline__ math_t<T> value(math_t<T> v) {
  if constexpr (sizeof(T) <= 4 && A == Approx::None) return gelu_value_erfc_fast(v);
  else if constexpr (sizeof(T) == 2) return gelu_value_tanh_fast(v);
  else return gelu_value<A, math_t<T>>(v);
}

template <Approx A, typename T>
__device__ __forceinline__ math_t<T> grad(math_t<T> v) {
  if constexpr (A == Approx::None && sizeof(T) <= 4) return gelu_grad_erfc_fast(v);
  else return gelu_grad<A, math_t<T>>(v);
}

// excerpt: forward-kernel
// One 16-byte vector per thread. (Four vectors in flight per thread, loaded before any math, helped the
// 16-bit erf forward while it used erff; with the cheaper math above one is best in every case, measured.)
template <Approx A, typename T, bool BIAS, bool VEC>
__global__ void __launch_bounds__(THREADS) fwd_kernel(const T *__restrict__ x, const T *__restrict__ b,
                                                      T *__restrict__ y, int64_t n, int64_t cols) {
  using M = math_t<T>;
  constexpr int V = VEC ? Pack<T>::N : 1;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x * V;
  for (int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * V; i < n; i += stride) {
    if (VEC && i + V <= n) {
      const Pack<T> px = *reinterpret_cast<const Pack<T> *>(x + i);
      Pack<T> pb, py;
      if constexpr (BIAS) pb = *reinterpret_cast<const Pack<T> *>(b + i % cols);  // cols % V == 0: one row
#pragma unroll
      for (int e = 0; e < V; ++e) py.v[e] = T(value<A, T>(BIAS ? M(px.v[e]) + M(pb.v[e]) : M(px.v[e])));
      *reinterpret_cast<Pack<T> *>(y + i) = py;
    } else {
      for (int64_t j = i; j < n && j < i + V; ++j) y[j] = T(value<A, T>(BIAS ? M(x[j]) + M(b[j % cols]) : M(x[j])));
    }
  }
}
// end-excerpt

template <Approx A, typename T, bool VEC>
__global__ void __launch_bounds__(THREADS) bwd_kernel(const T *__restrict__ g, const T *__restrict__ x,
                                                      T *__restrict__ dx, int64_t n) {
  using M = math_t<T>;
  constexpr int V = VEC ? Pack<T>::N : 1;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x * V;
  for (int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * V; i < n; i += stride) {
    if (VEC && i + V <= n) {
      const Pack<T> pg = *reinterpret_cast<const Pack<T> *>(g + i);
      const Pack<T> px = *reinterpret_cast<const Pack<T> *>(x + i);
      Pack<T> pd;
#pragma unroll
      for (int e = 0; e < V; ++e) pd.v[e] = T(M(pg.v[e]) * grad<A, T>(M(px.v[e])));
      *reinterpret_cast<Pack<T> *>(dx + i) = pd;
    } else {
      for (int64_t j = i; j < n && j < i + V; ++j) dx[j] = T(M(g[j]) * grad<A, T>(M(x[j])));
    }
  }
}

// excerpt: bias-backward
// dx = dy * gelu'(x + b) and the column sums of dx in one pass: each thread owns V adjacent columns and
// walks a chunk of rows, keeping V running sums in registers; one partial sum per (row chunk, column)
// goes to a small fp32 workspace that a second kernel reduces. No second read of dx.
template <Approx A, typename T, bool VEC>
__global__ void __launch_bounds__(THREADS) bias_bwd_kernel(const T *__restrict__ g, const T *__restrict__ x,
                                                           const T *__restrict__ b, T *__restrict__ dx,
                                                           math_t<T> *__restrict__ partial, int64_t rows, int64_t cols,
                                                           int64_t rows_per_block) {
  using M = math_t<T>;
  constexpr int V = VEC ? Pack<T>::N : 1;
  const int64_t c0 = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * V;
  if (c0 >= cols) return;
  M bias[V], acc[V];
#pragma unroll
  for (int e = 0; e < V; ++e) bias[e] = M(b[c0 + e]), acc[e] = M(0);
  const int64_t r_end = std::min<int64_t>(rows, (blockIdx.y + 1) * rows_per_block);
  for (int64_t r = blockIdx.y * rows_per_block; r < r_end; ++r) {
    const int64_t i = r * cols + c0;
    Pack<T> pg, px, pd;
    if constexpr (VEC) {
      pg = *reinterpret_cast<const Pack<T> *>(g + i);
      px = *reinterpret_cast<const Pack<T> *>(x + i);
    } else {
      pg.v[0] = g[i], px.v[0] = x[i];
    }
#pragma unroll
    for (int e = 0; e < V; ++e) {
      pd.v[e] = T(M(pg.v[e]) * grad<A, T>(M(px.v[e]) + bias[e]));
      acc[e] += M(pd.v[e]);  // sum what is stored, so db is exactly the column sum of dx
    }
    if constexpr (VEC)
      *reinterpret_cast<Pack<T> *>(dx + i) = pd;
    else
      dx[i] = pd.v[0];
  }
#pragma unroll
  for (int e = 0; e < V; ++e) partial[blockIdx.y * cols + c0 + e] = acc[e];
}
// end-excerpt

template <typename T>
__global__ void column_sum_kernel(const math_t<T> *__restrict__ partial, T *__restrict__ db, int64_t parts,
                                  int64_t cols) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  math_t<T> s = 0;
  for (int64_t p = 0; p < parts; ++p) s += partial[p * cols + c];
  db[c] = T(s);
}

void check_cuda(const at::Tensor &t, const char *name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
}

template <bool BIAS>
at::Tensor forward(const at::Tensor &x_in, const at::Tensor *b, int64_t approx) {
  check_cuda(x_in, "x");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = x_in.contiguous();
  auto y = at::empty_like(x);
  const int64_t n = x.numel(), cols = BIAS ? b->numel() : 1;
  if (n == 0) return y;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gelu_fwd_cuda", [&] {
    using T = scalar_t;
    const T *bp = BIAS ? b->data_ptr<T>() : nullptr;
    const bool vec = aligned16(x.data_ptr()) && aligned16(y.data_ptr()) &&
                     (!BIAS || (cols % Pack<T>::N == 0 && aligned16(bp)));
    const int64_t items = vec ? (n + Pack<T>::N - 1) / Pack<T>::N : n;
    auto launch = [&](auto kernel) {
      kernel<<<grid_for(items), THREADS, 0, stream>>>(x.data_ptr<T>(), bp, y.data_ptr<T>(), n, cols);
    };
    if (approx) {
      vec ? launch(fwd_kernel<Approx::Tanh, T, BIAS, true>) : launch(fwd_kernel<Approx::Tanh, T, BIAS, false>);
    } else {
      vec ? launch(fwd_kernel<Approx::None, T, BIAS, true>) : launch(fwd_kernel<Approx::None, T, BIAS, false>);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}
}  // namespace

at::Tensor gelu_fwd_cuda(const at::Tensor &x, int64_t approx) { return forward<false>(x, nullptr, approx); }

at::Tensor bias_gelu_fwd_cuda(const at::Tensor &x, const at::Tensor &b, int64_t approx) {
  check_cuda(b, "bias");
  const auto bc = b.contiguous();
  return forward<true>(x, &bc, approx);
}

at::Tensor gelu_bwd_cuda(const at::Tensor &grad_in, const at::Tensor &x_in, int64_t approx) {
  check_cuda(x_in, "x");
  check_cuda(grad_in, "grad");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = x_in.contiguous(), g = grad_in.contiguous();
  auto dx = at::empty_like(x);
  const int64_t n = x.numel();
  if (n == 0) return dx;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gelu_bwd_cuda", [&] {
    using T = scalar_t;
    const bool vec = aligned16(x.data_ptr()) && aligned16(g.data_ptr()) && aligned16(dx.data_ptr());
    const int64_t items = vec ? (n + Pack<T>::N - 1) / Pack<T>::N : n;
    auto launch = [&](auto kernel) {
      kernel<<<grid_for(items), THREADS, 0, stream>>>(g.data_ptr<T>(), x.data_ptr<T>(), dx.data_ptr<T>(), n);
    };
    if (approx) {
      vec ? launch(bwd_kernel<Approx::Tanh, T, true>) : launch(bwd_kernel<Approx::Tanh, T, false>);
    } else {
      vec ? launch(bwd_kernel<Approx::None, T, true>) : launch(bwd_kernel<Approx::None, T, false>);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dx;
}

std::tuple<at::Tensor, at::Tensor> bias_gelu_bwd_cuda(const at::Tensor &grad_in, const at::Tensor &x_in,
                                                      const at::Tensor &b_in, int64_t approx) {
  check_cuda(x_in, "x");
  check_cuda(grad_in, "grad");
  check_cuda(b_in, "bias");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = x_in.contiguous(), g = grad_in.contiguous(), b = b_in.contiguous();
  auto dx = at::empty_like(x);
  auto db = at::empty_like(b);
  const int64_t cols = b.numel(), rows = cols ? x.numel() / cols : 0;
  if (rows == 0 || cols == 0) return {dx, db.zero_()};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bias_gelu_bwd_cuda", [&] {
    using T = scalar_t;
    const bool vec = cols % Pack<T>::N == 0 && aligned16(x.data_ptr()) && aligned16(g.data_ptr()) &&
                     aligned16(dx.data_ptr()) && aligned16(b.data_ptr());
    const int64_t col_threads = vec ? cols / Pack<T>::N : cols;
    const int64_t gx = (col_threads + THREADS - 1) / THREADS;
    int64_t gy = std::min<int64_t>(rows, std::max<int64_t>(1, int64_t(num_sms()) * 8 / gx));
    const int64_t rows_per_block = (rows + gy - 1) / gy;
    gy = (rows + rows_per_block - 1) / rows_per_block;
    auto partial = at::empty({gy, cols}, x.options().dtype(std::is_same_v<T, double> ? at::kDouble : at::kFloat));
    auto launch = [&](auto kernel) {
      kernel<<<dim3(gx, gy), THREADS, 0, stream>>>(g.data_ptr<T>(), x.data_ptr<T>(), b.data_ptr<T>(),
                                                   dx.data_ptr<T>(), partial.data_ptr<math_t<T>>(), rows, cols,
                                                   rows_per_block);
    };
    if (approx) {
      vec ? launch(bias_bwd_kernel<Approx::Tanh, T, true>) : launch(bias_bwd_kernel<Approx::Tanh, T, false>);
    } else {
      vec ? launch(bias_bwd_kernel<Approx::None, T, true>) : launch(bias_bwd_kernel<Approx::None, T, false>);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    column_sum_kernel<T><<<(cols + THREADS - 1) / THREADS, THREADS, 0, stream>>>(partial.data_ptr<math_t<T>>(),
                                                                                 db.data_ptr<T>(), gy, cols);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {dx, db};
}
}  // namespace custom_gelu
