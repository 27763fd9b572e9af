// Shared pieces of fastnn's autograd layer (csrc/autograd/*.cpp).
//
// Each differentiable fastnn op (the *_forward ops and relu_forward_) has a kernel
// under the Autograd dispatch key. It runs the op's device kernel below autograd
// and, when a graph must be recorded, wraps the call in a torch::autograd::Function
// whose backward calls the matching *_backward op. The graph is built in C++, as
// for native ops: no Python runs per call or per backward node. The *_backward ops have
// Autograd kernels too, recording their own Functions, so gradients are differentiable
// again (double backward, Hessians) with the derivatives native uses.
// torch.func's differentiating transforms refuse C++ Functions; under them fastnn/_func.py
// applies the same ops through Python autograd Functions instead.
#pragma once

#include <ATen/TensorOperators.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/functions/utils.h>

#include <optional>
#include <string>
#include <utility>

namespace fastnn::autograd {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The base of fastnn's autograd Functions. Their backwards only call fastnn ops (which
// have fake kernels) on saved tensors and saved ints, so compiled autograd may trace them
// into its graph (is_traceable) rather than run each node eagerly behind a graph break.
template <class T>
struct Function : public torch::autograd::Function<T> {
  static constexpr bool is_traceable = true;
};

inline bool requires_grad(const at::Tensor& t) { return t.defined() && t.requires_grad(); }
inline bool requires_grad(const std::optional<at::Tensor>& t) {
  return t.has_value() && requires_grad(*t);
}

// True when the call has to record a graph: grad mode is on and an input requires grad.
// Otherwise the op runs straight below autograd, with no Function/Node allocated.
template <typename... Ts>
inline bool needs_graph(const Ts&... tensors) {
  return c10::GradMode::is_enabled() && (requires_grad(tensors) || ...);
}

// ---------------------------------------------------------------------- forward-mode AD
// Dual tensors (torch.autograd.forward_ad) carry a tangent at level 0; eager PyTorch has
// one level, and torch.func.jvp / jacfwd go through fastnn/_func.py instead. A kernel that
// gets a dual input runs itself again on the primals (a primal is a differentiable view
// of its dual, so the backward graph is recorded as usual, and torch::autograd::Function,
// which has no forward-mode hook in C++, never sees a tangent), then sets the output's
// tangent: the op's Jacobian applied to the input tangents, computed with fastnn's and
// native ops, which are differentiable themselves (reverse over forward works too).
template <typename... Ts>
inline bool has_tangent(const Ts&... tensors) {
  return (torch::autograd::isFwGradDefined(tensors) || ...);
}

// The primal of a dual tensor; any other tensor as it is.
inline at::Tensor primal(const at::Tensor& t) {
  return torch::autograd::isFwGradDefined(t) ? t._fw_primal(0) : t;
}
inline std::optional<at::Tensor> primal(const std::optional<at::Tensor>& t) {
  return t.has_value() ? std::optional<at::Tensor>(primal(*t)) : std::nullopt;
}

// The tangent of a dual tensor; undefined (a zero tangent) for any other.
inline at::Tensor tangent(const at::Tensor& t) {
  return t.defined() ? t._fw_grad(0) : at::Tensor();
}
inline at::Tensor tangent(const std::optional<at::Tensor>& t) {
  return t.has_value() ? tangent(*t) : at::Tensor();
}

// Makes `output` a dual tensor with tangent `t` (a zero tangent when t is undefined).
inline void set_tangent(const at::Tensor& output, const at::Tensor& t) {
  if (t.defined()) output._set_fw_grad(t, /*level=*/0, /*is_inplace_op=*/false);
}

// Forward over reverse (a gradient's tangent, e.g. torch.autograd.functional.hessian with
// outer_jacobian_strategy="forward-mode") needs the tensors a node saved to carry their
// tangents, as native nodes' saved tensors do: F::apply ran on the primals and saved them
// without. This makes the node that apply recorded for `output` save `to_save` instead:
// the same list, built from the dual inputs and from outputs whose tangents are now set.
// (apply itself saves through the same public CppNode::save_variables_to_ctx, last. So a
// saved-tensor pack hook runs for both lists, in this dual path only.)
template <class F>
void save_duals(const at::Tensor& output, variable_list to_save) {
  auto* node = dynamic_cast<torch::autograd::CppNode<F>*>(output.grad_fn().get());
  if (node == nullptr) return;  // no graph was recorded
  node->ctx_.save_for_backward(std::move(to_save));
  node->save_variables_to_ctx();
}

// a + b where either may be undefined (a zero tangent).
inline at::Tensor add_tangents(const at::Tensor& a, const at::Tensor& b) {
  if (!a.defined()) return b;
  if (!b.defined()) return a;
  return a + b;
}

// As natively, the losses are not differentiable in their class weights: a weight that
// asks for a gradient is refused rather than silently given none. A dual weight is refused
// too (stricter than native, which drops its tangent).
inline void check_weight_not_differentiable(const char* op,
                                            const std::optional<at::Tensor>& weight) {
  TORCH_CHECK(!needs_graph(weight), "fastnn.", op,
              ": the loss is not differentiable with respect to `weight`, so `weight` cannot "
              "have requires_grad=True. Pass `weight.detach()`, or call it under "
              "torch.no_grad().");
  TORCH_CHECK(!has_tangent(weight), "fastnn.", op,
              ": the loss is not differentiable with respect to `weight`, so `weight` cannot "
              "be a dual tensor. Pass its primal (torch.autograd.forward_ad.unpack_dual(weight)"
              ".primal).");
}

// An optional tensor from a saved variable (undefined when the forward had none).
inline std::optional<at::Tensor> optional_of(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

}  // namespace fastnn::autograd
