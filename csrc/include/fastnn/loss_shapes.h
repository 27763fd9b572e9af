// Shape handling (and the 'mean' rule) shared by the NLL and cross-entropy kernels on
// every device.
//
// A loss input is (N, C), (C) or (N, C, d1, ..., dk); its target is (N), () or
// (N, d1, ..., dk). Kernels see the input as a dense [N, C, S] block with
// S = d1 * ... * dk (S = 1 without spatial dims, N = 1 without a batch dim):
//   element (n, c, s) is at n * C * S + c * S + s, and target (n, s) at n * S + s.
#pragma once

#include <ATen/core/Reduction.h>
#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

#include "fastnn/checks.h"

#include <cmath>
#include <vector>

namespace fastnn {

// A loss's 'mean': sum / total weight, and NaN when the total weight is 0 (every position
// ignored, or weighted 0). Native's mean is 0 / 0 there, NaN also when label smoothing
// adds a non-zero term to the sum (which alone would give an infinity).
template <typename A>
C10_HOST_DEVICE inline A mean_of(A sum, A total_weight) {
  return total_weight == A(0) ? A(NAN) : sum / total_weight;
}

struct LossShape {
  int64_t N;  // batch (1 for a (C) input)
  int64_t C;  // classes
  int64_t S;  // spatial positions per sample (1 for (N, C) and (C))
};

inline LossShape check_loss_inputs(const char* op, const at::Tensor& input,
                                   const at::Tensor& target,
                                   const c10::optional<at::Tensor>& weight, int64_t reduction) {
  check_floating(op, "input", input);
  TORCH_CHECK(target.scalar_type() == at::kLong, "fastnn::", op,
              ": `target` must hold class indices as int64 (torch.long), got dtype ",
              target.scalar_type(), "; convert it with `target.long()`.");
  check_same_device(op, "target", target, "input", input);
  TORCH_CHECK(reduction >= at::Reduction::None && reduction <= at::Reduction::Sum, "fastnn::", op,
              ": reduction must be 0 (none), 1 (mean) or 2 (sum), got ", reduction, ".");
  TORCH_CHECK_VALUE(input.dim() >= 1, "fastnn::", op,  // a ValueError, as native nll_loss's
                    ": `input` must be (C), (N, C) or (N, C, d1, ...), got a 0-d tensor.");

  LossShape s{1, 0, 1};
  if (input.dim() == 1) {
    s.C = input.size(0);
    TORCH_CHECK_VALUE(target.dim() == 0, "fastnn::", op, ": for an input of shape ",
                      input.sizes(), " (no batch dim) `target` must be 0-d, got shape ",
                      target.sizes(), ".");
  } else {
    s.N = input.size(0);
    s.C = input.size(1);
    // A batch-size mismatch is a ValueError, other shape mismatches RuntimeErrors, as natively.
    TORCH_CHECK_VALUE(target.dim() == 0 || target.size(0) == s.N, "fastnn::", op,
                      ": `input` has batch size ", s.N, " but `target` has batch size ",
                      target.size(0), "; they must match.");
    bool ok = target.dim() == input.dim() - 1;
    for (int64_t d = 2; ok && d < input.dim(); ++d) {
      ok = target.size(d - 1) == input.size(d);
      s.S *= input.size(d);
    }
    TORCH_CHECK(ok, "fastnn::", op, ": `target` of shape ", target.sizes(),
                " does not match `input` of shape ", input.sizes(),
                "; expected the input's shape without its class dim (dim 1).");
  }
  TORCH_CHECK(s.C > 0 || s.N * s.S == 0, "fastnn::", op,
              ": `input` has no classes (C = 0) but a non-empty batch.");
  if (weight.has_value() && weight->defined()) {
    check_floating(op, "weight", *weight);
    check_same_dtype(op, "weight", *weight, "input", input);
    check_same_device(op, "weight", *weight, "input", input);
    TORCH_CHECK(weight->dim() == 1 && weight->size(0) == s.C, "fastnn::", op,
                ": `weight` must be 1-D with one entry per class (", s.C, "), got shape ",
                weight->sizes(), ".");
  }
  return s;
}

// A loss forward's total_weight (the sum of the counted targets' class weights, which
// 'mean' divides by) is returned in acc_scalar_type(input): the input's dtype, float32
// for float16 and bfloat16. Native returns it in the input's dtype, where float16
// overflows past 65504 counted targets (a 256 x 256 segmentation map is 65536) and the
// 'mean' gradient silently becomes zero; in float32 it stays exact up to 2^24 targets.
//
// Validates the arguments every loss backward shares (on top of check_loss_inputs):
// grad_output (the target's shape for reduction='none', one value otherwise, of the
// input's dtype) and the forward's 0-dim total_weight (of acc_scalar_type(input)), all
// on the input's device.
inline LossShape check_loss_backward_inputs(const char* op, const at::Tensor& grad_output,
                                            const at::Tensor& input, const at::Tensor& target,
                                            const c10::optional<at::Tensor>& weight,
                                            int64_t reduction, const at::Tensor& total_weight) {
  const LossShape s = check_loss_inputs(op, input, target, weight, reduction);
  check_floating(op, "grad_output", grad_output);
  check_same_dtype(op, "grad_output", grad_output, "input", input);
  check_same_device(op, "grad_output", grad_output, "input", input);
  check_floating(op, "total_weight", total_weight);
  const at::ScalarType tw_type = acc_scalar_type(input.scalar_type());
  TORCH_CHECK(total_weight.scalar_type() == tw_type, "fastnn::", op, ": `total_weight` has dtype ",
              total_weight.scalar_type(), " but must be ", tw_type, " for a ",
              input.scalar_type(), " input, as the loss forward returns it.");
  check_same_device(op, "total_weight", total_weight, "input", input);
  TORCH_CHECK(total_weight.numel() == 1, "fastnn::", op,
              ": `total_weight` must hold one value (the 0-dim tensor the forward returned), "
              "got shape ", total_weight.sizes(), ".");
  if (reduction == at::Reduction::None) {
    check_same_shape(op, "grad_output", grad_output, "target", target);
  } else {
    TORCH_CHECK(grad_output.numel() == 1, "fastnn::", op,
                ": with reduction='mean' or 'sum' `grad_output` must hold one value, got shape ",
                grad_output.sizes(), ".");
  }
  return s;
}

// The cross-entropy forward saves each position's log-sum-exp for the backward as two
// parts, lse[..., 0] = m = max_c x and lse[..., 1] = log(sum_c exp(x - m)), so the
// backward's softmax exp((x - m) - lse[..., 1]) is rounded like native log_softmax's
// output: a single m + log(...) would carry an absolute error of half an ulp of |m|
// (at |x| ~ 100 in float32, ~4e-6: 30x native's error in the gradient).
inline std::vector<int64_t> lse_shape(const at::Tensor& target) {
  std::vector<int64_t> shape = target.sizes().vec();
  shape.push_back(2);
  return shape;
}

// cross_entropy's label_smoothing: the share eps of the loss spread uniformly over the
// classes, in [0, 1] as natively.
inline void check_label_smoothing(const char* op, double label_smoothing) {
  TORCH_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0, "fastnn::", op,
              ": `label_smoothing` must be between 0.0 and 1.0, got ", label_smoothing, ".");
}

inline void check_lse(const char* op, const at::Tensor& lse, const at::Tensor& input,
                      const at::Tensor& target) {
  check_floating(op, "lse", lse);
  check_same_device(op, "lse", lse, "input", input);
  TORCH_CHECK(lse.sizes() == at::IntArrayRef(lse_shape(target)), "fastnn::", op,
              ": `lse` must have the target's shape plus a last dim of 2 (max, log-sum), as "
              "cross_entropy_forward returns it; got shape ", lse.sizes(), " for a target of "
              "shape ", target.sizes(), ".");
  const at::ScalarType lse_type = acc_scalar_type(input.scalar_type());
  TORCH_CHECK(lse.scalar_type() == lse_type, "fastnn::", op, ": `lse` has dtype ",
              lse.scalar_type(), " but must be ", lse_type, " for a ", input.scalar_type(),
              " input, as cross_entropy_forward returns it.");
}

}  // namespace fastnn
