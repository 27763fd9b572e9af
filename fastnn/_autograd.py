"""autograd.Functions that pair each fastnn forward op with its backward op.

Everything a backward needs travels through ``ctx`` (saved tensors and plain
attributes): no state lives on modules, so several forwards may precede one backward.
The backward ops are not themselves differentiable: double backward raises.

The Functions use the classic ``forward(ctx, ...)`` form: with a separate
``setup_context``, torch binds default arguments through ``inspect.signature`` on
every ``apply``, which costs ~100 us a call, more than the kernels at MNIST sizes.
"""
import torch
from torch.autograd.function import once_differentiable

from . import _ops


class LinearFunction(torch.autograd.Function):
    """y = x @ W^T + b.  dx = dy @ W,  dW = dy^T @ x,  db = sum(dy) over leading dims."""

    @staticmethod
    def forward(ctx, input, weight, bias):
        ctx.save_for_backward(input, weight)
        ctx.has_bias = bias is not None
        return _ops.linear_forward(input, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        need_input, need_weight, need_bias = ctx.needs_input_grad
        mask = [need_input, need_weight, need_bias and ctx.has_bias]
        return _ops.linear_backward(grad_output, input, weight, mask)


class ReLUFunction(torch.autograd.Function):
    """y = max(x, 0).  dx = (y <= 0) ? 0 : dy (native threshold_backward), from the saved output."""

    @staticmethod
    def forward(ctx, input):
        output = _ops.relu_forward(input)
        ctx.save_for_backward(output)
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        (output,) = ctx.saved_tensors
        return _ops.relu_backward(grad_output, output)


class ReLUInplaceFunction(torch.autograd.Function):
    """In-place y = max(x, 0), as nn.ReLU(inplace=True): x is overwritten and returned."""

    @staticmethod
    def forward(ctx, input):
        _ops.relu_forward_(input)
        ctx.mark_dirty(input)
        ctx.save_for_backward(input)
        return input

    backward = ReLUFunction.backward


class LogSoftmaxFunction(torch.autograd.Function):
    """y = x - logsumexp(x, dim).  dx = dy - exp(y) * sum(dy, dim), from the saved output."""

    @staticmethod
    def forward(ctx, input, dim):
        output = _ops.log_softmax_forward(input, dim)
        ctx.dim = dim
        ctx.save_for_backward(output)
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        (output,) = ctx.saved_tensors
        return _ops.log_softmax_backward(grad_output, output, ctx.dim), None


class NLLLossFunction(torch.autograd.Function):
    """loss = -w[t] * x[t], reduced.  dx = -w[t] * g at the target, 0 elsewhere."""

    @staticmethod
    def forward(ctx, input, target, weight, reduction, ignore_index):
        loss, total_weight = _ops.nll_loss_forward(input, target, weight, reduction, ignore_index)
        ctx.reduction, ctx.ignore_index = reduction, ignore_index
        ctx.save_for_backward(input, target, weight, total_weight)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        input, target, weight, total_weight = ctx.saved_tensors
        grad_input = _ops.nll_loss_backward(grad_loss, input, target, weight, ctx.reduction,
                                            ctx.ignore_index, total_weight)
        return grad_input, None, None, None, None


class CrossEntropyFunction(torch.autograd.Function):
    """Fused log_softmax + NLL over dim 1.  dx = g * w[t] * (softmax(x) - onehot(t)).

    Backward recomputes softmax as exp(x - lse) from the saved logits and the per-row
    log-sum-exp that forward returns, so no log-probabilities are stored.
    """

    @staticmethod
    def forward(ctx, input, target, weight, reduction, ignore_index):
        loss, lse, total_weight = _ops.cross_entropy_forward(input, target, weight, reduction,
                                                             ignore_index)
        ctx.reduction, ctx.ignore_index = reduction, ignore_index
        ctx.save_for_backward(input, target, weight, lse, total_weight)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        input, target, weight, lse, total_weight = ctx.saved_tensors
        grad_input = _ops.cross_entropy_backward(grad_loss, input, target, weight, ctx.reduction,
                                                 ctx.ignore_index, lse, total_weight)
        return grad_input, None, None, None, None
