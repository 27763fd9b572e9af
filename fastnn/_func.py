"""fastnn's ops under torch.func transforms (grad, vjp, jacrev, vmap, functionalize and their
compositions).

Ordinary calls record fastnn's autograd graph in C++ (csrc/autograd/), through
``torch::autograd::Function``, which functorch's differentiating transforms refuse ("cannot
use C++ torch::autograd::Function with functorch transforms"). While one is active (grad,
vjp, jacrev, jvp, jacfwd), the Python entry points in ``_ops.py`` apply the same forward and
backward ops through the Python ``torch.autograd.Function`` classes below instead, which
functorch supports. Under vmap or functionalize alone the ops run as usual. Outside
transforms nothing here runs: the check costs one C call per op. (In-place ReLU under any
transform is computed out of place and copied back: functorch runs no custom op in place.)

vmap: each op but the in-place ReLU has a batching rule. Elementwise and row-wise ops
(ReLU, LogSoftmax, and Linear over a batch of inputs with shared weights) run once on the
whole batch. The others run once per sample and stack the results, as PyTorch's generic
fallback does, without its warning: the losses, Linear with batched weights or bias, and
Linear's backward (always: its per-sample weight gradients are separate products).

Gradients of gradients work (the backward ops have their own Functions below, with the
C++ layer's derivatives). Not supported, as in the C++ layer: forward-mode AD (jvp, jacfwd).
``torch.compile`` of a function that applies a differentiating transform to fastnn ops
runs it eagerly behind a graph break (``fullgraph=True`` raises): Dynamo traces the
transform itself, without this switch, and meets the C++ Functions. vmap alone compiles.
"""
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

_ops = torch.ops.fastnn

any_transform_active: Callable[[], bool] = torch._C._are_functorch_transforms_active
_DIFFERENTIATING = (torch._C._functorch.TransformType.Grad, torch._C._functorch.TransformType.Jvp)


def differentiating_transform_active() -> bool:
    """True while a differentiating transform (grad, vjp, jacrev, jvp, jacfwd) is active.

    Only those refuse the C++ autograd Functions; under vmap or functionalize alone the ops
    run as usual (vmap through the rules below). The common case, no transform at all,
    costs one C call."""
    return any_transform_active() and any(
        i.key() in _DIFFERENTIATING for i in torch._C._functorch.get_interpreter_stack())


# ----------------------------------------------------------------------------- autograd

class _Function(torch.autograd.Function):
    """Their base: vmap through the ops' batching rules; no forward-mode AD."""
    generate_vmap_rule = True

    @staticmethod
    def jvp(ctx, *tangents):
        raise NotImplementedError(
            "fastnn: forward-mode AD (torch.func.jvp, jacfwd, torch.autograd.forward_ad) is not "
            "supported. Use the torch.nn.functional ops where forward-mode derivatives are "
            "needed.")


class _Linear(_Function):
    """y = x W^T + b; dx = dy W, dW = dy^T x, db = sum(dy) (each only when asked for)."""

    @staticmethod
    def forward(input, weight, bias):
        return _ops.linear_forward.default(input, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        # As in the C++ Function: x only for dW, W only for dx.
        input, weight, bias = inputs
        need = ctx.needs_input_grad
        ctx.save_for_backward(input if need[1] else None, weight if need[0] else None)
        ctx.has_bias = bias is not None
        ctx.in_features = weight.shape[1]

    @staticmethod
    def backward(ctx, grad):
        input, weight = ctx.saved_tensors
        if input is None:  # stand-ins whose data linear_backward does not read
            input = grad.new_empty(()).expand(*grad.shape[:-1], ctx.in_features)
        if weight is None:
            weight = grad.new_empty(()).expand(grad.shape[-1], ctx.in_features)
        need = ctx.needs_input_grad
        mask = [need[0], need[1], ctx.has_bias and need[2]]
        return _LinearBackward.apply(grad, input, weight, mask)


class _ReLU(_Function):
    """y = max(x, 0); dx = (y <= 0) ? 0 : dy."""

    @staticmethod
    def forward(input):
        return _ops.relu_forward.default(input)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad):
        (output,) = ctx.saved_tensors
        return _ReLUBackward.apply(grad, output)


class _LogSoftmax(_Function):
    """y = x - logsumexp(x, dim); dx = dy - exp(y) * sum(dy, dim)."""

    @staticmethod
    def forward(input, dim):
        return _ops.log_softmax_forward.default(input, dim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.dim = inputs[1]

    @staticmethod
    def backward(ctx, grad):
        (output,) = ctx.saved_tensors
        return _LogSoftmaxBackward.apply(grad, output, ctx.dim), None


class _Loss(_Function):
    """Base of the two losses: forward returns (loss, *saved side outputs), only the loss
    differentiable; backward maps the loss gradient to the input gradient."""

    @staticmethod
    def setup_context(ctx, inputs, outputs):
        input, target, weight, reduction, ignore_index, *options = inputs
        ctx.mark_non_differentiable(*outputs[1:])
        ctx.save_for_backward(input, target, weight, *outputs[1:])
        ctx.reduction, ctx.ignore_index, ctx.options = reduction, ignore_index, options


class _NLLLoss(_Loss):
    """loss = -w[t] x[t] (reduced); dx[t] = -w[t] dloss (/ total weight for 'mean')."""

    @staticmethod
    def forward(input, target, weight, reduction, ignore_index):
        return _ops.nll_loss_forward.default(input, target, weight, reduction, ignore_index)

    @staticmethod
    def backward(ctx, grad, _grad_total_weight):
        input, target, weight, total_weight = ctx.saved_tensors
        dx = _NLLLossBackward.apply(grad, input, target, weight, ctx.reduction,
                                            ctx.ignore_index, total_weight)
        return dx, None, None, None, None


class _CrossEntropy(_Loss):
    """loss = w[t] (logsumexp(x) - x[t]) (reduced); dx = w[t] (softmax(x) - onehot(t)) dloss
    (label smoothing: see csrc/cpu/cross_entropy.cpp)."""

    @staticmethod
    def forward(input, target, weight, reduction, ignore_index, label_smoothing):
        return _ops.cross_entropy_forward.default(input, target, weight, reduction, ignore_index,
                                                  label_smoothing)

    @staticmethod
    def backward(ctx, grad, _grad_lse, _grad_total_weight):
        input, target, weight, lse, total_weight = ctx.saved_tensors
        dx = _CrossEntropyBackward.apply(grad, input, target, weight, ctx.reduction,
                                                 ctx.ignore_index, lse, total_weight,
                                                 *ctx.options)
        return dx, None, None, None, None, None


# The backward ops, differentiable again (gradients of gradients: a nested torch.func.grad,
# jacrev of grad, hessian-vector products); the same derivatives as the C++ layer's
# *BackwardFunction (csrc/autograd/).

class _LinearBackward(_Function):
    """(dx, dW, db) = (dy W, dy^T x, sum dy), each only when asked for (else None)."""

    @staticmethod
    def forward(grad, input, weight, mask):
        return _ops.linear_backward.default(grad, input, weight, mask)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad, input, weight, mask = inputs
        ctx.save_for_backward(grad, input, weight)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, gdx, gdw, gdb):
        dy, input, weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        g_dy = g_x = g_w = None
        if need[0]:
            if gdw is not None:
                g_dy = _Linear.apply(input, gdw, gdb)
            elif gdb is not None:
                g_dy = gdb.expand(dy.shape)
            if gdx is not None:
                t = _Linear.apply(gdx, weight, None)
                g_dy = t if g_dy is None else g_dy + t
        if need[1] and gdw is not None:
            g_x = _LinearBackward.apply(dy, input, gdw, [True, False, False])[0]
        if need[2] and gdx is not None:
            g_w = _LinearBackward.apply(dy, gdx, weight, [False, True, False])[1]
        return g_dy, g_x, g_w, None


class _ReLUBackward(_Function):
    """dx = (y <= 0) ? 0 : dy: linear in dy, no gradient towards y."""

    @staticmethod
    def forward(grad, output):
        return _ops.relu_backward.default(grad, output)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])

    @staticmethod
    def backward(ctx, gg):
        (output,) = ctx.saved_tensors
        zeros = torch.zeros_like(output) if ctx.needs_input_grad[1] else None
        return _ReLUBackward.apply(gg, output), zeros


class _LogSoftmaxBackward(_Function):
    """dx = dy - exp(y) sum(dy); native's double-backward formulas."""

    @staticmethod
    def forward(grad, output, dim):
        return _ops.log_softmax_backward.default(grad, output, dim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], inputs[1])
        ctx.dim = inputs[2]

    @staticmethod
    def backward(ctx, gg):
        dy, y = ctx.saved_tensors
        p = y.exp()
        return (gg - (gg * p).sum(ctx.dim, keepdim=True),
                -(dy.sum(ctx.dim, keepdim=True) * p * gg), None)


class _NLLLossBackward(_Function):
    """dx = -w[t] dy at the targets: linear in dy, constant in x (zero gradient)."""

    @staticmethod
    def forward(grad, input, target, weight, reduction, ignore_index, total_weight):
        return _ops.nll_loss_backward.default(grad, input, target, weight, reduction,
                                              ignore_index, total_weight)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad, input, target, weight, reduction, ignore_index, total_weight = inputs
        ctx.save_for_backward(target, weight, input)
        ctx.reduction, ctx.ignore_index = reduction, ignore_index

    @staticmethod
    def backward(ctx, gg):
        target, weight, input = ctx.saved_tensors
        g = _NLLLoss.apply(gg, target, weight, ctx.reduction, ctx.ignore_index)[0]
        zeros = torch.zeros_like(input) if ctx.needs_input_grad[1] else None
        return g, zeros, None, None, None, None, None


class _CrossEntropyBackward(_Function):
    """dx = soft p - hot onehot - uni w (csrc/cpu/cross_entropy.cpp); towards dy the
    per-unit gradient summed against gg, towards x soft * p * (gg - sum(gg * p))."""

    @staticmethod
    def forward(grad, input, target, weight, reduction, ignore_index, lse, total_weight,
                label_smoothing=0.0):
        return _ops.cross_entropy_backward.default(grad, input, target, weight, reduction,
                                                   ignore_index, lse, total_weight,
                                                   label_smoothing)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad, input, target, weight, reduction, ignore_index, lse, total_weight, *eps = inputs
        ctx.save_for_backward(grad, input, target, weight, lse, total_weight)
        ctx.reduction, ctx.ignore_index = reduction, ignore_index
        ctx.eps = eps[0] if eps else 0.0

    @staticmethod
    def backward(ctx, gg):
        g, x, t, w, lse, total_weight = ctx.saved_tensors
        cd = 0 if x.dim() == 1 else 1
        need = ctx.needs_input_grad
        g_dy = g_x = None
        if need[0]:
            per_unit = _CrossEntropyBackward.apply(torch.ones_like(g), x, t, w, ctx.reduction,
                                                   ctx.ignore_index, lse, total_weight, ctx.eps)
            g_dy = (gg * per_unit).sum(cd) if ctx.reduction == 0 else (gg * per_unit).sum()
        if need[1]:
            keep = t != ctx.ignore_index
            soft = g / total_weight if ctx.reduction == 1 else g
            if w is not None:
                wt = w[t.masked_fill(~keep, 0)] * (1.0 - ctx.eps)
                if ctx.eps != 0:
                    wt = wt + w.sum() * (ctx.eps / x.shape[cd])
                soft = soft * wt
            p = torch.softmax(x, cd)
            soft = soft if soft.dim() == 0 else soft.unsqueeze(cd)
            dx2 = soft * p * (gg - (gg * p).sum(cd, keepdim=True))
            g_x = torch.where(keep.unsqueeze(cd), dx2, torch.zeros_like(dx2))
        return (g_dy, g_x) + (None,) * 7


def _check_weight(op: str, weight: Optional[Tensor]) -> None:
    # The same refusal as the C++ layer's check_weight_not_differentiable.
    if weight is not None and weight.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(
            f"fastnn.{op}: the loss is not differentiable with respect to `weight`, so `weight` "
            f"cannot have requires_grad=True. Pass `weight.detach()`, or call it under "
            f"torch.no_grad().")


def linear(input, weight, bias):
    return _Linear.apply(input, weight, bias)


def relu(input):
    return _ReLU.apply(input)


def log_softmax(input, dim):
    return _LogSoftmax.apply(input, dim)


def nll_loss(input, target, weight, reduction, ignore_index):
    _check_weight("nll_loss", weight)
    return _NLLLoss.apply(input, target, weight, reduction, ignore_index)


def cross_entropy(input, target, weight, reduction, ignore_index, label_smoothing):
    _check_weight("cross_entropy", weight)
    return _CrossEntropy.apply(input, target, weight, reduction, ignore_index, label_smoothing)


# ----------------------------------------------------------------------------- vmap rules
# A rule gets the physical tensors (batch dimension in place, at in_dims[i], or None where
# an argument is not batched) and returns (outputs, out_dims).

def _batch_first(t: Tensor, bdim: Optional[int], batch_size: int) -> Tensor:
    return t.movedim(bdim, 0) if bdim is not None else t.expand(batch_size, *t.shape)


def _meta_sample(a, bdim: Optional[int]):
    """A meta tensor shaped like one sample of `a` (non-tensors as they are)."""
    if not isinstance(a, Tensor):
        return a
    shape = a.shape if bdim is None else a.shape[:bdim] + a.shape[bdim + 1:]
    return torch.empty(shape, dtype=a.dtype, device="meta")


def _per_sample(op, info, in_dims: Sequence[Optional[int]], *args):
    """One call per sample, outputs stacked along dim 0 (None outputs stay None). An empty
    batch calls the op once on meta tensors (its fake kernel), for the outputs' shapes."""
    if info.batch_size == 0:
        device = next(a.device for a in args if isinstance(a, Tensor))
        results = [op(*(_meta_sample(a, d) for a, d in zip(args, in_dims)))]

        def stack(ts):
            return torch.empty((0, *ts[0].shape), dtype=ts[0].dtype, device=device)
    else:
        results = [op(*(a.select(d, i) if isinstance(a, Tensor) and d is not None else a
                        for a, d in zip(args, in_dims)))
                   for i in range(info.batch_size)]
        stack = torch.stack
    if isinstance(results[0], Tensor):
        return stack(results), 0
    outs = tuple(None if first is None else stack([r[k] for r in results])
                 for k, first in enumerate(results[0]))
    return outs, tuple(None if o is None else 0 for o in outs)


def _softmax_dim(dim: int, sample_ndim: int) -> Optional[int]:
    """dim as an index into a sample's dimensions; None where one batched call cannot take
    it: 0-d samples, or a dim out of range (the per-sample call then reports it)."""
    return dim % sample_ndim if -sample_ndim <= dim < sample_ndim else None


def _vmap_relu_forward(info, in_dims, input):
    return _ops.relu_forward.default(input), in_dims[0]


def _vmap_relu_backward(info, in_dims, grad_output, output):
    b = info.batch_size
    return _ops.relu_backward.default(_batch_first(grad_output, in_dims[0], b),
                                      _batch_first(output, in_dims[1], b)), 0


def _vmap_log_softmax_forward(info, in_dims, input, dim):
    d = _softmax_dim(dim, input.dim() - 1)
    if d is None:
        return _per_sample(_ops.log_softmax_forward.default, info, in_dims, input, dim)
    return _ops.log_softmax_forward.default(input.movedim(in_dims[0], 0), d + 1), 0


def _vmap_log_softmax_backward(info, in_dims, grad_output, output, dim):
    d = _softmax_dim(dim, output.dim() - (in_dims[1] is not None))
    if d is None:
        return _per_sample(_ops.log_softmax_backward.default, info, in_dims, grad_output,
                           output, dim)
    b = info.batch_size
    return _ops.log_softmax_backward.default(_batch_first(grad_output, in_dims[0], b),
                                             _batch_first(output, in_dims[1], b), d + 1), 0


def _vmap_linear_forward(info, in_dims, input, weight, bias):
    x_dim, w_dim, b_dim = in_dims
    if x_dim is not None and w_dim is None and b_dim is None:
        # A batch of inputs through one layer: the batch becomes one more leading dimension.
        return _ops.linear_forward.default(input.movedim(x_dim, 0), weight, bias), 0
    return _per_sample(_ops.linear_forward.default, info, in_dims, input, weight, bias)


def _per_sample_rule(op):
    return lambda info, in_dims, *args: _per_sample(op, info, in_dims, *args)


_RULES = {
    "linear_forward": _vmap_linear_forward,
    "relu_forward": _vmap_relu_forward,
    "relu_backward": _vmap_relu_backward,
    "log_softmax_forward": _vmap_log_softmax_forward,
    "log_softmax_backward": _vmap_log_softmax_backward,
}
for _name in ("linear_backward", "nll_loss_forward", "nll_loss_backward",
              "cross_entropy_forward", "cross_entropy_backward"):
    _RULES[_name] = _per_sample_rule(getattr(_ops, _name).default)

for _name, _rule in _RULES.items():
    torch.library.register_vmap(f"fastnn::{_name}", _rule)
