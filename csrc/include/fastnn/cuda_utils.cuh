// Device helpers shared by fastnn's CUDA kernels (csrc/cuda/*.cu).
//
//   * type-generic device math (dexp, dlog, dmax, dmin) that keeps double as
//     double and float as float; half types are converted to acc_t<T> (float)
//     with to_acc() before any math and rounded once with from_acc().
//   * warp reductions over groups of WIDTH lanes (butterfly with
//     __shfl_xor_sync and the full mask: every lane of the warp must call them;
//     every lane gets the bitwise same result) and a fixed-order block
//     reduction (deterministic for a given blockDim).
//   * short rows in registers: a row's max and sum of exp over a lane group
//     (warp_row_max_sumexp) and the choice of group shape (with_warp_variant).
//   * an online (running max, running sum of exp) update for log-sum-exp.
//   * AlignedVec<T, N>: N elements loaded/stored with one 16-byte access.
//   * the deterministic two-level loss reduction used by nll_loss and
//     cross_entropy: each block writes (loss_sum, weight_sum) partials for a
//     fixed set of elements, loss_finalize_kernel combines them in fixed order.
//   * host helpers: multiprocessor count (cached), alignment test, ceil_div.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <limits>
#include <type_traits>

#include <ATen/core/Reduction.h>
#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "fastnn/dispatch.h"
#include "fastnn/loss_shapes.h"

namespace fastnn {
namespace cuda {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;

// ---------------------------------------------------------------------------
// Math that keeps the precision of its argument.
__device__ __forceinline__ float dexp(float x) { return ::expf(x); }
__device__ __forceinline__ double dexp(double x) { return ::exp(x); }
__device__ __forceinline__ float dlog(float x) { return ::logf(x); }
__device__ __forceinline__ double dlog(double x) { return ::log(x); }
__device__ __forceinline__ float dmax(float a, float b) { return ::fmaxf(a, b); }
__device__ __forceinline__ double dmax(double a, double b) { return ::fmax(a, b); }
__device__ __forceinline__ float dmin(float a, float b) { return ::fminf(a, b); }
__device__ __forceinline__ double dmin(double a, double b) { return ::fmin(a, b); }

template <typename T>
__device__ __forceinline__ acc_t<T> to_acc(T v) {
  return static_cast<acc_t<T>>(v);
}
template <typename T>
__device__ __forceinline__ T from_acc(acc_t<T> v) {
  return static_cast<T>(v);
}

template <typename A>
__device__ __forceinline__ A neg_inf() {
  return -std::numeric_limits<A>::infinity();
}

// ---------------------------------------------------------------------------
// Vectors for 16-byte loads and stores.
template <typename T, int N>
struct alignas(sizeof(T) * N) AlignedVec {
  T val[N];
};

template <typename T>
constexpr int vec_size() {
  return 16 / static_cast<int>(sizeof(T));  // 4 floats, 2 doubles, 8 halves
}

// ---------------------------------------------------------------------------
// Reductions.
struct SumOp {
  template <typename A>
  __device__ __forceinline__ A operator()(A a, A b) const { return a + b; }
};
struct MaxOp {
  template <typename A>
  __device__ __forceinline__ A operator()(A a, A b) const { return dmax(a, b); }
};

// Butterfly reduction over aligned groups of WIDTH lanes (WIDTH a power of two
// <= 32). All 32 lanes of the warp must call it (full mask). a+b == b+a and
// max is symmetric, so every lane of a group ends with the same bits.
template <int WIDTH, typename A, typename Op>
__device__ __forceinline__ A warp_reduce(A v, Op op) {
#pragma unroll
  for (int o = WIDTH / 2; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(kFullMask, v, o, WIDTH));
  return v;
}

// Fixed-order reduction over the whole block; every thread of the block must
// call it (blockDim.x a multiple of 32, at most 1024). `smem` holds >= 32
// values of A. Returns the result in every thread. It starts with a barrier,
// so back-to-back calls with the same `smem` are safe.
template <typename A, typename Op>
__device__ __forceinline__ A block_reduce(A v, Op op, A identity, A* smem) {
  const int lane = threadIdx.x & (kWarpSize - 1);
  const int wid = threadIdx.x / kWarpSize;
  const int nwarps = blockDim.x / kWarpSize;
  v = warp_reduce<kWarpSize>(v, op);
  __syncthreads();  // earlier readers of smem are done
  if (lane == 0) smem[wid] = v;
  __syncthreads();
  if (wid == 0) {
    A x = lane < nwarps ? smem[lane] : identity;
    x = warp_reduce<kWarpSize>(x, op);  // all reads of smem happen before this
    if (lane == 0) smem[0] = x;
  }
  __syncthreads();
  return smem[0];
}

// ---------------------------------------------------------------------------
// Short rows held in registers: one row of C <= ELEMS * WIDTH values per group of
// WIDTH lanes, ELEMS values per lane (lane l of the group holds columns l,
// l + WIDTH, ...; padding is -inf). Used by the warp kernels of log_softmax and
// cross_entropy (the MNIST case, C = 10, runs two rows per warp with WIDTH = 16).
//
// Loads the row at xr (ignored when !valid: the lanes still take part in the
// shuffles) into v and returns, in every lane of the group, its max m and
// s = sum(exp(v - m)). All 32 lanes of the warp must call it.
template <int ELEMS, int WIDTH, typename T, typename A>
__device__ __forceinline__ void warp_row_max_sumexp(const T* __restrict__ xr, bool valid, int C,
                                                    int l, A (&v)[ELEMS], A& m, A& s) {
#pragma unroll
  for (int j = 0; j < ELEMS; ++j) {
    const int c = j * WIDTH + l;
    v[j] = (valid && c < C) ? to_acc(xr[c]) : neg_inf<A>();
  }
  m = v[0];
#pragma unroll
  for (int j = 1; j < ELEMS; ++j) m = dmax(m, v[j]);
  m = warp_reduce<WIDTH>(m, MaxOp());
  s = A(0);
#pragma unroll
  for (int j = 0; j < ELEMS; ++j) {
    if (j * WIDTH + l < C) s += dexp(v[j] - m);
  }
  s = warp_reduce<WIDTH>(s, SumOp());
}

// The warp-kernel variant (ELEMS, WIDTH) for rows of C <= 1024: calls
// f(integral_constant<ELEMS>, integral_constant<WIDTH>) with the smallest that fits.
template <typename F>
void with_warp_variant(int C, F&& f) {
  if (C <= 16) {
    f(std::integral_constant<int, 1>(), std::integral_constant<int, 16>());
  } else if (C <= 32) {
    f(std::integral_constant<int, 1>(), std::integral_constant<int, 32>());
  } else if (C <= 64) {
    f(std::integral_constant<int, 2>(), std::integral_constant<int, 32>());
  } else if (C <= 128) {
    f(std::integral_constant<int, 4>(), std::integral_constant<int, 32>());
  } else if (C <= 256) {
    f(std::integral_constant<int, 8>(), std::integral_constant<int, 32>());
  } else if (C <= 512) {
    f(std::integral_constant<int, 16>(), std::integral_constant<int, 32>());
  } else {
    f(std::integral_constant<int, 32>(), std::integral_constant<int, 32>());
  }
}

// ---------------------------------------------------------------------------
// Online log-sum-exp: after a sequence of updates, sum(exp(x_i - m)) == s with
// m the running max. NaN inputs make s NaN; -inf inputs add nothing (so an
// all -inf sequence gives m = -inf, s = 0, lse = -inf); a +inf input makes s NaN, as
// exp(x - max) does in the two-pass form (and natively): the new max's own term is
// exp(x - x), 1 for finite x and NaN for +inf.
template <typename A>
__device__ __forceinline__ void online_lse_update(A& m, A& s, A x) {
  if (x > m) {
    s = s * dexp(m - x) + dexp(x - x);
    m = x;
  } else if (!(x == neg_inf<A>())) {
    s += dexp(x - m);
  }
}

// Rescales a thread's (m, s) to the common max M >= m. A thread that saw only -inf and
// NaN values has m = -inf: its s is 0 (all -inf) or NaN, and s * exp(-inf) keeps both,
// so a NaN that only this thread saw still makes the row NaN.
template <typename A>
__device__ __forceinline__ A rescale_sum(A m, A s, A M) {
  return m == M ? s : s * dexp(m - M);
}

// ---------------------------------------------------------------------------
// Deterministic loss reduction.
//
// Writes the final scalars from the total loss / weight sums:
// loss = ls / ws (mean) or ls (sum); total_weight = ws, kept in acc_t<T> (float32 for
// the half types, see loss_shapes.h). `loss` is nullptr for reduction = none (the
// per-element loss was already written).
template <typename T>
__device__ __forceinline__ void write_loss_result(acc_t<T> ls, acc_t<T> ws, T* loss,
                                                  acc_t<T>* total_weight, int reduction) {
  if (loss != nullptr) {
    loss[0] = from_acc<T>(reduction == at::Reduction::Mean ? mean_of(ls, ws) : ls);
  }
  total_weight[0] = ws;
}

// Called by every thread of a block at the end of a loss kernel with the
// thread's partial sums. With one block the final result is written directly;
// otherwise partials[2 * blockIdx.x + {0, 1}] = block sums.
template <typename T>
__device__ __forceinline__ void block_loss_epilogue(acc_t<T> ls, acc_t<T> ws, acc_t<T>* smem,
                                                    acc_t<T>* partials, T* loss,
                                                    acc_t<T>* total_weight, int reduction) {
  using A = acc_t<T>;
  ls = block_reduce(ls, SumOp(), A(0), smem);
  ws = block_reduce(ws, SumOp(), A(0), smem);
  if (threadIdx.x == 0) {
    if (gridDim.x == 1) {
      write_loss_result<T>(ls, ws, loss, total_weight, reduction);
    } else {
      partials[2 * static_cast<int64_t>(blockIdx.x)] = ls;
      partials[2 * static_cast<int64_t>(blockIdx.x) + 1] = ws;
    }
  }
}

// One block (kFinalizeThreads threads) combines `nparts` partial pairs in a
// fixed order and writes the final loss / total_weight.
constexpr int kFinalizeThreads = 512;

template <typename T>
__global__ void __launch_bounds__(kFinalizeThreads)
    loss_finalize_kernel(const acc_t<T>* __restrict__ partials, int64_t nparts, T* loss,
                         acc_t<T>* total_weight, int reduction) {
  using A = acc_t<T>;
  __shared__ A smem[kWarpSize];
  A ls = A(0), ws = A(0);
  for (int64_t i = threadIdx.x; i < nparts; i += blockDim.x) {
    ls += partials[2 * i];
    ws += partials[2 * i + 1];
  }
  ls = block_reduce(ls, SumOp(), A(0), smem);
  ws = block_reduce(ws, SumOp(), A(0), smem);
  if (threadIdx.x == 0) write_loss_result<T>(ls, ws, loss, total_weight, reduction);
}

// ---------------------------------------------------------------------------
// Host helpers.
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline bool is_aligned(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// Multiprocessor count of `device` (cached; cudaDeviceGetAttribute does not
// synchronise and is allowed during stream capture).
inline int sm_count(int device) {
  static std::atomic<int> cache[64] = {};
  if (device < 0 || device >= 64) device = 0;
  int v = cache[device].load(std::memory_order_relaxed);
  if (v == 0) {
    if (cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || v <= 0) {
      (void)cudaGetLastError();
      v = 108;
    }
    cache[device].store(v, std::memory_order_relaxed);
  }
  return v;
}

}  // namespace cuda
}  // namespace fastnn
