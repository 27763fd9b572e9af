// Fused cross-entropy on the CPU: fastnn::cross_entropy_forward / cross_entropy_backward
// (= log_softmax over the class dim + NLL with class-index targets, optional label
// smoothing eps).
//
// Shapes (see loss_shapes.h): input (C), (N, C) or (N, C, d1, ..., dk) viewed as a dense
// [N, C, S]; target () / (N) / (N, d1, ..., dk) viewed as [N, S]; optional weight (C).
// Forward, per position p = (n, s), over the C logits x[n, :, s]:
//   m = max_c x,  ls = log(sum_c exp(x - m)),  lse[n, s, :] = (m, ls)
//   (lse: the target's shape plus a last dim of 2; see lse_shape in loss_shapes.h)
//   loss[n, s] = -w[t] * ((x[n, t, s] - m) - ls)  for t = target[n, s] != ignore_index
//   with label smoothing eps > 0 (native's definition):
//   loss[n, s] = (1 - eps) * that - eps / C * sum_c w[c] * ((x[n, c, s] - m) - ls)
//   total_weight = sum of w[t] over non-ignored positions (0-dim, every reduction; in
//                  float32 for the half types, see loss_shapes.h)
//   reduction none -> loss (target's shape, 0 where ignored); sum -> sum of loss;
//   mean -> sum of loss / total_weight (NaN when total_weight is 0, like torch).
// Backward (from the saved lse, no saved log-probs), g = grad_output[n, s] (none),
// grad_output (sum) or grad_output / total_weight (mean):
//   grad[n, c, s] = g * w[t] * (exp((x[n, c, s] - m) - ls) - [c == t]),  0 if ignored,
//   the softmax rounded as native log_softmax's output is. With label smoothing, for
//   hot = g (1 - eps) w[t], uni = g eps / C and Wsum = sum_c w[c]:
//   grad[n, c, s] = (hot + uni * Wsum) * softmax[c] - hot * [c == t] - uni * w[c].
// Targets outside [0, C) other than ignore_index raise IndexError.
//
// Work split:
//   * S == 1: each row of C logits is read once while it sits in L1: one vector pass for
//     the max and one for sum(exp(x - max)) (AVX2, masked tails; scalar fallback), then
//     the target logit is gathered; the logs of 8 rows are one vector log. For C <= 32
//     the forward instead puts 8 rows in the 8 lanes and walks the classes with gathers
//     (no horizontal reductions). Backward writes each row in one vectorised pass, the
//     one-hot term subtracted in registers.
//   * S > 1: no transposes; 8 (float) / 4 (double) adjacent spatial positions form one
//     vector and the C class rows are walked with stride S.
//   * Forward positions are grouped in fixed chunks whose size depends only on C and the
//     dtype (never on the thread count); chunks run in parallel with at::parallel_for when
//     there are several, each accumulates loss / weight in double, and the partials are
//     summed serially in chunk order -> bitwise identical results for any thread count. A single
//     chunk (small batches) runs inline: no parallel_for, no scratch allocation, and no
//     .contiguous() copies for already dense inputs, to keep per-call overhead low.
//   * float16 / bfloat16 run the float32 code (vec::Half16x8: loads widen, stores round
//     once; the scalar path computes in acc_t<T> = float); lse is float32 (as on CUDA).
//   * Label smoothing adds, per counted position, one more pass over its C logits for the
//     forward's smoothing term (AVX2 for contiguous rows, else scalar in double), and one
//     vector term per class to the backward; eps = 0 leaves every path as it was.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "fastnn/checks.h"
#include "fastnn/cpu_common.h"
#include "fastnn/cpu_features.h"
#include "fastnn/cpu_vec.h"
#include "fastnn/dispatch.h"
#include "fastnn/loss_shapes.h"

namespace fastnn {
namespace {

constexpr int64_t kChunkElems = 16384;  // float logits per reduction chunk / parallel task
constexpr int64_t kChunksPerTask = 2;   // parallel grain, in chunks

// Logits per chunk for T: float64 gets a quarter (its exp takes 4x a float's: half the
// lanes, twice the polynomial), so that a 64 x 256 batch still splits across two threads.
template <typename T>
constexpr int64_t chunk_elems() {
  return std::is_same_v<T, double> ? kChunkElems / 4 : kChunkElems;
}
constexpr int64_t kSmallC = vec::kMaxGatherRow;  // rows-as-lanes forward up to this many classes

struct Args {
  int64_t C, S, ignore_index;
  double eps = 0;   // label smoothing
  double wsum = 0;  // sum_c w[c] (C without weights); backward with eps > 0 only
};

#if FASTNN_HAVE_X86
// sum_c w[c] * ((x[c] - m) - ls) over a contiguous row of C logits (w == nullptr:
// weights 1), in two vector accumulators; masked tail lanes add exactly 0.
template <class A>
FASTNN_TARGET_AVX2 double row_weighted_logp_avx2(const typename A::T* x, const typename A::T* w,
                                                 int64_t C, typename A::C m, typename A::C ls) {
  using V = typename A::V;
  constexpr int64_t W = A::W;
  const V vm = A::set1(m), vls = A::set1(ls);
  V s0 = A::zero(), s1 = A::zero();
  int64_t c = 0;
  for (; c + 2 * W <= C; c += 2 * W) {
    const V l0 = A::sub(A::sub(A::load(x + c), vm), vls);
    const V l1 = A::sub(A::sub(A::load(x + c + W), vm), vls);
    s0 = w ? A::fmadd(A::load(w + c), l0, s0) : A::add(s0, l0);
    s1 = w ? A::fmadd(A::load(w + c + W), l1, s1) : A::add(s1, l1);
  }
  for (; c + W <= C; c += W) {
    const V l = A::sub(A::sub(A::load(x + c), vm), vls);
    s0 = w ? A::fmadd(A::load(w + c), l, s0) : A::add(s0, l);
  }
  if (c < C) {
    const __m256i tm = A::mask(C - c);
    const V l = A::mkeep(A::sub(A::sub(A::mload(x + c, tm), vm), vls), tm);
    s0 = w ? A::fmadd(A::mload(w + c, tm), l, s0) : A::add(s0, l);
  }
  return static_cast<double>(A::hsum(A::add(s0, s1)));
}
#endif

// -eps / C * sum_c w[c] * log_softmax(x)[c] added to (1 - eps) * the target's term: the
// label-smoothed loss of the position whose logits start at x_ns (stride S). Contiguous
// rows take the AVX2 sum when the CPU has it; otherwise one scalar pass in double.
template <typename T, typename C = acc_t<T>>
inline C smoothed_loss(C nll, const T* x_ns, const T* w, C m, C ls, const Args& a) {
  double s = 0;
#if FASTNN_HAVE_X86
  if (a.S == 1 && cpu_has_avx2_fma()) {
    s = row_weighted_logp_avx2<typename vec::Avx2Of<T>::type>(x_ns, w, a.C, m, ls);
  } else
#endif
  {
    for (int64_t c = 0; c < a.C; ++c) {
      const double lp = static_cast<double>((static_cast<C>(x_ns[c * a.S]) - m) - ls);
      s += w ? static_cast<double>(w[c]) * lp : lp;
    }
  }
  return static_cast<C>((1.0 - a.eps) * static_cast<double>(nll) -
                        a.eps / static_cast<double>(a.C) * s);
}

// Accumulates position p's loss given its m and ls; writes the none-reduction entry.
template <typename T, typename C = acc_t<T>>
inline void add_loss(LossSums& acc, const T* x_ns /* x at (n, 0, s) */, const int64_t* tgt,
                     const T* w, T* out_none, int64_t p, C m, C ls, const Args& a) {
  const int64_t t = tgt[p];
  if (t == a.ignore_index) {
    if (out_none) out_none[p] = T(0);
    return;
  }
  if (C10_UNLIKELY(t < 0 || t >= a.C)) throw_bad_target("cross_entropy_forward", t, a.C, a.ignore_index);
  const C wt = w ? static_cast<C>(w[t]) : C(1);
  C v = -wt * ((static_cast<C>(x_ns[t * a.S]) - m) - ls);
  if (a.eps != 0) v = smoothed_loss(v, x_ns, w, m, ls, a);
  if (out_none) out_none[p] = static_cast<T>(v);
  acc.add(v, w, t);
}

// Position p's log-sum-exp, in its two parts (see lse_shape in loss_shapes.h).
template <typename C>
inline void store_lse(C* lse, int64_t p, C m, C ls) {
  lse[2 * p] = m;
  lse[2 * p + 1] = ls;
}

// ---------------------------------------------------------------- forward, scalar
template <typename T, typename Acc = acc_t<T>>
LossPartial forward_scalar(const T* x, const int64_t* tgt, const T* w, T* out_none, Acc* lse,
                       int64_t p0, int64_t p1, const Args& a) {
  LossSums acc;
  const int64_t C = a.C, S = a.S;
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t n = p / S, s = p - n * S;
    const T* xr = x + n * C * S + s;
    Acc m = -std::numeric_limits<Acc>::infinity();
    for (int64_t c = 0; c < C; ++c) m = std::max(m, static_cast<Acc>(xr[c * S]));
    double sum = 0;  // scalar path: sum in double (as accurate as the vector path or better)
    for (int64_t c = 0; c < C; ++c) sum += static_cast<double>(std::exp(static_cast<Acc>(xr[c * S]) - m));
    const Acc ls = static_cast<Acc>(std::log(sum));
    store_lse(lse, p, m, ls);
    add_loss(acc, xr, tgt, w, out_none, p, m, ls, a);
  }
  return acc.partial(w != nullptr);
}

#if FASTNN_HAVE_X86
// ---------------------------------------------------------------- forward, AVX2
template <class A>
FASTNN_TARGET_AVX2 LossPartial forward_avx2(const typename A::T* x, const int64_t* tgt,
                                        const typename A::T* w, typename A::T* out_none,
                                        typename A::C* lse, int64_t p0, int64_t p1,
                                        const Args& a) {
  using T = typename A::T;
  using Acc = typename A::C;
  using V = typename A::V;
  LossSums acc;
  const int64_t C = a.C, S = a.S;
  alignas(32) Acc mv[A::W], lv[A::W];
  if (S == 1) {
    int64_t p = p0;
    if (C <= kSmallC) {
      // Small C (e.g. 10 classes): lanes are W rows, walked class by class with
      // gathers, so max / exp / sum / log all run on full vectors with no
      // horizontal reductions.
      V cols[kSmallC];
      for (; p + A::W <= p1; p += A::W) {
        const T* xb = x + p * C;
        V m, sum;
        vec::rows_max_sumexp<A>(xb, C, cols, m, sum);
        A::store(mv, m);
        A::store(lv, A::log(sum));
        for (int64_t k = 0; k < A::W; ++k) {
          store_lse(lse, p + k, mv[k], lv[k]);
          add_loss(acc, xb + k * C, tgt, w, out_none, p + k, mv[k], lv[k], a);
        }
      }
    }
    // W rows at a time so the W logs are one vector log
    for (; p < p1; p += A::W) {
      const int64_t nr = std::min<int64_t>(A::W, p1 - p);
      for (int64_t k = 0; k < nr; ++k) {
        const T* xr = x + (p + k) * C;
        mv[k] = vec::row_max<A>(xr, C);
        lv[k] = vec::row_sumexp<A>(xr, C, mv[k]);
      }
      for (int64_t k = nr; k < A::W; ++k) lv[k] = Acc(1);
      A::store(lv, A::log(A::load(lv)));
      for (int64_t k = 0; k < nr; ++k) {
        store_lse(lse, p + k, mv[k], lv[k]);
        add_loss(acc, x + (p + k) * C, tgt, w, out_none, p + k, mv[k], lv[k], a);
      }
    }
    return acc.partial(w != nullptr);
  }
  for (int64_t p = p0; p < p1;) {
    const int64_t n = p / S, s0 = p - n * S;
    const int64_t s1 = std::min(S, s0 + (p1 - p));
    for (int64_t s = s0; s < s1; s += A::W) {
      const int64_t wd = std::min<int64_t>(A::W, s1 - s);
      const T* xb = x + n * C * S + s;
      V m, sum;
      vec::cols_max_sumexp<A>(xb, C, S, wd, m, sum);
      A::store(mv, m);
      A::store(lv, A::log(sum));
      const int64_t pb = n * S + s;
      for (int64_t k = 0; k < wd; ++k) {
        store_lse(lse, pb + k, mv[k], lv[k]);
        add_loss(acc, xb + k, tgt, w, out_none, pb + k, mv[k], lv[k], a);
      }
    }
    p += s1 - s0;
  }
  return acc.partial(w != nullptr);
}
#endif

template <typename T>
LossPartial forward_range(const T* x, const int64_t* tgt, const T* w, T* out_none, acc_t<T>* lse,
                      int64_t p0, int64_t p1, const Args& a) {
#if FASTNN_HAVE_X86
  if (cpu_has_avx2_fma())
    return forward_avx2<typename vec::Avx2Of<T>::type>(x, tgt, w, out_none, lse, p0, p1, a);
#endif
  return forward_scalar(x, tgt, w, out_none, lse, p0, p1, a);
}

// ---------------------------------------------------------------- backward
// A position's gradient: grad[c] = soft * softmax[c] - hot * [c == t] - uni * w[c]
// (w[c] = 1 without weights). Without label smoothing soft = hot = g * w[t], uni = 0.
template <typename T>
struct RowCoef {
  T soft = T(0), hot = T(0), uni = T(0);
};

// Position p's coefficients (all 0 for an ignored position), target checked.
// Computed in C = acc_t<T> (float for the half types).
template <typename T, typename C = acc_t<T>>
inline RowCoef<C> row_coef(const int64_t* tgt, const T* w, const T* g_none, C g_red, int64_t p,
                           const Args& a, int64_t& t) {
  RowCoef<C> k;
  t = tgt[p];
  if (t == a.ignore_index) return k;
  if (C10_UNLIKELY(t < 0 || t >= a.C)) throw_bad_target("cross_entropy_backward", t, a.C, a.ignore_index);
  const C g = g_none ? static_cast<C>(g_none[p]) : g_red;
  const C gw = w ? g * static_cast<C>(w[t]) : g;
  if (a.eps == 0) {
    k.soft = k.hot = gw;
    return k;
  }
  k.hot = static_cast<C>(1.0 - a.eps) * gw;
  k.uni = g * static_cast<C>(a.eps / static_cast<double>(a.C));
  k.soft = k.hot + k.uni * static_cast<C>(a.wsum);
  return k;
}

template <typename T, typename Acc = acc_t<T>>
void backward_scalar(const T* x, const int64_t* tgt, const T* w, const T* g_none, Acc g_red,
                     const Acc* lse, T* gi, int64_t p0, int64_t p1, const Args& a) {
  const int64_t C = a.C, S = a.S;
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t n = p / S, s = p - n * S;
    const T* xr = x + n * C * S + s;
    T* gr = gi + n * C * S + s;
    int64_t t;
    const RowCoef<Acc> k = row_coef(tgt, w, g_none, g_red, p, a, t);
    if (t == a.ignore_index) {
      for (int64_t c = 0; c < C; ++c) gr[c * S] = T(0);
      continue;
    }
    const Acc m = lse[2 * p], ls = lse[2 * p + 1];
    for (int64_t c = 0; c < C; ++c) {  // each entry rounded once
      Acc v = std::exp((static_cast<Acc>(xr[c * S]) - m) - ls) * k.soft;
      if (a.eps != 0) v -= w ? k.uni * static_cast<Acc>(w[c]) : k.uni;
      if (c == t) v -= k.hot;
      gr[c * S] = static_cast<T>(v);
    }
  }
}

#if FASTNN_HAVE_X86
template <class A>
FASTNN_TARGET_AVX2 void backward_avx2(const typename A::T* x, const int64_t* tgt,
                                      const typename A::T* w, const typename A::T* g_none,
                                      typename A::C g_red, const typename A::C* lse,
                                      typename A::T* gi, int64_t p0, int64_t p1, const Args& a) {
  using T = typename A::T;
  using Acc = typename A::C;
  using V = typename A::V;
  constexpr int64_t W = A::W;
  const int64_t C = a.C, S = a.S;
  if (S == 1) {
    for (int64_t p = p0; p < p1; ++p) {
      const T* xr = x + p * C;
      T* gr = gi + p * C;
      int64_t t;
      const RowCoef<Acc> k = row_coef(tgt, w, g_none, g_red, p, a, t);
      int64_t c = 0;
      if (t == a.ignore_index) {
        for (; c + W <= C; c += W) A::store(gr + c, A::zero());
        if (c < C) A::mstore(gr + c, A::mask(C - c), A::zero());
        continue;
      }
      // the one-hot term is subtracted in registers (no store-then-reload of gr[t])
      const V vm = A::set1(lse[2 * p]), vls = A::set1(lse[2 * p + 1]);
      const V vs = A::set1(k.soft), vh = A::set1(k.hot), vu = A::set1(k.uni);
      const bool smooth = a.eps != 0;
      for (; c + W <= C; c += W) {
        V v = A::mul(A::exp(A::sub(A::sub(A::load(xr + c), vm), vls)), vs);
        if (smooth) v = w ? A::fnmadd(vu, A::load(w + c), v) : A::sub(v, vu);
        if (t >= c && t < c + W) v = A::sub_at_lane(v, t - c, vh);
        A::store(gr + c, v);
      }
      if (c < C) {
        const __m256i tm = A::mask(C - c);
        V v = A::mul(A::exp(A::sub(A::sub(A::mload(xr + c, tm), vm), vls)), vs);
        if (smooth) v = w ? A::fnmadd(vu, A::mload(w + c, tm), v) : A::sub(v, vu);
        if (t >= c) v = A::sub_at_lane(v, t - c, vh);
        A::mstore(gr + c, tm, v);
      }
    }
    return;
  }
  // S > 1: units are (n, block of W spatial positions); p0/p1 index those units.
  const int64_t nblk = (S + W - 1) / W;
  alignas(32) Acc softv[W], hotv[W], univ[W], vb[W];
  int64_t tv[W];
  for (int64_t u = p0; u < p1; ++u) {
    const int64_t n = u / nblk, s = (u % nblk) * W, wd = std::min(W, S - s);
    const int64_t pb = n * S + s;
    for (int64_t k = 0; k < W; ++k) {
      softv[k] = hotv[k] = univ[k] = Acc(0);
      tv[k] = -1;
    }
    for (int64_t k = 0; k < wd; ++k) {
      const RowCoef<Acc> rc = row_coef(tgt, w, g_none, g_red, pb + k, a, tv[k]);
      softv[k] = rc.soft;
      hotv[k] = rc.hot;
      univ[k] = rc.uni;
      if (tv[k] == a.ignore_index) tv[k] = -1;
    }
    const T* xb = x + n * C * S + s;
    T* gb = gi + n * C * S + s;
    const __m256i tm = A::mask(wd);
    alignas(32) Acc mv[W], lsv[W];
    for (int64_t k = 0; k < W; ++k) {
      mv[k] = k < wd ? lse[2 * (pb + k)] : Acc(0);
      lsv[k] = k < wd ? lse[2 * (pb + k) + 1] : Acc(0);
    }
    const V vm = A::load(mv), vls = A::load(lsv), vs = A::load(softv), vu = A::load(univ);
    const bool smooth = a.eps != 0;
    // ignored lanes have scale 0; force exact zeros there even for non-finite logits
    alignas(32) Acc keepv[W];
    for (int64_t k = 0; k < W; ++k) {
      keepv[k] = Acc(0);
      if (tv[k] >= 0) std::memset(&keepv[k], 0xff, sizeof(Acc));  // all-ones lane
    }
    const V km = A::load(keepv);
    for (int64_t c = 0; c < C; ++c) {
      V v = A::mul(A::exp(A::sub(A::sub(A::mload(xb + c * S, tm), vm), vls)), vs);
      if (smooth) v = A::fnmadd(vu, A::set1(w ? static_cast<Acc>(w[c]) : Acc(1)), v);
      v = A::band(v, km);
      // the one-hot term of the lanes whose target is c, before the (rounding) store
      bool hit = false;
      for (int64_t k = 0; k < wd; ++k) hit |= tv[k] == c;
      if (hit) {
        A::store(vb, v);
        for (int64_t k = 0; k < wd; ++k)
          if (tv[k] == c) vb[k] -= hotv[k];
        v = A::load(vb);
      }
      A::mstore(gb + c * S, tm, v);
    }
  }
}
#endif

template <typename T>
void backward_run(const T* x, const int64_t* tgt, const T* w, const T* g_none, acc_t<T> g_red,
                  const acc_t<T>* lse, T* gi, int64_t N, const Args& a) {
  const int64_t C = a.C, S = a.S;
#if FASTNN_HAVE_X86
  if (cpu_has_avx2_fma()) {
    using A = typename vec::Avx2Of<T>::type;
    if (S == 1) {
      const int64_t grain = std::max<int64_t>(1, chunk_elems<T>() / std::max<int64_t>(C, 1));
      if (N <= grain) return backward_avx2<A>(x, tgt, w, g_none, g_red, lse, gi, 0, N, a);
      at::parallel_for(0, N, grain, [&](int64_t b, int64_t e) {
        backward_avx2<A>(x, tgt, w, g_none, g_red, lse, gi, b, e, a);
      });
    } else {
      const int64_t units = N * ((S + A::W - 1) / A::W);
      const int64_t grain =
          std::max<int64_t>(1, chunk_elems<T>() / std::max<int64_t>(C * A::W, 1));
      at::parallel_for(0, units, grain, [&](int64_t b, int64_t e) {
        backward_avx2<A>(x, tgt, w, g_none, g_red, lse, gi, b, e, a);
      });
    }
    return;
  }
#endif
  const int64_t P = N * S;
  const int64_t grain = std::max<int64_t>(1, chunk_elems<T>() / std::max<int64_t>(C, 1));
  at::parallel_for(0, P, grain, [&](int64_t b, int64_t e) {
    backward_scalar(x, tgt, w, g_none, g_red, lse, gi, b, e, a);
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_forward_cpu(
    const at::Tensor& input, const at::Tensor& target, const c10::optional<at::Tensor>& weight,
    int64_t reduction, int64_t ignore_index, double label_smoothing) {
  constexpr const char* op = "cross_entropy_forward";
  const LossShape sh = check_loss_inputs(op, input, target, weight, reduction);
  check_label_smoothing(op, label_smoothing);
  const c10::MaybeOwned<at::Tensor> x = input.expect_contiguous();
  const c10::MaybeOwned<at::Tensor> tg = target.expect_contiguous();
  const c10::MaybeOwned<at::Tensor> w = contiguous_weight(weight);
  at::Tensor loss = loss_output(target, input, reduction);
  // lse in the accumulation type: float32 for the half types (as on CUDA)
  at::Tensor lse = at::Tensor(
      at::detail::empty_cpu(lse_shape(target), acc_scalar_type(input.scalar_type())));
  at::Tensor total_weight = total_weight_output(input);
  const Args a{sh.C, sh.S, ignore_index, label_smoothing};

  FASTNN_DISPATCH_CPU(input.scalar_type(), "fastnn::cross_entropy_forward", [&] {
    const scalar_t* px = x->const_data_ptr<scalar_t>();
    const int64_t* pt = tg->const_data_ptr<int64_t>();
    const scalar_t* pw = weight_data<scalar_t>(*w);
    scalar_t* pout = reduction == at::Reduction::None ? loss.data_ptr<scalar_t>() : nullptr;
    acc_t<scalar_t>* pl = lse.data_ptr<acc_t<scalar_t>>();
    const int64_t chunk =
        std::max<int64_t>(1, chunk_elems<scalar_t>() / std::max<int64_t>(sh.C, 1));
    const LossPartial total =
        reduce_in_chunks(sh.N * sh.S, chunk, kChunksPerTask, [&](int64_t p0, int64_t p1) {
          return forward_range(px, pt, pw, pout, pl, p0, p1, a);
        });
    write_reduced<scalar_t>(total, reduction, loss, total_weight);
  });
  return {loss, lse, total_weight};
}

at::Tensor cross_entropy_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                      const at::Tensor& target,
                                      const c10::optional<at::Tensor>& weight, int64_t reduction,
                                      int64_t ignore_index, const at::Tensor& lse,
                                      const at::Tensor& total_weight, double label_smoothing) {
  constexpr const char* op = "cross_entropy_backward";
  const LossShape sh = check_loss_backward_inputs(op, grad_output, input, target, weight, reduction,
                                                  total_weight);
  check_label_smoothing(op, label_smoothing);
  const bool none = reduction == at::Reduction::None;
  check_lse(op, lse, input, target);
  const c10::MaybeOwned<at::Tensor> x = input.expect_contiguous();
  const c10::MaybeOwned<at::Tensor> tg = target.expect_contiguous();
  const c10::MaybeOwned<at::Tensor> go = grad_output.expect_contiguous();
  const c10::MaybeOwned<at::Tensor> l = lse.expect_contiguous();
  const c10::MaybeOwned<at::Tensor> w = contiguous_weight(weight);
  at::Tensor grad_input = dense_empty(input.sizes(), input);
  if (sh.N * sh.S == 0 || grad_input.numel() == 0) return grad_input;
  Args a{sh.C, sh.S, ignore_index, label_smoothing};

  FASTNN_DISPATCH_CPU(input.scalar_type(), "fastnn::cross_entropy_backward", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* pw = weight_data<scalar_t>(*w);
    a.wsum = static_cast<double>(sh.C);
    if (pw && label_smoothing != 0) {
      a.wsum = 0;
      for (int64_t c = 0; c < sh.C; ++c) a.wsum += static_cast<double>(pw[c]);
    }
    const scalar_t* pg = go->const_data_ptr<scalar_t>();
    const acc g0 = none ? acc(0) : static_cast<acc>(pg[0]);
    const acc g_red = reduction == at::Reduction::Mean
                          ? g0 / *total_weight.const_data_ptr<acc>()
                          : g0;
    backward_run<scalar_t>(x->const_data_ptr<scalar_t>(), tg->const_data_ptr<int64_t>(),
                           pw, none ? pg : nullptr,
                           g_red, l->const_data_ptr<acc>(), grad_input.data_ptr<scalar_t>(),
                           sh.N, a);
  });
  return grad_input;
}

TORCH_LIBRARY_IMPL(fastnn, CPU, m) {
  m.impl("cross_entropy_forward", &cross_entropy_forward_cpu);
  m.impl("cross_entropy_backward", &cross_entropy_backward_cpu);
}

}  // namespace fastnn
