// LogSoftmax on CUDA: log_softmax_forward, log_softmax_backward over any dim.
//
// What it computes (x viewed as [outer, D, inner] around `dim`, D = size(dim))
//   forward:  y = (x - m) - log(sum_d exp(x - m)),  m = max_d x
//   backward: dx = dy - exp(y) * sum_d dy           (from the saved output y)
//   All math in acc_t<T> (float for float16/bfloat16, double for float64), each
//   output rounded once. NaN in a slice makes the whole slice NaN (as native).
// Shapes: any shape; dim may be negative; a 0-d tensor is one slice of D = 1;
//   empty tensors return empty outputs. Inputs are made contiguous; outputs are
//   dense tensors of the input's shape and dtype.
// Work split
//   inner == 1 (dim is the last non-trivial dim), rows = outer, C = D:
//   * C <= 1024: warp kernel. A row is held in registers (ELEMS values per lane,
//     lane l holds columns j * WIDTH + l, so each load instruction is coalesced);
//     max and sum are butterfly shuffles inside the row's lane group. C <= 16
//     uses WIDTH = 16 (two rows per warp: the MNIST case C = 10), otherwise a warp
//     per row with ELEMS = 1, 2, 4, 8, 16 or 32. 128 threads per block,
//     grid-stride over groups of rows. One read of x (dy, y) and one write.
//   * C > 1024: block kernel, a block (128..512 threads) per row, grid-stride
//     over rows. 16-byte vector loads/stores when the row starts are 16-byte
//     aligned, 4 vectors in flight per thread. Pass 1 reads x once (online
//     per-thread max / sum of exp) and caches the row in shared memory when it
//     fits in 44 KB (each thread re-reads only the slots it wrote, so no barrier
//     is needed for the cache); a fixed-order block max and block sum of the
//     rescaled sums give the lse; pass 2 writes y from the cache (longer rows
//     re-read x, from L2). Backward: pass 1 sums dy (cached), pass 2 writes dx.
//   inner > 1: strided kernel, one thread per (outer, inner) column, consecutive
//     threads on consecutive inner indices (coalesced); pass 1 is an online
//     max / sum-of-exp over D, pass 2 writes y. Backward: pass 1 sums dy,
//     pass 2 writes dx.
#include <type_traits>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "fastnn/checks.h"
#include "fastnn/cuda_utils.cuh"
#include "fastnn/dispatch.h"

namespace fastnn {
namespace {

using namespace fastnn::cuda;

constexpr int kWarpKernelThreads = 128;
constexpr int kStridedThreads = 256;
constexpr int kBlockUnroll = 4;
constexpr int kMaxBlockThreads = 512;  // block kernels: 2 blocks/SM, <= 64 registers
constexpr int64_t kMaxCacheBytes = 44 * 1024;

// ---------------------------------------------------------------------------
// Warp kernels (C <= ELEMS * WIDTH <= 1024, inner == 1).
template <typename T, int ELEMS, int WIDTH>
__global__ void __launch_bounds__(kWarpKernelThreads)
    lsm_fwd_warp_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t rows, int C) {
  using A = acc_t<T>;
  constexpr int kRowsPerWarp = kWarpSize / WIDTH;
  const int lane = threadIdx.x % kWarpSize;
  const int sub = lane / WIDTH;
  const int l = lane % WIDTH;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarpSize;
  const int64_t nwarps = static_cast<int64_t>(gridDim.x) * blockDim.x / kWarpSize;
  // `base` is the same for the whole warp, so every lane runs every shuffle.
  for (int64_t base = warp * kRowsPerWarp; base < rows; base += nwarps * kRowsPerWarp) {
    const int64_t row = base + sub;
    const bool valid = row < rows;
    const int64_t off = (valid ? row : 0) * C;
    A v[ELEMS], m, s;
    warp_row_max_sumexp<ELEMS, WIDTH>(x + off, valid, C, l, v, m, s);
    const A ls = dlog(s);
    if (valid) {
#pragma unroll
      for (int j = 0; j < ELEMS; ++j) {
        const int c = j * WIDTH + l;
        if (c < C) y[off + c] = from_acc<T>((v[j] - m) - ls);
      }
    }
  }
}

template <typename T, int ELEMS, int WIDTH>
__global__ void __launch_bounds__(kWarpKernelThreads)
    lsm_bwd_warp_kernel(const T* __restrict__ dy, const T* __restrict__ y, T* __restrict__ dx,
                        int64_t rows, int C) {
  using A = acc_t<T>;
  constexpr int kRowsPerWarp = kWarpSize / WIDTH;
  const int lane = threadIdx.x % kWarpSize;
  const int sub = lane / WIDTH;
  const int l = lane % WIDTH;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarpSize;
  const int64_t nwarps = static_cast<int64_t>(gridDim.x) * blockDim.x / kWarpSize;
  for (int64_t base = warp * kRowsPerWarp; base < rows; base += nwarps * kRowsPerWarp) {
    const int64_t row = base + sub;
    const bool valid = row < rows;
    const int64_t off = (valid ? row : 0) * C;
    A g[ELEMS], o[ELEMS];
#pragma unroll
    for (int j = 0; j < ELEMS; ++j) {
      const int c = j * WIDTH + l;
      const bool in = valid && c < C;
      g[j] = in ? to_acc(dy[off + c]) : A(0);
      o[j] = in ? to_acc(y[off + c]) : A(0);
    }
    A s = g[0];
#pragma unroll
    for (int j = 1; j < ELEMS; ++j) s += g[j];
    s = warp_reduce<WIDTH>(s, SumOp());
    if (valid) {
#pragma unroll
      for (int j = 0; j < ELEMS; ++j) {
        const int c = j * WIDTH + l;
        if (c < C) dx[off + c] = from_acc<T>(g[j] - dexp(o[j]) * s);
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Block kernels (inner == 1, long rows). V = 16 / sizeof(T) when every row start
// is 16-byte aligned, else 1 (two instantiations). With `use_cache` the row is
// kept in dynamic shared memory (C elements). Every thread touches the vector
// slots i = threadIdx.x + k * blockDim.x in the same order in every pass, so it
// only re-reads cache slots it wrote itself (no barrier needed for the cache).
//   forward: pass 1 reads x once (online per-thread max / sum of exp, fills the
//   cache), block max + block sum of the rescaled sums, pass 2 writes y from
//   the cache (or re-reads x when the row is too long to cache).
//   backward: pass 1 sums dy (fills the cache), pass 2 reads y and writes dx.
template <typename T, int V>
__global__ void __launch_bounds__(kMaxBlockThreads, 2)
    lsm_fwd_block_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t rows, int64_t C,
                         bool use_cache) {
  using A = acc_t<T>;
  using Vec = AlignedVec<T, V>;
  // vectors in flight per thread (2-byte types: 2, keeps <= 64 registers)
  constexpr int U = sizeof(T) == 2 ? 2 : kBlockUnroll;
  __shared__ A red[kWarpSize];
  extern __shared__ __align__(16) unsigned char lsm_dyn_smem[];
  Vec* cv = reinterpret_cast<Vec*>(lsm_dyn_smem);
  const int64_t nv = C / V;  // host guarantees C % V == 0
  const int64_t step = static_cast<int64_t>(blockDim.x) * U;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const Vec* xv = reinterpret_cast<const Vec*>(x + row * C);
    Vec* yv = reinterpret_cast<Vec*>(y + row * C);
    A m = neg_inf<A>(), s = A(0);
#pragma unroll 1
    for (int64_t i0 = threadIdx.x; i0 < nv; i0 += step) {
      Vec r[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t i = i0 + static_cast<int64_t>(u) * blockDim.x;
        if (i < nv) r[u] = xv[i];
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t i = i0 + static_cast<int64_t>(u) * blockDim.x;
        if (i < nv) {
          if (use_cache) cv[i] = r[u];
#pragma unroll
          for (int k = 0; k < V; ++k) online_lse_update(m, s, to_acc(r[u].val[k]));
        }
      }
    }
    const A M = block_reduce(m, MaxOp(), neg_inf<A>(), red);
    const A ls = dlog(block_reduce(rescale_sum(m, s, M), SumOp(), A(0), red));
#pragma unroll 1
    for (int64_t i0 = threadIdx.x; i0 < nv; i0 += step) {
      Vec r[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t i = i0 + static_cast<int64_t>(u) * blockDim.x;
        if (i < nv) r[u] = use_cache ? cv[i] : xv[i];
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t i = i0 + static_cast<int64_t>(u) * blockDim.x;
        if (i < nv) {
#pragma unroll
          for (int k = 0; k < V; ++k) r[u].val[k] = from_acc<T>((to_acc(r[u].val[k]) - M) - ls);
          yv[i] = r[u];
        }
      }
    }
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kMaxBlockThreads, 2)
    lsm_bwd_block_kernel(const T* __restrict__ dy, const T* __restrict__ y, T* __restrict__ dx,
                         int64_t rows, int64_t C, bool use_cache) {
  using A = acc_t<T>;
  using Vec = AlignedVec<T, V>;
  // x 2 streams (dy, y): 4 (bfloat16: 2) vectors in flight per thread, <= 64 registers
  constexpr int U = std::is_same<T, c10::BFloat16>::value ? 1 : 2;
  __shared__ A red[kWarpSize];
  extern __shared__ __align__(16) unsigned char lsm_dyn_smem[];
  Vec* cv = reinterpret_cast<Vec*>(lsm_dyn_smem);
  const int64_t nv = C / V;
  const int64_t step = static_cast<int64_t>(blockDim.x) * U;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const Vec* gv = reinterpret_cast<const Vec*>(dy + row * C);
    const Vec* ov = reinterpret_cast<const Vec*>(y + row * C);
    Vec* dv = reinterpret_cast<Vec*>(dx + row * C);
    A s = A(0);
#pragma unroll 1
    for (int64_t i0 = threadIdx.x; i0 < nv; i0 += step) {
      Vec r[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t i = i0 + static_cast<int64_t>(u) * blockDim.x;
        if (i < nv) r[u] = gv[i];
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t i = i0 + static_cast<int64_t>(u) * blockDim.x;
        if (i < nv) {
          if (use_cache) cv[i] = r[u];
#pragma unroll
          for (int k = 0; k < V; ++k) s += to_acc(r[u].val[k]);
        }
      }
    }
    const A S = block_reduce(s, SumOp(), A(0), red);
#pragma unroll 1
    for (int64_t i0 = threadIdx.x; i0 < nv; i0 += step) {
      Vec g[U], o[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t i = i0 + static_cast<int64_t>(u) * blockDim.x;
        if (i < nv) {
          g[u] = use_cache ? cv[i] : gv[i];
          o[u] = ov[i];
        }
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t i = i0 + static_cast<int64_t>(u) * blockDim.x;
        if (i < nv) {
#pragma unroll
          for (int k = 0; k < V; ++k)
            g[u].val[k] = from_acc<T>(to_acc(g[u].val[k]) - dexp(to_acc(o[u].val[k])) * S);
          dv[i] = g[u];
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Strided kernels (inner > 1): one thread per (outer, inner) column.
template <typename T>
__global__ void __launch_bounds__(kStridedThreads)
    lsm_fwd_strided_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t outer, int64_t D,
                           int64_t inner) {
  using A = acc_t<T>;
  const int64_t total = outer * inner;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += stride) {
    const int64_t o = idx / inner;
    const int64_t base = o * D * inner + (idx - o * inner);
    A m = neg_inf<A>(), s = A(0);
    for (int64_t d = 0; d < D; ++d) online_lse_update(m, s, to_acc(x[base + d * inner]));
    const A ls = dlog(s);
    for (int64_t d = 0; d < D; ++d) {
      const int64_t e = base + d * inner;
      y[e] = from_acc<T>((to_acc(x[e]) - m) - ls);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kStridedThreads)
    lsm_bwd_strided_kernel(const T* __restrict__ dy, const T* __restrict__ y, T* __restrict__ dx,
                           int64_t outer, int64_t D, int64_t inner) {
  using A = acc_t<T>;
  const int64_t total = outer * inner;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += stride) {
    const int64_t o = idx / inner;
    const int64_t base = o * D * inner + (idx - o * inner);
    A s = A(0);
    for (int64_t d = 0; d < D; ++d) s += to_acc(dy[base + d * inner]);
    for (int64_t d = 0; d < D; ++d) {
      const int64_t e = base + d * inner;
      dx[e] = from_acc<T>(to_acc(dy[e]) - dexp(to_acc(y[e])) * s);
    }
  }
}

// ---------------------------------------------------------------------------
// Host side.
struct Layout {
  int64_t outer, D, inner;
};

Layout layout_of(const at::Tensor& t, int64_t dim) {
  Layout L{1, 1, 1};
  if (t.dim() == 0) return L;
  L.D = t.size(dim);
  for (int64_t i = 0; i < dim; ++i) L.outer *= t.size(i);
  for (int64_t i = dim + 1; i < t.dim(); ++i) L.inner *= t.size(i);
  return L;
}

int capped_grid(int64_t want, int device) {
  const int64_t cap = static_cast<int64_t>(sm_count(device)) * 32;
  return static_cast<int>(std::max<int64_t>(1, std::min(want, cap)));
}

constexpr int64_t kWarpMaxC = 1024;

// Block size and cache decision for the block kernels.
struct BlockPlan {
  int threads;
  bool vec;
  bool cache;
  size_t smem;
};

BlockPlan plan_block(int64_t C, size_t elem, bool aligned) {
  BlockPlan p;
  const int64_t vsz = 16 / static_cast<int64_t>(elem);
  p.vec = aligned && (C % vsz == 0);
  const int64_t nv = p.vec ? C / vsz : C;
  p.threads = 128;
  while (p.threads < kMaxBlockThreads && static_cast<int64_t>(p.threads) * 4 < nv) p.threads *= 2;
  const int64_t bytes = C * static_cast<int64_t>(elem);
  p.cache = bytes <= kMaxCacheBytes;
  p.smem = p.cache ? static_cast<size_t>(bytes) : 0;
  return p;
}

// Launches the member of a kernel family (the forward's or the backward's) that layout
// L takes, with its grid: warp(ELEMS, WIDTH, grid, C) for short contiguous rows (C <=
// 1024, the with_warp_variant choice), block(V, grid, plan) for long ones (V: elements
// per vector access, 1 unless every pointer is 16-byte `aligned` and C whole vectors),
// strided(grid) when dim is not the innermost. ELEMS, WIDTH and V come as
// std::integral_constant.
template <typename scalar_t, typename Warp, typename Block, typename Strided>
void launch_by_layout(const Layout& L, int device, bool aligned, Warp&& warp, Block&& block,
                      Strided&& strided) {
  if (L.inner == 1 && L.D <= kWarpMaxC) {
    const int C = static_cast<int>(L.D);
    with_warp_variant(C, [&](auto e, auto w) {
      constexpr int WIDTH = decltype(w)::value;
      const int64_t rows_per_block = (kWarpKernelThreads / kWarpSize) * (kWarpSize / WIDTH);
      warp(e, w, capped_grid(ceil_div(L.outer, rows_per_block), device), C);
    });
  } else if (L.inner == 1) {
    const BlockPlan p = plan_block(L.D, sizeof(scalar_t), aligned);
    const int grid = capped_grid(L.outer, device);
    if (p.vec) block(std::integral_constant<int, vec_size<scalar_t>()>{}, grid, p);
    else       block(std::integral_constant<int, 1>{}, grid, p);
  } else {
    strided(capped_grid(ceil_div(L.outer * L.inner, kStridedThreads), device));
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

at::Tensor log_softmax_forward_cuda(const at::Tensor& input, int64_t dim) {
  constexpr const char* op = "log_softmax_forward";
  check_floating(op, "input", input);
  const int64_t d = wrap_dim(op, dim, input.dim());
  c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options());
  if (x.numel() == 0) return y;
  const Layout L = layout_of(x, d);
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int device = x.get_device();
  FASTNN_DISPATCH_CUDA(x.scalar_type(), "log_softmax_forward_cuda", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    launch_by_layout<scalar_t>(
        L, device, is_aligned(xp, 16) && is_aligned(yp, 16),
        [&](auto e, auto w, int grid, int C) {
          constexpr int ELEMS = decltype(e)::value, WIDTH = decltype(w)::value;
          lsm_fwd_warp_kernel<scalar_t, ELEMS, WIDTH>
              <<<grid, kWarpKernelThreads, 0, stream>>>(xp, yp, L.outer, C);
        },
        [&](auto v, int grid, const BlockPlan& p) {
          constexpr int V = decltype(v)::value;
          lsm_fwd_block_kernel<scalar_t, V>
              <<<grid, p.threads, p.smem, stream>>>(xp, yp, L.outer, L.D, p.cache);
        },
        [&](int grid) {
          lsm_fwd_strided_kernel<scalar_t>
              <<<grid, kStridedThreads, 0, stream>>>(xp, yp, L.outer, L.D, L.inner);
        });
  });
  return y;
}

at::Tensor log_softmax_backward_cuda(const at::Tensor& grad_output, const at::Tensor& output,
                                     int64_t dim) {
  constexpr const char* op = "log_softmax_backward";
  check_grad_of_output(op, grad_output, output);
  const int64_t d = wrap_dim(op, dim, output.dim());
  c10::cuda::CUDAGuard guard(output.device());
  const at::Tensor dy = grad_output.contiguous();
  const at::Tensor y = output.contiguous();
  at::Tensor dx = at::empty(y.sizes(), y.options());
  if (y.numel() == 0) return dx;
  const Layout L = layout_of(y, d);
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int device = y.get_device();
  FASTNN_DISPATCH_CUDA(y.scalar_type(), "log_softmax_backward_cuda", [&] {
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    scalar_t* dxp = dx.mutable_data_ptr<scalar_t>();
    launch_by_layout<scalar_t>(
        L, device, is_aligned(dyp, 16) && is_aligned(yp, 16) && is_aligned(dxp, 16),
        [&](auto e, auto w, int grid, int C) {
          constexpr int ELEMS = decltype(e)::value, WIDTH = decltype(w)::value;
          lsm_bwd_warp_kernel<scalar_t, ELEMS, WIDTH>
              <<<grid, kWarpKernelThreads, 0, stream>>>(dyp, yp, dxp, L.outer, C);
        },
        [&](auto v, int grid, const BlockPlan& p) {
          constexpr int V = decltype(v)::value;
          lsm_bwd_block_kernel<scalar_t, V>
              <<<grid, p.threads, p.smem, stream>>>(dyp, yp, dxp, L.outer, L.D, p.cache);
        },
        [&](int grid) {
          lsm_bwd_strided_kernel<scalar_t>
              <<<grid, kStridedThreads, 0, stream>>>(dyp, yp, dxp, L.outer, L.D, L.inner);
        });
  });
  return dx;
}

TORCH_LIBRARY_IMPL(fastnn, CUDA, m) {
  m.impl("log_softmax_forward", &log_softmax_forward_cuda);
  m.impl("log_softmax_backward", &log_softmax_backward_cuda);
}

}  // namespace fastnn
