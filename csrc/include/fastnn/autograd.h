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

}  // namespace fastnn::autograd
