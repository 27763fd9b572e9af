// Helpers shared by fastnn's CPU kernels (csrc/cpu/*.cpp).
#pragma once

#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <ATen/core/Reduction.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/MaybeOwned.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <type_traits>
#include <vector>

#include "fastnn/dispatch.h"
#include "fastnn/loss_shapes.h"

namespace fastnn {

// A dense CPU tensor of `like`'s dtype. The same allocation as at::empty, without the
// dispatcher round trip, which matters at the tiny, per-call-overhead-bound sizes.
inline at::Tensor dense_empty(at::IntArrayRef sizes, const at::Tensor& like) {
  return at::Tensor(at::detail::empty_cpu(sizes, like.scalar_type()));
}

// A loss reduction's partial sums over one fixed chunk of positions, kept in double
// and combined in chunk order, so a reduction does not depend on the thread count.
// ---- shared by the loss ops (nll_loss.cpp, cross_entropy.cpp)

// Partial sums of a loss forward over some positions, kept in double.
struct LossPartial {
  double loss = 0, weight = 0;
};

// Accumulates a loss forward's LossPartial position by position. Without class weights
// the total weight is a count of the positions, kept in an integer rather than a second
// double sum: GCC pairs two double sums into one vector that it keeps in memory, a
// store-to-load round trip per position (3.7x slower for NLL at 16384 x 10).
struct LossSums {
  double loss = 0, weight = 0;
  int64_t count = 0;
  template <typename A, typename T>
  void add(A v, const T* w, int64_t t) {  // a position of class t and loss v
    loss += static_cast<double>(v);
    if (w)
      weight += static_cast<double>(w[t]);
    else
      ++count;
  }
  LossPartial partial(bool weighted) const {
    return {loss, weighted ? weight : static_cast<double>(count)};
  }
};

// The class weight as a dense tensor, or an undefined one when there is none.
inline c10::MaybeOwned<at::Tensor> contiguous_weight(const std::optional<at::Tensor>& weight) {
  return weight.has_value() && weight->defined()
             ? weight->expect_contiguous()
             : c10::MaybeOwned<at::Tensor>::owned(std::in_place);
}

template <typename T>
const T* weight_data(const at::Tensor& weight) {
  return weight.defined() ? weight.const_data_ptr<T>() : nullptr;
}

// The loss output: the target's shape for reduction 'none', else 0-dim.
inline at::Tensor loss_output(const at::Tensor& target, const at::Tensor& input,
                              int64_t reduction) {
  return reduction == at::Reduction::None ? dense_empty(target.sizes(), input)
                                          : dense_empty({}, input);
}

// The deterministic reduction of a loss forward over positions [0, P): fixed chunks of
// `chunk` positions (chosen from the shape only); range(p0, p1) returns one chunk's
// partial sums. A single chunk runs inline, with no parallel machinery (the small-batch
// case); several run under at::parallel_for and their partials are added serially in
// chunk order, so the result is bitwise the same for every thread count.
template <class Range>
LossPartial reduce_in_chunks(int64_t P, int64_t chunk, int64_t chunks_per_task,
                             const Range& range) {
  const int64_t nchunks = (P + chunk - 1) / chunk;
  if (nchunks <= 1) return range(int64_t(0), P);
  std::vector<LossPartial> parts(nchunks);
  at::parallel_for(0, nchunks, chunks_per_task, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) parts[c] = range(c * chunk, std::min(P, (c + 1) * chunk));
  });
  LossPartial total;
  for (const LossPartial& q : parts) {
    total.loss += q.loss;
    total.weight += q.weight;
  }
  return total;
}

// A loss forward's 0-dim total_weight, in acc_scalar_type (see loss_shapes.h).
inline at::Tensor total_weight_output(const at::Tensor& input) {
  return at::Tensor(at::detail::empty_cpu({}, acc_scalar_type(input.scalar_type())));
}

// Writes the 0-dim results of a loss forward from its summed partials: total_weight
// always; the loss for 'mean' (mean_of: sum / total_weight, NaN when that is 0) and
// 'sum' ('none' wrote its per-position losses already).
template <typename T>
void write_reduced(const LossPartial& total, int64_t reduction, const at::Tensor& loss,
                   const at::Tensor& total_weight) {
  *total_weight.data_ptr<acc_t<T>>() = static_cast<acc_t<T>>(total.weight);
  if (reduction == at::Reduction::Mean)
    *loss.data_ptr<T>() = static_cast<T>(mean_of(total.loss, total.weight));
  else if (reduction == at::Reduction::Sum)
    *loss.data_ptr<T>() = static_cast<T>(total.loss);
}

// Raises the IndexError for a class index outside [0, C) that is not ignore_index.
[[noreturn]] C10_NOINLINE inline void throw_bad_target(const char* op, int64_t t, int64_t C,
                                                       int64_t ignore_index) {
  TORCH_CHECK_INDEX(false, "fastnn::", op, ": Target ", t,
                    " is out of bounds: class indices must be in [0, ", C - 1,
                    "] (C = ", C, ") or equal ignore_index (", ignore_index, ").");
  std::abort();  // unreachable
}

}  // namespace fastnn
