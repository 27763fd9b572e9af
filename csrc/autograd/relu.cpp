// fastnn ReLU under autograd: the Autograd-key kernels of fastnn::relu_forward, the
// in-place fastnn::relu_forward_ and fastnn::relu_backward.
//
// Forward:  y = max(x, 0)                  any shape; in place: x is overwritten
// Backward: dx = (y <= 0) ? 0 : dy         as native threshold_backward, from y
// Double backward: dx is linear in dy with a mask fixed by y, so the gradient towards dy
//           is relu_backward(g, y), and y gets zeros (as natively: the mask's derivative
//           is zero almost everywhere).
// Forward mode: y_t = relu_backward(x_t, x) (the same mask); for the backward op,
//           dx_t = relu_backward(dy_t, y). In place, the out-of-place op's result (with
//           its tangent, masked from y as x is overwritten) is copied back into x, so that
//           copy_ carries the tangent.
// Saved for backward: the output y only (for the in-place form, the overwritten x),
// so the input can be freed. The device kernels are in csrc/cpu/relu.cpp and
// csrc/cuda/relu.cu.
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros_like.h>
#include <torch/csrc/autograd/VariableTypeUtils.h>
#include <torch/library.h>

#include "fastnn/autograd.h"
#include "fastnn/ops.h"

namespace fastnn {
namespace {

using autograd::AutogradContext;
using autograd::variable_list;

variable_list relu_grad(AutogradContext* ctx, const variable_list& grads) {
  return {ops::relu_backward(grads[0], ctx->get_saved_variables()[0])};
}

struct ReLUFunction : public autograd::Function<ReLUFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor output = ops::relu_forward(input);
    ctx->save_for_backward({output});
    return output;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return relu_grad(ctx, grads);
  }
};

struct ReLUInplaceFunction : public autograd::Function<ReLUInplaceFunction> {
  // `ctx_out` hands the context back to the caller, which clears its dirty set once
  // apply has used it (see relu_forward_inplace_autograd).
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            AutogradContext** ctx_out) {
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      ops::relu_forward_(input);
    }
    ctx->mark_dirty({input});  // also bumps input's version counter
    ctx->save_for_backward({input});
    *ctx_out = ctx;
    return input;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto out = relu_grad(ctx, grads);
    out.emplace_back();  // no gradient for ctx_out
    return out;
  }
};

at::Tensor relu_forward_autograd(const at::Tensor& input);

// y = relu(x) for a dual x, with tangent y_t = relu_backward(x_t, mask source). The mask
// is read from x (x <= 0 exactly where y <= 0, NaN included) rather than from y: a
// tangent whose node saved y would keep y alive through y's own tangent, a reference
// cycle until the dual level ends (as native relu has). Only the in-place form, which
// overwrites x, takes it from y.
at::Tensor relu_dual(const at::Tensor& input, bool mask_from_output) {
  const at::Tensor x = autograd::primal(input);
  at::Tensor output = relu_forward_autograd(x);
  autograd::set_tangent(output, ops::relu_backward(autograd::tangent(input),
                                                   mask_from_output ? output : x));
  return output;
}

at::Tensor relu_forward_autograd(const at::Tensor& input) {
  if (autograd::has_tangent(input)) return relu_dual(input, /*mask_from_output=*/false);
  if (!autograd::needs_graph(input)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return ops::relu_forward(input);
  }
  return ReLUFunction::apply(input);
}

void relu_forward_inplace_autograd(const at::Tensor& input) {
  if (autograd::has_tangent(input)) {
    input.copy_(relu_dual(input, /*mask_from_output=*/true));
    return;
  }
  if (!autograd::needs_graph(input)) {
    at::AutoDispatchBelowAutograd below_autograd;
    ops::relu_forward_(input);  // through relu_forward_inplace_view: bumps the version
    return;
  }
  // As native in-place ops do, refuse a leaf that requires grad (or a view that cannot be
  // rebased) before touching its data.
  torch::autograd::check_inplace(input, /*requires_grad=*/true);
  AutogradContext* ctx = nullptr;
  ReLUInplaceFunction::apply(input, &ctx);
  // apply has bumped input's version and moved its history onto the new node: the dirty
  // set has done its job. Clearing it lets compiled autograd take the node (it refuses a
  // C++ node whose context still lists dirty inputs); eager backward never reads it.
  ctx->mark_dirty({});
}

// The ADInplaceOrView kernel of the in-place op. An in-place op bumps its input's version
// counter, as native relu_ does, so that autograd catches a tensor it saved being
// overwritten: here for calls that record no graph, also under torch.inference_mode()
// where the Autograd kernel does not run (inference tensors, which have no version
// counter, skip this key). With a graph, mark_dirty bumps it instead.
void relu_forward_inplace_view(const at::Tensor& input) {
  {
    at::AutoDispatchBelowADInplaceOrView below;
    ops::relu_forward_(input);
  }
  torch::autograd::impl::bump_version(input);
}

struct ReLUBackwardFunction : public autograd::Function<ReLUBackwardFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_output,
                            const at::Tensor& output) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({output});
    return ops::relu_backward(grad_output, output);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor output = ctx->get_saved_variables()[0];
    return {relu_grad(ctx, grads)[0],
            ctx->needs_input_grad(1) ? at::zeros_like(output) : at::Tensor()};
  }
};

at::Tensor relu_backward_autograd(const at::Tensor& grad_output, const at::Tensor& output) {
  if (autograd::has_tangent(grad_output, output)) {
    const at::Tensor y = autograd::primal(output);
    at::Tensor grad_input = relu_backward_autograd(autograd::primal(grad_output), y);
    const at::Tensor dy_t = autograd::tangent(grad_output);
    if (dy_t.defined()) autograd::set_tangent(grad_input, ops::relu_backward(dy_t, y));
    return grad_input;
  }
  if (!autograd::needs_graph(grad_output, output)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return ops::relu_backward(grad_output, output);
  }
  return ReLUBackwardFunction::apply(grad_output, output);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastnn, Autograd, m) {
  m.impl("relu_forward", &relu_forward_autograd);
  m.impl("relu_forward_", &relu_forward_inplace_autograd);
  m.impl("relu_backward", &relu_backward_autograd);
}

TORCH_LIBRARY_IMPL(fastnn, ADInplaceOrView, m) {
  m.impl("relu_forward_", &relu_forward_inplace_view);
}

}  // namespace fastnn
