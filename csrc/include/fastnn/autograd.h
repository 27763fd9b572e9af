// Shared pieces of fastnn's autograd layer (csrc/autograd/*.cpp).
//
// Each differentiable fastnn op (the *_forward ops and relu_forward_) has a kernel
// under the Autograd dispatch key. It runs the op's device kernel below autograd
// and, when a graph must be recorded, wraps the call in a torch::autograd::Function
// whose backward calls the matching *_backward op. The graph is built in C++, as
// for native ops: no Python runs per call or per backward node. The *_backward ops have
// Autograd kernels too, which make their results once-differentiable (below).
// torch.func's differentiating transforms refuse C++ Functions; under them fastnn/_func.py
// applies the same ops through Python autograd Functions instead.
#pragma once

#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
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

// Forward-mode AD (dual tensors: torch.autograd.forward_ad; torch.func.jvp and jacfwd go
// through fastnn/_func.py) is not implemented for fastnn's ops. Each forward kernel refuses
// it by name, rather than letting torch::autograd::Function's generic message out (or,
// where no graph is recorded, returning an output without its tangent).
template <typename... Ts>
inline void check_no_forward_ad(const char* op, const Ts&... tensors) {
  TORCH_CHECK(!(torch::autograd::isFwGradDefined(tensors) || ...), "fastnn.", op,
              ": forward-mode AD (torch.autograd.forward_ad, torch.func.jvp, jacfwd) is not "
              "supported. Use the torch.nn.functional op where forward-mode derivatives are "
              "needed.");
}

// As natively, the losses are not differentiable in their class weights: a weight that
// asks for a gradient is refused rather than silently given none.
inline void check_weight_not_differentiable(const char* op,
                                            const std::optional<at::Tensor>& weight) {
  TORCH_CHECK(!needs_graph(weight), "fastnn.", op,
              ": the loss is not differentiable with respect to `weight`, so `weight` cannot "
              "have requires_grad=True. Pass `weight.detach()`, or call it under "
              "torch.no_grad().");
}

// An optional tensor from a saved variable (undefined when the forward had none).
inline std::optional<at::Tensor> optional_of(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// Runs `f` (a call of fastnn ops) below the Autograd and ADInplaceOrView keys: straight
// to the device kernels, recording no graph.
template <class F>
inline auto below_autograd(F&& f) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return f();
}

inline void append_input(variable_list& list, const at::Tensor& t) { list.push_back(t); }
inline void append_input(variable_list& list, const std::optional<at::Tensor>& t) {
  list.push_back(t.value_or(at::Tensor()));
}

// fastnn's backward ops are not differentiable. Each has an Autograd kernel that runs it
// below autograd and passes its results through here along with the op's tensor inputs.
// Forward-mode AD through them (e.g. jacfwd of a grad) is refused as in the forward ops.
// When a graph would be recorded (grad mode on and an input requiring grad: backward with
// create_graph=True, or any torch.func.grad, which always differentiates with a graph) the
// results would otherwise count as constants in a second differentiation, a silently wrong
// zero; instead their history is an Error node, so that differentiating them again raises,
// naming the op. The node's edges lead to the op's inputs: a differentiation towards any
// leaf upstream (torch.autograd.grad, torch.func.grad) reaches it. (Python's
// @once_differentiable links its error node to fresh leaves, which such a differentiation
// skips.) Otherwise (the usual case) the results pass through untouched.
template <typename... Ts>
inline variable_list once_differentiable(variable_list grads, const char* op,
                                         const Ts&... inputs) {
  check_no_forward_ad(op, inputs...);
  if (!needs_graph(inputs...)) return grads;
  const size_t n = grads.size();
  // DelayedError returns aliases of its arguments whose history is one Error node with
  // edges to the arguments' own histories: the grads (which have none) and the inputs.
  variable_list args = std::move(grads);
  (append_input(args, inputs), ...);
  torch::autograd::DelayedError error(
      std::string("fastnn.") + op +
          ": double backward (a gradient of a gradient) is not supported: fastnn's backward "
          "kernels are not differentiable. Use the torch.nn.functional op where higher-order "
          "gradients are needed.",
      static_cast<int64_t>(args.size()));
  variable_list out = error.apply(std::move(args));
  out.resize(n);
  return out;
}

}  // namespace fastnn::autograd
