// LogSoftmax on the CPU: fastnn::log_softmax_forward / log_softmax_backward.
//
// Forward:  y = x - max(x) - log(sum(exp(x - max(x))))   along `dim`
// Backward: dx = dy - exp(y) * sum(dy)                     along `dim` (y = saved output)
//
// Shapes: any tensor (0-d, 1-D, N-D, empty), any dim (negative dims wrap). The
// (contiguous) input is viewed as [outer, D, inner] with D = size(dim),
// outer = prod(sizes before dim), inner = prod(sizes after dim). Outputs are dense
// tensors of the input's shape and dtype.
//
// Work split:
//   * inner == 1 (dim is the last dim): rows of D contiguous elements; per row one
//     pass for the max, one for sum(exp(x - max)) and one writing y, all while the row
//     is in L1. Rows are split across threads with at::parallel_for (grain: about
//     64 KiB of input per task, so small tensors run on the calling thread). The
//     forward of short rows (D <= 32, e.g. 10 classes) goes 8 floats / 4 doubles at a
//     time, one row per vector lane (gathered element by element): its max, sum and
//     log need no horizontal reduction. (The same for the backward's sum measured
//     slower than a row at a time: 1024 x 10, 23.2 vs 20.5 us; gathers are slow here.)
//   * inner > 1: no transposing copy; for each outer index, blocks of up to 128
//     adjacent inner columns are processed together: the per-column max and sum of exp
//     live in a small L1 scratch, and each pass (max, sum of exp, write) walks the D
//     rows in order reading the block's contiguous columns as vectors (8 floats /
//     4 doubles, masked tail). The (outer, column-block) pairs are split across threads.
//   Each row / column is reduced by exactly one thread in a fixed order, so results
//   are bitwise identical for any thread count.
//
// Vectorisation: AVX2+FMA (fastnn::vec::exp_ps / exp_pd polynomials, masked loads
// for row tails) chosen at run time with cpu_has_avx2_fma(); portable scalar
// fallback with std::exp / std::log otherwise. float16 / bfloat16 run the float32 code:
// loads widen 8 values to floats, stores round once (vec::Half16x8; the scalar path
// computes in acc_t<T> = float). The AVX2 path accumulates float sums
// in float lanes (like torch), the scalar path in double; double stays double end to end.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "fastnn/checks.h"
#include "fastnn/cpu_common.h"
#include "fastnn/cpu_features.h"
#include "fastnn/cpu_vec.h"
#include "fastnn/dispatch.h"

namespace fastnn {
namespace {

// Work per parallel task: 64 KiB of input (16K floats, 8K doubles: a double's exp costs
// about twice a float's per element, so the tasks take about as long).
constexpr int64_t kGrainBytes = 64 << 10;
constexpr int64_t kColBlock = 128;      // inner columns per task when dim is not the last

struct Geometry {
  int64_t outer, D, inner;
};

Geometry geometry(const at::Tensor& t, int64_t dim) {
  Geometry g{1, 1, 1};
  if (t.dim() == 0) return g;
  for (int64_t i = 0; i < dim; ++i) g.outer *= t.size(i);
  g.D = t.size(dim);
  for (int64_t i = dim + 1; i < t.dim(); ++i) g.inner *= t.size(i);
  return g;
}

// ---------------------------------------------------------------- scalar fallback
// C = acc_t<T>: half types are computed in float and rounded once when stored.
template <typename T>
void fwd_row_scalar(const T* x, T* y, int64_t D, int64_t stride) {
  using C = acc_t<T>;
  C m = -std::numeric_limits<C>::infinity();
  for (int64_t i = 0; i < D; ++i) m = std::max(m, static_cast<C>(x[i * stride]));
  double s = 0;  // scalar path: sum in double
  for (int64_t i = 0; i < D; ++i) s += static_cast<double>(std::exp(static_cast<C>(x[i * stride]) - m));
  const C ls = static_cast<C>(std::log(s));
  for (int64_t i = 0; i < D; ++i) y[i * stride] = static_cast<T>(static_cast<C>(x[i * stride]) - m - ls);
}

template <typename T>
void bwd_row_scalar(const T* dy, const T* y, T* dx, int64_t D, int64_t stride) {
  using C = acc_t<T>;
  double sd = 0;  // scalar path: sum in double
  for (int64_t i = 0; i < D; ++i) sd += static_cast<double>(dy[i * stride]);
  const C s = static_cast<C>(sd);
  for (int64_t i = 0; i < D; ++i)
    dx[i * stride] = static_cast<T>(static_cast<C>(dy[i * stride]) - std::exp(static_cast<C>(y[i * stride])) * s);
}

#if FASTNN_HAVE_X86
using vec::Avx2Of;

// ---------------------------------------------------------------- AVX2, dim = last
// y = (x - m) - ls over a row of D.
template <class A>
FASTNN_TARGET_AVX2 void write_row_avx2(const typename A::T* x, typename A::T* y, int64_t D,
                                       typename A::C m, typename A::C ls) {
  using V = typename A::V;
  constexpr int64_t W = A::W;
  const V vm = A::set1(m), vl = A::set1(ls);
  int64_t i = 0;
  for (; i + W <= D; i += W) A::store(y + i, A::sub(A::sub(A::load(x + i), vm), vl));
  if (i < D) {
    const __m256i tm = A::mask(D - i);
    A::mstore(y + i, tm, A::sub(A::sub(A::mload(x + i, tm), vm), vl));
  }
}

template <class A>
FASTNN_TARGET_AVX2 void fwd_row_avx2(const typename A::T* x, typename A::T* y, int64_t D) {
  const typename A::C m = vec::row_max<A>(x, D);                  // pass 1
  const typename A::C ls = std::log(vec::row_sumexp<A>(x, D, m));  // pass 2
  write_row_avx2<A>(x, y, D, m, ls);                              // pass 3
}

// Rows [0, rows) of D <= vec::kMaxGatherRow elements (e.g. 10 classes), W at a time as
// the lanes of one vector (vec::rows_max_sumexp): no horizontal reduction, one vector
// log per W rows. A last partial block runs from a zero-padded copy, so each row is
// computed the same way wherever it sits (each lane only sees its own row).
template <class A>
FASTNN_TARGET_AVX2 void fwd_short_rows_avx2(const typename A::T* x, typename A::T* y,
                                            int64_t rows, int64_t D) {
  using T = typename A::T;
  using V = typename A::V;
  constexpr int64_t W = A::W;
  V cols[vec::kMaxGatherRow];
  alignas(32) typename A::C mv[W], lv[W];
  T xpad[W * vec::kMaxGatherRow], ypad[W * vec::kMaxGatherRow];
  for (int64_t r = 0; r < rows; r += W) {
    const int64_t nr = std::min(W, rows - r);
    const T* xb = x + r * D;
    T* yb = y + r * D;
    if (nr < W) {
      std::memcpy(xpad, xb, sizeof(T) * nr * D);
      std::memset(xpad + nr * D, 0, sizeof(T) * (W - nr) * D);  // rows of zeros
      xb = xpad;
      yb = ypad;
    }
    V m, s;
    vec::rows_max_sumexp<A>(xb, D, cols, m, s);
    A::store(mv, m);
    A::store(lv, A::log(s));
    for (int64_t k = 0; k < nr; ++k) write_row_avx2<A>(xb + k * D, yb + k * D, D, mv[k], lv[k]);
    if (nr < W) std::memcpy(y + r * D, ypad, sizeof(T) * nr * D);
  }
}

template <class A>
FASTNN_TARGET_AVX2 void bwd_row_avx2(const typename A::T* dy, const typename A::T* y,
                                     typename A::T* dx, int64_t D) {
  using V = typename A::V;
  constexpr int64_t W = A::W;
  V s0 = A::zero(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 4 * W <= D; i += 4 * W) {
    s0 = A::add(s0, A::load(dy + i));
    s1 = A::add(s1, A::load(dy + i + W));
    s2 = A::add(s2, A::load(dy + i + 2 * W));
    s3 = A::add(s3, A::load(dy + i + 3 * W));
  }
  for (; i + W <= D; i += W) s0 = A::add(s0, A::load(dy + i));
  const int64_t rem = D - i;
  const __m256i tm = A::mask(rem);
  if (rem) s1 = A::add(s1, A::mload(dy + i, tm));  // masked lanes load 0
  const V vs = A::set1(A::hsum(A::add(A::add(s0, s1), A::add(s2, s3))));
  for (i = 0; i + W <= D; i += W)
    A::store(dx + i, A::fnmadd(A::exp(A::load(y + i)), vs, A::load(dy + i)));
  if (rem) A::mstore(dx + i, tm, A::fnmadd(A::exp(A::mload(y + i, tm)), vs, A::mload(dy + i, tm)));
}

// ---------------------------------------------------------------- AVX2, strided dim
// x/y point at column j of a [D, inner] slab; handles the w (1..kColBlock) columns
// j..j+w-1. The per-column max / sum live in a small L1 scratch and every pass walks
// the rows in order, reading w contiguous elements per row (cache-line friendly,
// hardware-prefetchable; no column-at-a-time walks with a large stride).
template <class A>
FASTNN_TARGET_AVX2 void fwd_cols_avx2(const typename A::T* x, typename A::T* y, int64_t D,
                                      int64_t inner, int64_t w) {
  using T = typename A::T;
  using C = typename A::C;
  constexpr int64_t W = A::W;
  alignas(32) C mb[kColBlock], sb[kColBlock];
  const int64_t nv = w / W, rem = w - nv * W, nvr = nv + (rem ? 1 : 0);
  const __m256i tm = A::mask(rem);
  for (int64_t v = 0; v < nvr; ++v) {
    A::store(mb + v * W, A::set1(-std::numeric_limits<C>::infinity()));
    A::store(sb + v * W, A::zero());
  }
  // masked tail lanes read 0 and only ever feed lanes that are never stored
  for (int64_t r = 0; r < D; ++r) {
    const T* xr = x + r * inner;
    for (int64_t v = 0; v < nv; ++v) A::store(mb + v * W, A::max(A::load(mb + v * W), A::load(xr + v * W)));
    if (rem) A::store(mb + nv * W, A::max(A::load(mb + nv * W), A::mload(xr + nv * W, tm)));
  }
  for (int64_t r = 0; r < D; ++r) {
    const T* xr = x + r * inner;
    for (int64_t v = 0; v < nv; ++v)
      A::store(sb + v * W, A::add(A::load(sb + v * W),
                                  A::exp_nonpos(A::sub(A::load(xr + v * W), A::load(mb + v * W)))));
    if (rem)
      A::store(sb + nv * W, A::add(A::load(sb + nv * W),
                                   A::exp_nonpos(A::sub(A::mload(xr + nv * W, tm), A::load(mb + nv * W)))));
  }
  for (int64_t v = 0; v < nvr; ++v) A::store(sb + v * W, A::log(A::load(sb + v * W)));
  for (int64_t r = 0; r < D; ++r) {
    const T* xr = x + r * inner;
    T* yr = y + r * inner;
    for (int64_t v = 0; v < nv; ++v)
      A::store(yr + v * W, A::sub(A::sub(A::load(xr + v * W), A::load(mb + v * W)), A::load(sb + v * W)));
    if (rem)
      A::mstore(yr + nv * W, tm,
                A::sub(A::sub(A::mload(xr + nv * W, tm), A::load(mb + nv * W)), A::load(sb + nv * W)));
  }
}

template <class A>
FASTNN_TARGET_AVX2 void bwd_cols_avx2(const typename A::T* dy, const typename A::T* y,
                                      typename A::T* dx, int64_t D, int64_t inner, int64_t w) {
  using T = typename A::T;
  using C = typename A::C;
  constexpr int64_t W = A::W;
  alignas(32) C sb[kColBlock];
  const int64_t nv = w / W, rem = w - nv * W, nvr = nv + (rem ? 1 : 0);
  const __m256i tm = A::mask(rem);
  for (int64_t v = 0; v < nvr; ++v) A::store(sb + v * W, A::zero());
  for (int64_t r = 0; r < D; ++r) {
    const T* dr = dy + r * inner;
    for (int64_t v = 0; v < nv; ++v) A::store(sb + v * W, A::add(A::load(sb + v * W), A::load(dr + v * W)));
    if (rem) A::store(sb + nv * W, A::add(A::load(sb + nv * W), A::mload(dr + nv * W, tm)));
  }
  for (int64_t r = 0; r < D; ++r) {
    const int64_t o = r * inner;
    for (int64_t v = 0; v < nv; ++v)
      A::store(dx + o + v * W, A::fnmadd(A::exp(A::load(y + o + v * W)), A::load(sb + v * W),
                                         A::load(dy + o + v * W)));
    if (rem)
      A::mstore(dx + o + nv * W, tm,
                A::fnmadd(A::exp(A::mload(y + o + nv * W, tm)), A::load(sb + nv * W),
                          A::mload(dy + o + nv * W, tm)));
  }
}

#endif  // FASTNN_HAVE_X86

// ---------------------------------------------------------------- drivers
// Runs `row(first, count)` over the D-rows (inner == 1) or `cols(o, j, w)` over
// (outer, column block) pairs (inner > 1), split across threads.
template <typename T, class RowFn, class ColFn>
void for_each_slice(const Geometry& g, const RowFn& row, const ColFn& cols) {
  const int64_t D = g.D, inner = g.inner;
  constexpr int64_t grain_elems = kGrainBytes / static_cast<int64_t>(sizeof(T));
  if (inner == 1) {
    const int64_t grain = std::max<int64_t>(1, grain_elems / std::max<int64_t>(D, 1));
    at::parallel_for(0, g.outer, grain, [&](int64_t b, int64_t e) { row(b, e); });
    return;
  }
  constexpr int64_t W = kColBlock;
  const int64_t nblk = (inner + W - 1) / W;
  const int64_t grain =
      std::max<int64_t>(1, grain_elems / std::max<int64_t>(D * std::min(W, inner), 1));
  at::parallel_for(0, g.outer * nblk, grain, [&](int64_t b, int64_t e) {
    for (int64_t u = b; u < e; ++u) {
      const int64_t o = u / nblk, j = (u % nblk) * W;
      cols(o, j, std::min(W, inner - j));
    }
  });
}

template <typename T>
void forward_impl(const T* x, T* y, const Geometry& g) {
  const int64_t D = g.D, inner = g.inner, od = D * inner;
#if FASTNN_HAVE_X86
  if (cpu_has_avx2_fma()) {
    using A = typename Avx2Of<T>::type;
    for_each_slice<T>(
        g,
        [&](int64_t b, int64_t e) {
          if (D <= vec::kMaxGatherRow)
            return fwd_short_rows_avx2<A>(x + b * D, y + b * D, e - b, D);
          for (int64_t r = b; r < e; ++r) fwd_row_avx2<A>(x + r * D, y + r * D, D);
        },
        [&](int64_t o, int64_t j, int64_t w) {
          fwd_cols_avx2<A>(x + o * od + j, y + o * od + j, D, inner, w);
        });
    return;
  }
#endif
  for_each_slice<T>(
      g,
      [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) fwd_row_scalar(x + r * D, y + r * D, D, 1);
      },
      [&](int64_t o, int64_t j, int64_t w) {
        for (int64_t k = 0; k < w; ++k) fwd_row_scalar(x + o * od + j + k, y + o * od + j + k, D, inner);
      });
}

template <typename T>
void backward_impl(const T* dy, const T* y, T* dx, const Geometry& g) {
  const int64_t D = g.D, inner = g.inner, od = D * inner;
#if FASTNN_HAVE_X86
  if (cpu_has_avx2_fma()) {
    using A = typename Avx2Of<T>::type;
    for_each_slice<T>(
        g,
        [&](int64_t b, int64_t e) {
          for (int64_t r = b; r < e; ++r) bwd_row_avx2<A>(dy + r * D, y + r * D, dx + r * D, D);
        },
        [&](int64_t o, int64_t j, int64_t w) {
          const int64_t off = o * od + j;
          bwd_cols_avx2<A>(dy + off, y + off, dx + off, D, inner, w);
        });
    return;
  }
#endif
  for_each_slice<T>(
      g,
      [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) bwd_row_scalar(dy + r * D, y + r * D, dx + r * D, D, 1);
      },
      [&](int64_t o, int64_t j, int64_t w) {
        for (int64_t k = 0; k < w; ++k) {
          const int64_t off = o * od + j + k;
          bwd_row_scalar(dy + off, y + off, dx + off, D, inner);
        }
      });
}

}  // namespace

at::Tensor log_softmax_forward_cpu(const at::Tensor& input, int64_t dim) {
  constexpr const char* op = "log_softmax_forward";
  check_floating(op, "input", input);
  const int64_t d = wrap_dim(op, dim, input.dim());
  const c10::MaybeOwned<at::Tensor> x = input.expect_contiguous();
  at::Tensor y = dense_empty(input.sizes(), input);
  if (input.numel() == 0) return y;
  const Geometry g = geometry(*x, d);
  FASTNN_DISPATCH_CPU(input.scalar_type(), "fastnn::log_softmax_forward", [&] {
    forward_impl<scalar_t>(x->data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), g);
  });
  return y;
}

at::Tensor log_softmax_backward_cpu(const at::Tensor& grad_output, const at::Tensor& output,
                                    int64_t dim) {
  constexpr const char* op = "log_softmax_backward";
  check_grad_of_output(op, grad_output, output);
  const int64_t d = wrap_dim(op, dim, output.dim());
  const c10::MaybeOwned<at::Tensor> dy = grad_output.expect_contiguous();
  const c10::MaybeOwned<at::Tensor> y = output.expect_contiguous();
  at::Tensor dx = dense_empty(output.sizes(), output);
  if (output.numel() == 0) return dx;
  const Geometry g = geometry(*y, d);
  FASTNN_DISPATCH_CPU(output.scalar_type(), "fastnn::log_softmax_backward", [&] {
    backward_impl<scalar_t>(dy->data_ptr<scalar_t>(), y->data_ptr<scalar_t>(),
                            dx.data_ptr<scalar_t>(), g);
  });
  return dx;
}

TORCH_LIBRARY_IMPL(fastnn, CPU, m) {
  m.impl("log_softmax_forward", &log_softmax_forward_cpu);
  m.impl("log_softmax_backward", &log_softmax_backward_cpu);
}

}  // namespace fastnn
