// fastnn operator registry: the one place where every fastnn:: schema is declared.
//
// Kernels live in csrc/cpu/<op>.cpp and csrc/cuda/<op>.cu and only add
// implementations with TORCH_LIBRARY_IMPL(fastnn, CPU|CUDA, m). The forward ops are
// differentiable: csrc/autograd/<op>.cpp registers their Autograd-key kernels, which
// pair each *_forward op with its *_backward op. Python wrappers and fake (meta)
// kernels live in fastnn/_ops.py.
//
// Conventions
//   * Forward and backward are separate, functional ops (no hidden mutation);
//     the only mutating op is relu_forward_, which is declared as such.
//   * `reduction` follows at::Reduction: 0 = none, 1 = mean, 2 = sum.
//   * Loss inputs are (N, C), (C) or (N, C, d1, ...), targets (N), () or (N, d1, ...).
//   * Ops never allocate outside PyTorch's allocator and never synchronise the
//     host, so every op can be captured in a CUDA graph.
//   * Tensors are dense (strided). Sparse, mkldnn, quantized and nested tensors are
//     refused by name (end of this file), not with the dispatcher's "could not run".
#include <c10/core/DispatchKeySet.h>
#include <torch/library.h>

#include <string>

TORCH_LIBRARY(fastnn, m) {
  // Linear: y = x @ W^T + b.  x (*, in), W (out, in), b (out) -> y (*, out).
  m.def("linear_forward(Tensor input, Tensor weight, Tensor? bias) -> Tensor");
  // Returns (grad_input, grad_weight, grad_bias); an entry is None when its
  // output_mask entry is false (and grad_bias is None when there is no bias).
  m.def(
      "linear_backward(Tensor grad_output, Tensor input, Tensor weight, bool[3] output_mask)"
      " -> (Tensor?, Tensor?, Tensor?)");

  // ReLU: y = max(x, 0), NaN propagates. Backward as native threshold_backward:
  // dx = (y <= 0) ? 0 : dy (so the gradient passes where y is NaN).
  m.def("relu_forward(Tensor input) -> Tensor");
  m.def("relu_forward_(Tensor(a!) input) -> ()");
  m.def("relu_backward(Tensor grad_output, Tensor output) -> Tensor");

  // LogSoftmax over `dim`: y = x - max - log(sum(exp(x - max))).
  // Backward from the saved output: dx = dy - exp(y) * sum(dy).
  m.def("log_softmax_forward(Tensor input, int dim) -> Tensor");
  m.def("log_softmax_backward(Tensor grad_output, Tensor output, int dim) -> Tensor");

  // NLLLoss with native semantics. Returns (loss, total_weight); total_weight is
  // the 0-dim sum of the weights of the non-ignored targets, in the input's dtype but
  // float32 for float16 / bfloat16 (where native's overflows; loss_shapes.h).
  m.def(
      "nll_loss_forward(Tensor input, Tensor target, Tensor? weight, int reduction, int ignore_index)"
      " -> (Tensor, Tensor)");
  m.def(
      "nll_loss_backward(Tensor grad_output, Tensor input, Tensor target, Tensor? weight,"
      " int reduction, int ignore_index, Tensor total_weight) -> Tensor");

  // Fused cross-entropy = log_softmax over dim 1 + NLL, for class-index targets, with
  // native's label smoothing: (1 - eps) * NLL + eps / C * (-sum_c w[c] log_softmax[c]).
  // Returns (loss, lse, total_weight); lse holds each row's log-sum-exp as the pair
  // (max, log(sum(exp(x - max)))) (target's shape plus a last dim of 2), so backward
  // can form the softmax, rounded as log_softmax's, without saving log-probs.
  m.def(
      "cross_entropy_forward(Tensor input, Tensor target, Tensor? weight, int reduction,"
      " int ignore_index, float label_smoothing=0.0) -> (Tensor, Tensor, Tensor)");
  m.def(
      "cross_entropy_backward(Tensor grad_output, Tensor input, Tensor target, Tensor? weight,"
      " int reduction, int ignore_index, Tensor lse, Tensor total_weight,"
      " float label_smoothing=0.0) -> Tensor");
}

// ----------------------------------------------------------------------- other layouts
// fastnn's kernels take dense (strided) tensors. An op called with a tensor of another
// layout lands on that layout's dispatch key; this kernel, registered there for every op,
// says what to do instead.
namespace {

constexpr const char* kOps[] = {
    "linear_forward",      "linear_backward",      "relu_forward",       "relu_forward_",
    "relu_backward",       "log_softmax_forward",  "log_softmax_backward", "nll_loss_forward",
    "nll_loss_backward",   "cross_entropy_forward", "cross_entropy_backward"};

void refuse_layout(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack*) {
  const c10::DispatchKey key = keys.highestPriorityTypeId();
  const std::string name = c10::toString(key);
  const char* kind = "a sparse";
  const char* fix = ".to_dense()";
  if (name.find("Mkldnn") != std::string::npos) {
    kind = "an mkldnn";
  } else if (name.find("Quantized") != std::string::npos) {
    kind = "a quantized";
    fix = ".dequantize()";
  } else if (name.find("Nested") != std::string::npos) {
    kind = "a nested";
    fix = ".unbind() and one call per component";
  }
  TORCH_CHECK_NOT_IMPLEMENTED(false, op.schema().name(), ": got ", kind, " tensor (", name,
                              "); fastnn's kernels take dense (strided) tensors. Convert it with ",
                              fix, ", or use the torch.nn.functional op.");
}

void refuse_all(torch::Library& m) {
  for (const char* op : kOps) {
    m.impl(op, torch::CppFunction::makeFromBoxedFunction<&refuse_layout>());
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(fastnn, SparseCPU, m) { refuse_all(m); }
TORCH_LIBRARY_IMPL(fastnn, SparseCUDA, m) { refuse_all(m); }
TORCH_LIBRARY_IMPL(fastnn, SparseCsrCPU, m) { refuse_all(m); }
TORCH_LIBRARY_IMPL(fastnn, SparseCsrCUDA, m) { refuse_all(m); }
TORCH_LIBRARY_IMPL(fastnn, MkldnnCPU, m) { refuse_all(m); }
TORCH_LIBRARY_IMPL(fastnn, QuantizedCPU, m) { refuse_all(m); }
TORCH_LIBRARY_IMPL(fastnn, QuantizedCUDA, m) { refuse_all(m); }
TORCH_LIBRARY_IMPL(fastnn, NestedTensorCPU, m) { refuse_all(m); }
TORCH_LIBRARY_IMPL(fastnn, NestedTensorCUDA, m) { refuse_all(m); }
