// Fused cross-entropy on CUDA (log_softmax over the class dim + NLL, class-index
// targets, optional label smoothing eps): cross_entropy_forward, cross_entropy_backward.
//
// What it computes (LossShape [N, C, S], M = N * S rows (n, s); element
// (n, c, s) at n*C*S + c*S + s; w[c] = weight[c] or 1):
//   m_i = max_c x[n, c, s],  lg_i = log(sum_c exp(x[n, c, s] - m_i))
//   l_i    = -w[t] * ((x[n, t, s] - m_i) - log(sum ...)),  t = target[i];
//            l_i = w_i = 0 when t == ignore_index; with label smoothing eps > 0
//            l_i = (1 - eps) * that - eps / C * sum_c w[c] * ((x[n, c, s] - m_i) - lg_i)
//   loss   = l (none, target's shape) | sum_i l_i (sum) | sum_i l_i / sum_i w_i (mean; NaN if 0)
//   total_weight = sum_i w_i (0-dim, acc_t<T> like lse, every reduction)
//   lse (the log-sum-exp, kept for the backward) is returned as the pairs
//   (m_i, lg_i): the target's shape plus a last dim of 2 (see lse_shape in
//   loss_shapes.h), in acc_t<T>: float32 for float16 / bfloat16 / float32 inputs,
//   float64 for float64. Keeping m and lg apart lets the backward round its softmax as
//   native log_softmax does; m + lg in one number would cost half an ulp of |m|.
//   Log-probabilities are never written. All math in acc_t<T>, outputs rounded once.
//   A target outside [0, C) (other than ignore_index) fails a device-side assert.
//   backward: dx[n, c, s] = g_i * w[t] * (exp((x[n, c, s] - m_i) - lg_i) - [c == t]),
//     0 for ignored rows; g_i = grad_output[i] (none), grad_output (sum) or
//     grad_output / total_weight (mean, read from device memory). With eps > 0, for
//     hot = g_i (1 - eps) w[t], uni = g_i eps / C, Wsum = sum_c w[c]:
//     dx[n, c, s] = (hot + uni * Wsum) * softmax - hot * [c == t] - uni * w[c].
// Work split
//   forward, deterministic (no atomics; the grid depends only on M and C):
//   * S == 1, C <= 1024: warp kernel, row in registers (lane l holds classes
//     j * WIDTH + l), WIDTH = 16 for C <= 16 (two rows per warp), else a warp per
//     row; butterfly max and sum; the subgroup's lane 0 gathers x[t] (issued
//     together with the row loads) and accumulates the row loss. Small batches
//     (M * WIDTH <= 1024 for C <= 64) run as a single block: one launch for MNIST.
//   * S == 1, C > 1024: block per row (grid <= 8192, rows strided by the grid),
//     16-byte vector loads when aligned, one online max/sum-of-exp pass per thread
//     (x read once), then a block max and a block sum of the rescaled sums.
//   * S > 1: one thread per row (n, s), online max/sum over the C strided classes
//     (coalesced along s).
//   Each block reduces its threads' (loss, weight) sums in fixed order; one block
//   writes the result directly, more write partials that loss_finalize_kernel
//   combines in fixed order.
//   Label smoothing (eps > 0, a kernel-uniform branch) adds the sum over the row of
//   w[c] * log_softmax: from the registers (warp kernel), or a second pass over the row
//   once m and lg are known (block kernel: strided by thread, then a block sum; column
//   kernel: the same thread's C classes again).
//   backward, one kernel: S == 1 and C >= 128: a block per row with 16-byte vector
//   loads/stores when aligned; otherwise a flat elementwise kernel over N*C*S
//   (32-bit index math when the tensor has < 2^31 elements). With eps > 0 and weights,
//   each block first sums the weights (Wsum) in fixed order.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "fastnn/checks.h"
#include "fastnn/cuda_utils.cuh"
#include "fastnn/dispatch.h"
#include "fastnn/loss_shapes.h"

namespace fastnn {
namespace {

using namespace fastnn::cuda;

constexpr int kWarpMaxC = 1024;
constexpr int kBlockUnroll = 4;
constexpr int kMaxBlockThreads = 512;  // block kernels: 2 blocks/SM, <= 64 registers
constexpr int kColThreads = 256;
constexpr int kFlatThreads = 256;
constexpr int64_t kMaxGrid = 8192;  // loss kernels: fixed from M only (determinism)

// Row i's log-sum-exp in its two parts, (m_i, lg_i).
template <typename A>
__device__ __forceinline__ void store_lse(A* __restrict__ lse, int64_t i, A m, A lg) {
  lse[2 * i] = m;
  lse[2 * i + 1] = lg;
}

// The label-smoothed loss of a counted row, from its target term nll = -w[t] * logp[t]
// and wlp = sum_c w[c] * logp[c].
template <typename A>
__device__ __forceinline__ A smoothed_loss(A nll, A wlp, A eps, int64_t C) {
  return (A(1) - eps) * nll - eps / static_cast<A>(C) * wlp;
}

template <int ELEMS>
constexpr int warp_kernel_max_threads() {
  return ELEMS <= 2 ? 1024 : 256;
}

// ---------------------------------------------------------------------------
// Forward, S == 1, C <= ELEMS * WIDTH.
template <typename T, int ELEMS, int WIDTH>
__global__ void __launch_bounds__(warp_kernel_max_threads<ELEMS>(), 1)
    ce_fwd_warp_kernel(const T* __restrict__ x, const int64_t* __restrict__ tgt,
                       const T* __restrict__ w, acc_t<T>* __restrict__ lse_out,
                       T* __restrict__ out_none, acc_t<T>* __restrict__ partials,
                       T* __restrict__ loss, acc_t<T>* __restrict__ total_weight, int64_t M, int C,
                       int64_t ignore_index, int reduction, acc_t<T> eps) {
  using A = acc_t<T>;
  __shared__ A red[kWarpSize];
  const int lane = threadIdx.x % kWarpSize;
  const int sub = lane / WIDTH;
  const int l = lane % WIDTH;
  const int64_t rows_per_iter = static_cast<int64_t>(gridDim.x) * (blockDim.x / WIDTH);
  A ls = A(0), ws = A(0);
  // `base` (first row of the warp) is warp-uniform: every lane runs every shuffle.
  for (int64_t base = (static_cast<int64_t>(blockIdx.x) * blockDim.x + (threadIdx.x - lane)) / WIDTH;
       base < M; base += rows_per_iter) {
    const int64_t row = base + sub;
    const bool valid = row < M;
    const int64_t off = (valid ? row : 0) * C;
    const int64_t t = valid ? tgt[row] : ignore_index;
    const bool active = t != ignore_index;
    CUDA_KERNEL_ASSERT(!active || (t >= 0 && t < C));
    const bool use = active && t >= 0 && t < C;
    A xt = A(0), wt = A(0);
    if (use && l == 0) {
      xt = to_acc(x[off + t]);
      wt = w != nullptr ? to_acc(w[t]) : A(1);
    }
    A v[ELEMS], m, s;
    warp_row_max_sumexp<ELEMS, WIDTH>(x + off, valid, C, l, v, m, s);
    const A lg = dlog(s);
    A wlp = A(0);
    if (eps != A(0)) {  // kernel-uniform: every lane takes part in the shuffles
#pragma unroll
      for (int j = 0; j < ELEMS; ++j) {
        const int c = j * WIDTH + l;
        if (valid && c < C) wlp += (w != nullptr ? to_acc(w[c]) : A(1)) * ((v[j] - m) - lg);
      }
      wlp = warp_reduce<WIDTH>(wlp, SumOp());
    }
    if (valid && l == 0) {
      store_lse(lse_out, row, m, lg);
      A li = use ? -wt * ((xt - m) - lg) : A(0);
      if (use && eps != A(0)) li = smoothed_loss(li, wlp, eps, C);
      if (out_none != nullptr) out_none[row] = from_acc<T>(li);
      ls += li;
      ws += wt;
    }
  }
  block_loss_epilogue<T>(ls, ws, red, partials, loss, total_weight, reduction);
}

// ---------------------------------------------------------------------------
// Forward, S == 1, long rows: a block per row.
template <typename T, int V>
__device__ __forceinline__ void ce_row_stats(const T* __restrict__ xr, int64_t C, acc_t<T>& m,
                                             acc_t<T>& s) {
  using Vec = AlignedVec<T, V>;
  const int64_t nv = C / V;  // host guarantees C % V == 0
  const Vec* xv = reinterpret_cast<const Vec*>(xr);
  const int64_t step = static_cast<int64_t>(blockDim.x) * kBlockUnroll;
  #pragma unroll 1
  for (int64_t i0 = threadIdx.x; i0 < nv; i0 += step) {
    Vec r[kBlockUnroll];
#pragma unroll
    for (int u = 0; u < kBlockUnroll; ++u) {
      const int64_t i = i0 + static_cast<int64_t>(u) * blockDim.x;
      if (i < nv) r[u] = xv[i];
    }
#pragma unroll
    for (int u = 0; u < kBlockUnroll; ++u) {
      const int64_t i = i0 + static_cast<int64_t>(u) * blockDim.x;
      if (i < nv) {
#pragma unroll
        for (int k = 0; k < V; ++k) online_lse_update(m, s, to_acc(r[u].val[k]));
      }
    }
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kMaxBlockThreads, 2)
    ce_fwd_block_kernel(const T* __restrict__ x, const int64_t* __restrict__ tgt,
                        const T* __restrict__ w, acc_t<T>* __restrict__ lse_out,
                        T* __restrict__ out_none, acc_t<T>* __restrict__ partials,
                        T* __restrict__ loss, acc_t<T>* __restrict__ total_weight, int64_t M,
                        int64_t C, int64_t ignore_index, int reduction, acc_t<T> eps) {
  using A = acc_t<T>;
  __shared__ A red[kWarpSize];
  A ls = A(0), ws = A(0);  // used by thread 0 only
  for (int64_t row = blockIdx.x; row < M; row += gridDim.x) {
    const T* xr = x + row * C;
    int64_t t = ignore_index;
    A xt = A(0), wt = A(0);
    bool use = false;
    if (threadIdx.x == 0) {  // issue the gathers before the row pass
      t = tgt[row];
      const bool active = t != ignore_index;
      CUDA_KERNEL_ASSERT(!active || (t >= 0 && t < C));
      use = active && t >= 0 && t < C;
      if (use) {
        xt = to_acc(xr[t]);
        wt = w != nullptr ? to_acc(w[t]) : A(1);
      }
    }
    A m = neg_inf<A>(), s = A(0);
    ce_row_stats<T, V>(xr, C, m, s);
    const A Mx = block_reduce(m, MaxOp(), neg_inf<A>(), red);
    const A Sm = block_reduce(rescale_sum(m, s, Mx), SumOp(), A(0), red);
    const A lg = dlog(Sm);
    A wlp = A(0);
    if (eps != A(0)) {  // second pass over the row (kernel-uniform branch)
      for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
        wlp += (w != nullptr ? to_acc(w[c]) : A(1)) * ((to_acc(xr[c]) - Mx) - lg);
      wlp = block_reduce(wlp, SumOp(), A(0), red);
    }
    if (threadIdx.x == 0) {
      store_lse(lse_out, row, Mx, lg);
      A li = use ? -wt * ((xt - Mx) - lg) : A(0);
      if (use && eps != A(0)) li = smoothed_loss(li, wlp, eps, C);
      if (out_none != nullptr) out_none[row] = from_acc<T>(li);
      ls += li;
      ws += wt;
    }
  }
  block_loss_epilogue<T>(ls, ws, red, partials, loss, total_weight, reduction);
}

// ---------------------------------------------------------------------------
// Forward, S > 1: a thread per row (n, s).
template <typename T>
__global__ void __launch_bounds__(kColThreads)
    ce_fwd_col_kernel(const T* __restrict__ x, const int64_t* __restrict__ tgt,
                      const T* __restrict__ w, acc_t<T>* __restrict__ lse_out,
                      T* __restrict__ out_none, acc_t<T>* __restrict__ partials,
                      T* __restrict__ loss, acc_t<T>* __restrict__ total_weight, int64_t M,
                      int64_t C, int64_t S, int64_t ignore_index, int reduction, acc_t<T> eps) {
  using A = acc_t<T>;
  __shared__ A red[kWarpSize];
  A ls = A(0), ws = A(0);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < M;
       p += stride) {
    const int64_t n = p / S;
    const int64_t base = n * C * S + (p - n * S);
    const int64_t t = tgt[p];
    const bool active = t != ignore_index;
    CUDA_KERNEL_ASSERT(!active || (t >= 0 && t < C));
    const bool use = active && t >= 0 && t < C;
    A m = neg_inf<A>(), s = A(0);
    for (int64_t c = 0; c < C; ++c) online_lse_update(m, s, to_acc(x[base + c * S]));
    const A lg = dlog(s);
    store_lse(lse_out, p, m, lg);
    A li = A(0), wt = A(0);
    if (use) {
      wt = w != nullptr ? to_acc(w[t]) : A(1);
      li = -wt * ((to_acc(x[base + t * S]) - m) - lg);
      if (eps != A(0)) {
        A wlp = A(0);
        for (int64_t c = 0; c < C; ++c)
          wlp += (w != nullptr ? to_acc(w[c]) : A(1)) * ((to_acc(x[base + c * S]) - m) - lg);
        li = smoothed_loss(li, wlp, eps, C);
      }
    }
    if (out_none != nullptr) out_none[p] = from_acc<T>(li);
    ls += li;
    ws += wt;
  }
  block_loss_epilogue<T>(ls, ws, red, partials, loss, total_weight, reduction);
}

// ---------------------------------------------------------------------------
// Backward.
struct BwdArgs {
  const int64_t* tgt;
  const void* grad_out;
  const void* w;
  const void* total_weight;
  int64_t ignore_index;
  int reduction;
  double eps;  // label smoothing
};

// A row's gradient: dx[c] = soft * softmax[c] - hot * [c == t] - uni * w[c]. Without
// label smoothing soft = hot = g_i * w[t] and uni = 0.
template <typename A>
struct RowCoef {
  A soft, hot, uni;
};

// sum_c w[c] (C without weights or smoothing: then unused), in every thread. Every
// thread of the block must call it; fixed order, so deterministic.
template <typename T>
__device__ __forceinline__ acc_t<T> block_weight_sum(const BwdArgs& a, int64_t C,
                                                     acc_t<T>* smem) {
  using A = acc_t<T>;
  const T* w = static_cast<const T*>(a.w);
  if (w == nullptr || a.eps == 0) return static_cast<A>(C);
  A s = A(0);
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) s += to_acc(w[c]);
  return block_reduce(s, SumOp(), A(0), smem);
}

// Row `row`'s coefficients and target class; returns false for an ignored (or, with
// asserts compiled out, out-of-range) row.
template <typename T>
__device__ __forceinline__ bool ce_row_coef(const BwdArgs& a, int64_t row, int64_t C,
                                            acc_t<T> wsum, RowCoef<acc_t<T>>& k, int64_t& t) {
  using A = acc_t<T>;
  t = a.tgt[row];
  if (t == a.ignore_index) return false;
  CUDA_KERNEL_ASSERT(t >= 0 && t < C);
  if (t < 0 || t >= C) return false;
  const T* go = static_cast<const T*>(a.grad_out);
  A g = to_acc(go[a.reduction == at::Reduction::None ? row : 0]);
  if (a.reduction == at::Reduction::Mean) g = g / static_cast<const A*>(a.total_weight)[0];
  const T* w = static_cast<const T*>(a.w);
  const A gw = w != nullptr ? g * to_acc(w[t]) : g;
  if (a.eps == 0) {
    k = {gw, gw, A(0)};
  } else {
    const A eps = static_cast<A>(a.eps);
    const A hot = (A(1) - eps) * gw, uni = g * (eps / static_cast<A>(C));
    k = {hot + uni * wsum, hot, uni};
  }
  return true;
}

// One gradient element from the softmax value p at class c.
template <typename T>
__device__ __forceinline__ acc_t<T> ce_grad(const BwdArgs& a, const RowCoef<acc_t<T>>& k,
                                            acc_t<T> p, int64_t c, int64_t t) {
  using A = acc_t<T>;
  if (a.eps == 0) return k.hot * (c == t ? p - A(1) : p);
  const T* w = static_cast<const T*>(a.w);
  const A g = k.soft * p - (w != nullptr ? k.uni * to_acc(w[c]) : k.uni);
  return c == t ? g - k.hot : g;
}

template <typename T, int V>
__device__ __forceinline__ void ce_bwd_row(const BwdArgs& a, const T* __restrict__ xr,
                                           T* __restrict__ gr, int64_t C, bool use,
                                           const RowCoef<acc_t<T>>& coef, int64_t t,
                                           acc_t<T> m, acc_t<T> lg) {
  using A = acc_t<T>;
  using Vec = AlignedVec<T, V>;
  const int64_t nv = C / V;
  const Vec* xv = reinterpret_cast<const Vec*>(xr);
  Vec* gv = reinterpret_cast<Vec*>(gr);
  const int64_t step = static_cast<int64_t>(blockDim.x) * kBlockUnroll;
  #pragma unroll 1
  for (int64_t i0 = threadIdx.x; i0 < nv; i0 += step) {
    Vec r[kBlockUnroll];
    if (use) {
#pragma unroll
      for (int u = 0; u < kBlockUnroll; ++u) {
        const int64_t i = i0 + static_cast<int64_t>(u) * blockDim.x;
        if (i < nv) r[u] = xv[i];
      }
    }
#pragma unroll
    for (int u = 0; u < kBlockUnroll; ++u) {
      const int64_t i = i0 + static_cast<int64_t>(u) * blockDim.x;
      if (i < nv) {
#pragma unroll
        for (int k = 0; k < V; ++k) {
          A gval = A(0);
          if (use) {
            const A p = dexp((to_acc(r[u].val[k]) - m) - lg);
            gval = ce_grad<T>(a, coef, p, i * V + k, t);
          }
          r[u].val[k] = from_acc<T>(gval);
        }
        gv[i] = r[u];
      }
    }
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kMaxBlockThreads, 2)
    ce_bwd_block_kernel(BwdArgs a, const T* __restrict__ x, const acc_t<T>* __restrict__ lse,
                        T* __restrict__ grad, int64_t M, int64_t C) {
  using A = acc_t<T>;
  __shared__ A red[kWarpSize];
  const A wsum = block_weight_sum<T>(a, C, red);
  for (int64_t row = blockIdx.x; row < M; row += gridDim.x) {
    RowCoef<A> coef{A(0), A(0), A(0)};
    int64_t t = -1;
    const bool use = ce_row_coef<T>(a, row, C, wsum, coef, t);  // same address in every thread
    const A m = use ? lse[2 * row] : A(0);
    const A lg = use ? lse[2 * row + 1] : A(0);
    ce_bwd_row<T, V>(a, x + row * C, grad + row * C, C, use, coef, t, m, lg);
  }
}

template <typename T, typename I>
__device__ __forceinline__ void ce_bwd_flat_body(const BwdArgs& a, const T* __restrict__ x,
                                                 const acc_t<T>* __restrict__ lse,
                                                 T* __restrict__ grad, I numel, I C, I S,
                                                 acc_t<T> wsum) {
  using A = acc_t<T>;
  const I stride = static_cast<I>(gridDim.x) * blockDim.x;
  for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += stride) {
    I row, c;
    if (S == 1) {
      row = i / C;
      c = i - row * C;
    } else {
      const I n = i / (C * S);
      const I r = i - n * C * S;
      c = r / S;
      row = n * S + (r - c * S);
    }
    RowCoef<A> coef{A(0), A(0), A(0)};
    int64_t t = -1;
    A gval = A(0);
    if (ce_row_coef<T>(a, static_cast<int64_t>(row), static_cast<int64_t>(C), wsum, coef, t)) {
      const A p = dexp((to_acc(x[i]) - lse[2 * row]) - lse[2 * row + 1]);
      gval = ce_grad<T>(a, coef, p, static_cast<int64_t>(c), t);
    }
    grad[i] = from_acc<T>(gval);
  }
}

template <typename T>
__global__ void __launch_bounds__(kFlatThreads)
    ce_bwd_flat_kernel(BwdArgs a, const T* __restrict__ x, const acc_t<T>* __restrict__ lse,
                       T* __restrict__ grad, int64_t numel, int64_t C, int64_t S, bool idx32) {
  __shared__ acc_t<T> red[kWarpSize];
  const acc_t<T> wsum = block_weight_sum<T>(a, C, red);
  if (idx32) {
    ce_bwd_flat_body<T, uint32_t>(a, x, lse, grad, static_cast<uint32_t>(numel),
                                  static_cast<uint32_t>(C), static_cast<uint32_t>(S), wsum);
  } else {
    ce_bwd_flat_body<T, int64_t>(a, x, lse, grad, numel, C, S, wsum);
  }
}

// ---------------------------------------------------------------------------
// Host side.
int block_threads_for(int64_t nv, int min_threads) {
  int threads = min_threads;
  while (threads < kMaxBlockThreads && static_cast<int64_t>(threads) * 4 < nv) threads *= 2;
  return threads;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_forward_cuda(
    const at::Tensor& input, const at::Tensor& target, const c10::optional<at::Tensor>& weight,
    int64_t reduction, int64_t ignore_index, double label_smoothing) {
  const LossShape sh = check_loss_inputs("cross_entropy_forward", input, target, weight, reduction);
  check_label_smoothing("cross_entropy_forward", label_smoothing);
  c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous();
  const at::Tensor t = target.contiguous();
  const bool has_w = weight.has_value() && weight->defined();
  const at::Tensor w = has_w ? weight->contiguous() : at::Tensor();
  const int64_t M = sh.N * sh.S;
  const int64_t C = sh.C;
  const bool none = reduction == at::Reduction::None;
  at::Tensor loss = none ? at::empty(target.sizes(), x.options()) : at::empty({}, x.options());
  const auto acc_opts = x.options().dtype(acc_scalar_type(x.scalar_type()));
  at::Tensor total_weight = at::empty({}, acc_opts);
  at::Tensor lse = at::empty(lse_shape(target), acc_opts);
  auto stream = c10::cuda::getCurrentCUDAStream();

  FASTNN_DISPATCH_CUDA(x.scalar_type(), "cross_entropy_forward_cuda", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const int64_t* tp = t.const_data_ptr<int64_t>();
    const scalar_t* wp = has_w ? w.const_data_ptr<scalar_t>() : nullptr;
    A* lp = lse.mutable_data_ptr<A>();
    scalar_t* out_none = none ? loss.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* loss_scalar = none ? nullptr : loss.mutable_data_ptr<scalar_t>();
    A* twp = total_weight.mutable_data_ptr<A>();

    // Grid and block size depend only on (M, C): the reduction order is fixed.
    int64_t grid = 1;
    int threads = 256;
    enum { kWarp, kBlock, kCol } path;
    int64_t row_width = 32;
    bool vec = false;
    if (M == 0) {
      path = kCol;  // writes total_weight = 0 and loss = 0 (sum) / NaN (mean)
      threads = kColThreads;
    } else if (sh.S == 1 && C <= kWarpMaxC) {
      path = kWarp;
      row_width = C <= 16 ? 16 : 32;
      const int64_t max_threads = C <= 64 ? 1024 : 256;
      if (M * row_width <= max_threads) {
        threads = static_cast<int>(ceil_div(M * row_width, kWarpSize) * kWarpSize);
      } else {
        threads = 256;
        grid = std::min(ceil_div(M, threads / row_width), kMaxGrid);
      }
    } else if (sh.S == 1) {
      path = kBlock;
      vec = is_aligned(xp, 16) && C % vec_size<scalar_t>() == 0;
      threads = block_threads_for(vec ? C / vec_size<scalar_t>() : C, 128);
      grid = std::min(M, kMaxGrid);
    } else {
      path = kCol;
      threads = kColThreads;
      grid = std::min(ceil_div(M, kColThreads), kMaxGrid);
    }
    at::Tensor partials;
    A* part = nullptr;
    if (grid > 1) {
      partials = at::empty({2 * grid}, acc_opts);
      part = partials.mutable_data_ptr<A>();
    }
    const int red = static_cast<int>(reduction);
    const A eps = static_cast<A>(label_smoothing);
    if (path == kWarp) {
      with_warp_variant(static_cast<int>(C), [&](auto e, auto wd) {
        constexpr int ELEMS = decltype(e)::value;
        constexpr int WIDTH = decltype(wd)::value;
        ce_fwd_warp_kernel<scalar_t, ELEMS, WIDTH>
            <<<static_cast<unsigned>(grid), threads, 0, stream>>>(
                xp, tp, wp, lp, out_none, part, loss_scalar, twp, M, static_cast<int>(C),
                ignore_index, red, eps);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    } else if (path == kBlock) {
      if (vec) {
        ce_fwd_block_kernel<scalar_t, vec_size<scalar_t>()>
            <<<static_cast<unsigned>(grid), threads, 0, stream>>>(
                xp, tp, wp, lp, out_none, part, loss_scalar, twp, M, C, ignore_index, red, eps);
      } else {
        ce_fwd_block_kernel<scalar_t, 1><<<static_cast<unsigned>(grid), threads, 0, stream>>>(
            xp, tp, wp, lp, out_none, part, loss_scalar, twp, M, C, ignore_index, red, eps);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      ce_fwd_col_kernel<scalar_t><<<static_cast<unsigned>(grid), threads, 0, stream>>>(
          xp, tp, wp, lp, out_none, part, loss_scalar, twp, M, C, sh.S, ignore_index, red, eps);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (grid > 1) {
      loss_finalize_kernel<scalar_t><<<1, kFinalizeThreads, 0, stream>>>(part, grid, loss_scalar,
                                                                         twp, red);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return std::make_tuple(loss, lse, total_weight);
}

at::Tensor cross_entropy_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                       const at::Tensor& target,
                                       const c10::optional<at::Tensor>& weight, int64_t reduction,
                                       int64_t ignore_index, const at::Tensor& lse,
                                       const at::Tensor& total_weight, double label_smoothing) {
  constexpr const char* op = "cross_entropy_backward";
  const LossShape sh = check_loss_backward_inputs(op, grad_output, input, target, weight, reduction,
                                                  total_weight);
  check_label_smoothing(op, label_smoothing);
  check_lse(op, lse, input, target);
  c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous();
  const at::Tensor t = target.contiguous();
  const at::Tensor go = grad_output.contiguous();
  const at::Tensor tw = total_weight.contiguous();
  const at::Tensor l = lse.contiguous();  // as cross_entropy_forward returns it: a no-op
  const bool has_w = weight.has_value() && weight->defined();
  const at::Tensor w = has_w ? weight->contiguous() : at::Tensor();
  at::Tensor grad = at::empty(x.sizes(), x.options());
  const int64_t numel = x.numel();
  if (numel == 0) return grad;
  const int64_t M = sh.N * sh.S;
  const int64_t C = sh.C;
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t cap = static_cast<int64_t>(sm_count(x.get_device())) * 32;
  FASTNN_DISPATCH_CUDA(x.scalar_type(), "cross_entropy_backward_cuda", [&] {
    using A = acc_t<scalar_t>;
    BwdArgs a{t.const_data_ptr<int64_t>(), go.const_data_ptr<scalar_t>(),
              has_w ? static_cast<const void*>(w.const_data_ptr<scalar_t>()) : nullptr,
              tw.const_data_ptr<acc_t<scalar_t>>(), ignore_index, static_cast<int>(reduction),
              // rounded to acc_t as the forward's eps is, so both take the same branch
              static_cast<double>(static_cast<A>(label_smoothing))};
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const A* lp = l.const_data_ptr<A>();
    scalar_t* gp = grad.mutable_data_ptr<scalar_t>();
    if (sh.S == 1 && C >= 128) {
      const bool vec = is_aligned(xp, 16) && is_aligned(gp, 16) && C % vec_size<scalar_t>() == 0;
      const int threads = block_threads_for(vec ? C / vec_size<scalar_t>() : C, 32);
      const auto grid = static_cast<unsigned>(std::min(M, cap));
      if (vec) {
        ce_bwd_block_kernel<scalar_t, vec_size<scalar_t>()>
            <<<grid, threads, 0, stream>>>(a, xp, lp, gp, M, C);
      } else {
        ce_bwd_block_kernel<scalar_t, 1><<<grid, threads, 0, stream>>>(a, xp, lp, gp, M, C);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      const bool idx32 = numel <= static_cast<int64_t>(INT32_MAX);
      const int64_t grid = std::min(ceil_div(numel, kFlatThreads), cap);
      ce_bwd_flat_kernel<scalar_t><<<static_cast<unsigned>(grid), kFlatThreads, 0, stream>>>(
          a, xp, lp, gp, numel, C, sh.S, idx32);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return grad;
}

TORCH_LIBRARY_IMPL(fastnn, CUDA, m) {
  m.impl("cross_entropy_forward", &cross_entropy_forward_cuda);
  m.impl("cross_entropy_backward", &cross_entropy_backward_cuda);
}

}  // namespace fastnn
