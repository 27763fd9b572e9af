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
C++ layer's derivatives), and so does forward mode (jvp, jacfwd, and so hessian, which is
jacfwd of jacrev): each Function has a ``jvp`` with the C++ layer's tangent formulas,
computed through these Functions again so that tangents stay differentiable.
``torch.compile`` of a function that applies grad, vjp, jacrev or hessian to fastnn ops runs
it eagerly behind a graph break (``fullgraph=True`` raises): Dynamo traces the transform
itself and meets the C++ Functions. vmap, jvp and jacfwd compile whole.
"""
import contextlib
import functools
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor
from torch._functorch.pyfunctorch import temporarily_pop_interpreter_stack

_ops = torch.ops.fastnn

any_transform_active: Callable[[], bool] = torch._C._are_functorch_transforms_active
_JVP = torch._C._functorch.TransformType.Jvp
_DIFFERENTIATING = (torch._C._functorch.TransformType.Grad, _JVP)


@torch.compiler.assume_constant_result
def differentiating_transform_active() -> bool:
    """True while a differentiating transform (grad, vjp, jacrev, jvp, jacfwd) is active.

    Only those refuse the C++ autograd Functions; under vmap or functionalize alone the ops
    run as usual (vmap through the rules below). The common case, no transform at all,
    costs one C call. Dynamo cannot trace the interpreter-stack query, so under
    torch.compile the answer is taken at trace time as a constant: a compiled vmap of
    fastnn ops then traces whole. (A compiled function called from inside an eager
    transform is not traced there: Dynamo runs it eagerly, and this runs for real.)"""
    return any_transform_active() and any(
        i.key() in _DIFFERENTIATING for i in torch._C._functorch.get_interpreter_stack())


# ----------------------------------------------------------------------------- autograd

class _Function(torch.autograd.Function):
    """Their base: vmap through the ops' batching rules."""
    generate_vmap_rule = True


def _save(ctx, *tensors) -> None:
    """Saves the tensors for both backward and jvp. The lists must be the same: vmap's
    generated rules keep one record of the saved tensors' batch dims, the last saved.
    (Unlike the C++ layer, Linear keeps both x and W: its jvp reads both.)"""
    ctx.save_for_backward(*tensors)
    ctx.save_for_forward(*tensors)


def _jvp_levels() -> int:
    return sum(i.key() == _JVP for i in torch._C._functorch.get_interpreter_stack())


def _jvp(fn):
    """A Function's jvp. autograd.Function runs it with forward AD off, so under a second,
    outer jvp (jacfwd of jacfwd) the native ops in it would give the tangent no tangent of
    its own: a silently zero second derivative. That case is refused instead."""
    @functools.wraps(fn)
    def jvp(ctx, *tangents):
        if _jvp_levels() > 1:
            raise NotImplementedError(
                "fastnn: forward mode over forward mode (jacfwd of jacfwd, nested jvp) is not "
                "supported. For second derivatives use torch.func.hessian (jacfwd of jacrev), "
                "jacrev of jacrev, or jvp of grad.")
        return fn(ctx, *tangents)
    return staticmethod(jvp)


def _add(a: Optional[Tensor], b: Optional[Tensor]) -> Optional[Tensor]:
    """a + b, either of which may be None (a zero tangent)."""
    return b if a is None else a if b is None else a + b


class _Linear(_Function):
    """y = x W^T + b; dx = dy W, dW = dy^T x, db = sum(dy) (each only when asked for)."""

    @staticmethod
    def forward(input, weight, bias):
        return _ops.linear_forward.default(input, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias = inputs
        _save(ctx, input, weight)
        ctx.has_bias = bias is not None

    @_jvp
    def jvp(ctx, x_t, w_t, b_t):
        # y_t = linear(x_t, W, b_t) + linear(x, W_t), absent tangents being zero.
        input, weight = ctx.saved_tensors
        y_t = None
        if x_t is not None:
            y_t, b_t = _Linear.apply(x_t, weight, b_t), None
        if w_t is not None:
            y_t, b_t = _add(y_t, _Linear.apply(input, w_t, b_t)), None
        if b_t is not None:
            y_t = b_t.expand(*input.shape[:-1], weight.shape[0])
        return y_t

    @staticmethod
    def backward(ctx, grad):
        input, weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        return _LinearBackward.apply(grad, input, weight, need[0], need[1],
                                     ctx.has_bias and need[2])


class _ReLU(_Function):
    """y = max(x, 0); dx = (y <= 0) ? 0 : dy."""

    @staticmethod
    def forward(input):
        return _ops.relu_forward.default(input)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save(ctx, output)

    @staticmethod
    def backward(ctx, grad):
        (output,) = ctx.saved_tensors
        return _ReLUBackward.apply(grad, output)

    @_jvp
    def jvp(ctx, x_t):
        (output,) = ctx.saved_tensors
        return _ReLUBackward.apply(x_t, output)


class _LogSoftmax(_Function):
    """y = x - logsumexp(x, dim); dx = dy - exp(y) * sum(dy, dim)."""

    @staticmethod
    def forward(input, dim):
        return _ops.log_softmax_forward.default(input, dim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save(ctx, output)
        ctx.dim = inputs[1]

    @staticmethod
    def backward(ctx, grad):
        (output,) = ctx.saved_tensors
        return _LogSoftmaxBackward.apply(grad, output, ctx.dim), None

    @_jvp
    def jvp(ctx, x_t, _dim):
        # y_t = x_t - sum(x_t * exp(y), dim), native's formula.
        (output,) = ctx.saved_tensors
        return x_t - (x_t * output.exp()).sum(ctx.dim, keepdim=True)


class _Loss(_Function):
    """Base of the two losses: forward returns (loss, *saved side outputs), only the loss
    differentiable; backward maps the loss gradient to the input gradient."""

    @staticmethod
    def setup_context(ctx, inputs, outputs):
        input, target, weight, reduction, ignore_index, *options = inputs
        ctx.mark_non_differentiable(*outputs[1:])
        _save(ctx, input, target, weight, *outputs)
        ctx.reduction, ctx.ignore_index, ctx.options = reduction, ignore_index, options

class _NLLLoss(_Loss):
    """loss = -w[t] x[t] (reduced); dx[t] = -w[t] dloss (/ total weight for 'mean')."""

    @staticmethod
    def forward(input, target, weight, reduction, ignore_index):
        return _ops.nll_loss_forward.default(input, target, weight, reduction, ignore_index)

    @staticmethod
    def backward(ctx, grad, _grad_total_weight):
        input, target, weight, _loss, total_weight = ctx.saved_tensors
        dx = _NLLLossBackward.apply(grad, input, target, weight, ctx.reduction,
                                            ctx.ignore_index, total_weight)
        return dx, None, None, None, None

    @_jvp
    def jvp(ctx, x_t, *_):
        # The loss is linear in x: loss_t = the loss of x_t.
        _, target, weight, *_ = ctx.saved_tensors
        return _NLLLoss.apply(x_t, target, weight, ctx.reduction, ctx.ignore_index)[0], None


class _CrossEntropy(_Loss):
    """loss = w[t] (logsumexp(x) - x[t]) (reduced); dx = w[t] (softmax(x) - onehot(t)) dloss
    (label smoothing: see csrc/cpu/cross_entropy.cpp)."""

    @staticmethod
    def forward(input, target, weight, reduction, ignore_index, label_smoothing):
        return _ops.cross_entropy_forward.default(input, target, weight, reduction, ignore_index,
                                                  label_smoothing)

    @staticmethod
    def backward(ctx, grad, _grad_lse, _grad_total_weight):
        input, target, weight, _loss, lse, total_weight = ctx.saved_tensors
        dx = _CrossEntropyBackward.apply(grad, input, target, weight, ctx.reduction,
                                                 ctx.ignore_index, lse, total_weight,
                                                 *ctx.options)
        return dx, None, None, None, None, None

    @_jvp
    def jvp(ctx, x_t, *_):
        # loss_t = the loss's gradient (cross_entropy_backward at 1) applied to x_t.
        # ('mean': the 'sum' tangent over total_weight, NaN when that is 0, as natively.)
        input, target, weight, loss, lse, total_weight = ctx.saved_tensors
        mean = ctx.reduction == 1
        per_unit = _CrossEntropyBackward.apply(torch.ones_like(loss), input, target, weight,
                                               2 if mean else ctx.reduction, ctx.ignore_index,
                                               lse, total_weight, *ctx.options)
        loss_t = _sum_over_classes(per_unit * x_t, input, ctx.reduction)
        return (_over_total_weight(loss_t, total_weight) if mean else loss_t), None, None


# The backward ops, differentiable again (gradients of gradients: a nested torch.func.grad,
# jacrev of grad, hessian-vector products); the same derivatives as the C++ layer's
# *BackwardFunction (csrc/autograd/).

class _LinearBackward(_Function):
    """(dx, dW, db) = (dy W, dy^T x, sum dy), each only when asked for (else None)."""

    @staticmethod
    def forward(grad, input, weight, dx, dw, db):
        # The output mask as three bools: a list argument would be one pytree of three
        # leaves to vmap's generated rules, and their jvp cannot take it.
        return _ops.linear_backward.default(grad, input, weight, [dx, dw, db])

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad, input, weight, *mask = inputs
        _save(ctx, grad, input, weight)
        ctx.mask = mask

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
            g_x = _LinearBackward.apply(dy, input, gdw, True, False, False)[0]
        if need[2] and gdx is not None:
            g_w = _LinearBackward.apply(dy, gdx, weight, False, True, False)[1]
        return g_dy, g_x, g_w, None, None, None

    @_jvp
    def jvp(ctx, dy_t, x_t, w_t, *_mask):
        # dx_t = dy_t W + dy W_t, dW_t = dy_t^T x + dy^T x_t, db_t = sum dy_t.
        dy, input, weight = ctx.saved_tensors
        mask = ctx.mask
        t = [None, None, None]
        if dy_t is not None:
            t = list(_LinearBackward.apply(dy_t, input, weight, *mask))
        if mask[0] and w_t is not None:
            t[0] = _add(t[0], _LinearBackward.apply(dy, input, w_t, True, False, False)[0])
        if mask[1] and x_t is not None:
            t[1] = _add(t[1], _LinearBackward.apply(dy, x_t, weight, False, True, False)[1])
        return tuple(t)


class _ReLUBackward(_Function):
    """dx = (y <= 0) ? 0 : dy: linear in dy, no gradient towards y."""

    @staticmethod
    def forward(grad, output):
        return _ops.relu_backward.default(grad, output)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save(ctx, inputs[1])

    @staticmethod
    def backward(ctx, gg):
        (output,) = ctx.saved_tensors
        zeros = torch.zeros_like(output) if ctx.needs_input_grad[1] else None
        return _ReLUBackward.apply(gg, output), zeros

    @_jvp
    def jvp(ctx, g_t, _y_t):
        (output,) = ctx.saved_tensors
        return None if g_t is None else _ReLUBackward.apply(g_t, output)


class _LogSoftmaxBackward(_Function):
    """dx = dy - exp(y) sum(dy); native's double-backward formulas."""

    @staticmethod
    def forward(grad, output, dim):
        return _ops.log_softmax_backward.default(grad, output, dim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save(ctx, inputs[0], inputs[1])
        ctx.dim = inputs[2]

    @_jvp
    def jvp(ctx, g_t, y_t, _dim):
        # dx_t = log_softmax_backward(dy_t, y) - exp(y) * y_t * sum(dy).
        dy, y = ctx.saved_tensors
        t = None if g_t is None else _LogSoftmaxBackward.apply(g_t, y, ctx.dim)
        if y_t is not None:
            t = _add(t, -(dy.sum(ctx.dim, keepdim=True) * y.exp() * y_t))
        return t

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
        _save(ctx, input, target, weight, total_weight)
        ctx.reduction, ctx.ignore_index = reduction, ignore_index

    @_jvp
    def jvp(ctx, g_t, *_):
        # Linear in dy and constant in x: dx_t = nll_loss_backward(dy_t).
        if g_t is None:
            return None
        input, target, weight, total_weight = ctx.saved_tensors
        return _NLLLossBackward.apply(g_t, input, target, weight, ctx.reduction,
                                      ctx.ignore_index, total_weight)

    @staticmethod
    def backward(ctx, gg):
        input, target, weight, _total_weight = ctx.saved_tensors
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
        _save(ctx, grad, input, target, weight, lse, total_weight)
        ctx.reduction, ctx.ignore_index = reduction, ignore_index
        ctx.eps = eps[0] if eps else 0.0

    @_jvp
    def jvp(ctx, g_t, x_t, *_):
        # dx_t = cross_entropy_backward(dy_t) + the x-derivative applied to x_t.
        g, x, t, w, lse, total_weight = ctx.saved_tensors
        dx_t = None
        if g_t is not None:
            dx_t = _CrossEntropyBackward.apply(g_t, x, t, w, ctx.reduction, ctx.ignore_index,
                                               lse, total_weight, ctx.eps)
        if x_t is not None:
            dx_t = _add(dx_t, _softmax_term(g, x, t, w, ctx.reduction, ctx.ignore_index,
                                            total_weight, ctx.eps, x_t))
        return dx_t

    @staticmethod
    def backward(ctx, gg):
        g, x, t, w, lse, total_weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        g_dy = g_x = None
        if need[0]:
            per_unit = _CrossEntropyBackward.apply(torch.ones_like(g), x, t, w, ctx.reduction,
                                                   ctx.ignore_index, lse, total_weight, ctx.eps)
            g_dy = _sum_over_classes(gg * per_unit, x, ctx.reduction)
        if need[1]:
            g_x = _softmax_term(g, x, t, w, ctx.reduction, ctx.ignore_index, total_weight,
                                ctx.eps, gg)
        return (g_dy, g_x) + (None,) * 7


def _sum_over_classes(v: Tensor, x: Tensor, reduction: int) -> Tensor:
    """Summed over the class dim for reduction 'none' (the loss keeps the positions), else
    over everything."""
    return v.sum(0 if x.dim() == 1 else 1) if reduction == 0 else v.sum()


def _over_total_weight(g, total_weight):
    """g / total_weight ('mean'), NaN when total_weight is 0 (as the loss itself), divided
    in total_weight's dtype (float32 for the half types) and rounded once to g's."""
    q = (g.to(total_weight.dtype) / total_weight).masked_fill(total_weight == 0, float("nan"))
    return q.to(g.dtype)


def _softmax_term(g, x, t, w, reduction, ignore_index, total_weight, eps, v):
    """The derivative of cross_entropy_backward's dx in x applied to v (x's shape): dx is
    soft * p minus terms constant in x, so this is soft * p * (v - sum_c v * p), 0 at ignored
    positions. Symmetric, so the double backward (v = gg) and jvp (v = x_t) share it."""
    cd = 0 if x.dim() == 1 else 1
    keep = t != ignore_index
    soft = _over_total_weight(g, total_weight) if reduction == 1 else g
    if w is not None:
        wt = w[t.masked_fill(~keep, 0)] * (1.0 - eps)
        if eps != 0:
            wt = wt + w.sum() * (eps / x.shape[cd])
        soft = soft * wt
    p = torch.softmax(x, cd)
    soft = soft if soft.dim() == 0 else soft.unsqueeze(cd)
    d = soft * p * (v - (v * p).sum(cd, keepdim=True))
    return torch.where(keep.unsqueeze(cd), d, torch.zeros_like(d))


def _has_jvp_tangent(t: Tensor) -> bool:
    """True where t carries a forward-mode tangent of an active jvp / jacfwd level. Every op
    run inside a transform wraps its output at that transform's level, so a tensor made
    there from constants (e.g. `w.float()`) is wrapped at a jvp level without a tangent:
    each jvp-level wrapper's own tangent is read, with the interpreters above its level set
    aside while reading (an op sees only the innermost level's tangents)."""
    jvp_levels = {i.level() for i in torch._C._functorch.get_interpreter_stack() or ()
                  if i.key() == _JVP}
    while torch._C._functorch.is_functorch_wrapped_tensor(t):
        level = torch._C._functorch.maybe_get_level(t)
        if level in jvp_levels:
            with contextlib.ExitStack() as above:
                while torch._C._functorch.peek_interpreter_stack().level() > level:
                    above.enter_context(temporarily_pop_interpreter_stack())
                if torch.autograd.forward_ad.unpack_dual(t).tangent is not None:
                    return True
        t = torch._C._functorch.get_unwrapped(t)
    return False


def _check_weight(op: str, weight: Optional[Tensor]) -> None:
    # The same refusals as the C++ layer's check_weight_not_differentiable. (A Function's
    # jvp cannot tell: it gets zeros for an input without a tangent.)
    if weight is None:
        return
    if weight.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(
            f"fastnn.{op}: the loss is not differentiable with respect to `weight`, so `weight` "
            f"cannot have requires_grad=True. Pass `weight.detach()`, or call it under "
            f"torch.no_grad().")
    # Dynamo cannot trace the wrapper inspection: a compiled jvp / jacfwd drops a weight's
    # tangent, as native does.
    if not torch.compiler.is_compiling() and _has_jvp_tangent(weight):
        raise RuntimeError(
            f"fastnn.{op}: the loss is not differentiable with respect to `weight`, so `weight` "
            f"cannot have a forward-mode tangent (be an argument jvp / jacfwd differentiate "
            f"with respect to, or computed from one).")


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
