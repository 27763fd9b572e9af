"""Typed Python wrappers over ``torch.ops.fastnn.*`` and their fake kernels.

Each wrapper is the single Python entry point to one registered operator (schemas in
csrc/registry.cpp). The ``register_fake`` functions describe each op's outputs
(shape, dtype, device) without running it, so ``torch.compile`` and
``torch.library.opcheck`` can trace the ops. All outputs are dense: contiguous, except
relu's, which take their input's layout as ``torch.empty_like`` does.

The differentiable (forward) wrappers call the op, whose autograd is in C++, except while a
differentiating torch.func transform (grad, vjp, jacrev, ...) is active: then they go
through ``_func``'s Python autograd Functions, which functorch supports (it refuses C++
ones). In-place ReLU under any transform is computed out of place and copied back.
In eager mode the op is called through ``fastnn._C``'s direct entry point (the same
dispatcher call without torch.ops' argument boxing, 1-3 us less per call; csrc/python.cpp);
under torch.compile through its OpOverload, which Dynamo traces.
"""
import warnings
from typing import List, Optional, Tuple

import torch
import torch.utils.flop_counter
from torch import Tensor

from . import _C, _func
from ._func import differentiating_transform_active as _differentiating

_ops = torch.ops.fastnn
# Each op's overload, looked up once here rather than on every call.
_linear_forward = _ops.linear_forward.default
_linear_backward = _ops.linear_backward.default
_relu_forward = _ops.relu_forward.default
_relu_forward_ = _ops.relu_forward_.default
_relu_backward = _ops.relu_backward.default
_log_softmax_forward = _ops.log_softmax_forward.default
_log_softmax_backward = _ops.log_softmax_backward.default
_nll_loss_forward = _ops.nll_loss_forward.default
_nll_loss_backward = _ops.nll_loss_backward.default
_cross_entropy_forward = _ops.cross_entropy_forward.default
_cross_entropy_backward = _ops.cross_entropy_backward.default
_compiling = torch.compiler.is_compiling  # constant under Dynamo

REDUCTION_NONE, REDUCTION_MEAN, REDUCTION_SUM = 0, 1, 2
_REDUCTIONS = {"none": REDUCTION_NONE, "mean": REDUCTION_MEAN, "sum": REDUCTION_SUM}


def reduction_enum(reduction: str) -> int:
    try:
        return _REDUCTIONS[reduction]
    except KeyError:
        pass
    if reduction == "elementwise_mean":  # the deprecated alias native still takes
        warnings.warn("reduction='elementwise_mean' is deprecated. Please use reduction='mean' "
                      "instead.")
        return REDUCTION_MEAN
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


# ----------------------------------------------------------------------------- wrappers

def linear_forward(input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    if _differentiating():
        return _func.linear(input, weight, bias)
    if _compiling():
        return _linear_forward(input, weight, bias)
    return _C.linear_forward(input, weight, bias)


def linear_backward(grad_output: Tensor, input: Tensor, weight: Tensor, output_mask: List[bool]
                    ) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    return _linear_backward(grad_output, input, weight, output_mask)


def relu_forward(input: Tensor) -> Tensor:
    if _differentiating():
        return _func.relu(input)
    if _compiling():
        return _relu_forward(input)
    return _C.relu_forward(input)


def relu_forward_(input: Tensor) -> Tensor:
    if _func.any_transform_active():
        # functorch runs no custom op in place (not under grad, vmap or functionalize);
        # copy_ is differentiable, batched and functionalized natively.
        input.copy_(relu_forward(input))
        return input
    if _compiling():
        _relu_forward_(input)
    else:
        _C.relu_forward_(input)
    return input


def relu_backward(grad_output: Tensor, output: Tensor) -> Tensor:
    return _relu_backward(grad_output, output)


def log_softmax_forward(input: Tensor, dim: int) -> Tensor:
    if _differentiating():
        return _func.log_softmax(input, dim)
    if _compiling():
        return _log_softmax_forward(input, dim)
    return _C.log_softmax_forward(input, dim)


def log_softmax_backward(grad_output: Tensor, output: Tensor, dim: int) -> Tensor:
    return _log_softmax_backward(grad_output, output, dim)


def nll_loss_forward(input: Tensor, target: Tensor, weight: Optional[Tensor], reduction: int,
                     ignore_index: int) -> Tuple[Tensor, Tensor]:
    if _differentiating():
        return _func.nll_loss(input, target, weight, reduction, ignore_index)
    if _compiling():
        return _nll_loss_forward(input, target, weight, reduction, ignore_index)
    return _C.nll_loss_forward(input, target, weight, reduction, ignore_index)


def nll_loss_backward(grad_output: Tensor, input: Tensor, target: Tensor, weight: Optional[Tensor],
                      reduction: int, ignore_index: int, total_weight: Tensor) -> Tensor:
    return _nll_loss_backward(grad_output, input, target, weight, reduction, ignore_index,
                              total_weight)


def cross_entropy_forward(input: Tensor, target: Tensor, weight: Optional[Tensor], reduction: int,
                          ignore_index: int,
                          label_smoothing: float = 0.0) -> Tuple[Tensor, Tensor, Tensor]:
    if _differentiating():
        return _func.cross_entropy(input, target, weight, reduction, ignore_index,
                                   label_smoothing)
    if _compiling():
        return _cross_entropy_forward(input, target, weight, reduction, ignore_index,
                                      label_smoothing)
    return _C.cross_entropy_forward(input, target, weight, reduction, ignore_index,
                                    label_smoothing)


def cross_entropy_backward(grad_output: Tensor, input: Tensor, target: Tensor,
                           weight: Optional[Tensor], reduction: int, ignore_index: int,
                           lse: Tensor, total_weight: Tensor,
                           label_smoothing: float = 0.0) -> Tensor:
    return _cross_entropy_backward(grad_output, input, target, weight, reduction,
                                   ignore_index, lse, total_weight, label_smoothing)


# ----------------------------------------------------------------------------- fake kernels

def _check_one_device(op: str, *tensors: Optional[Tensor]) -> None:
    # Also reached outside tracing: a call mixing meta and real tensors dispatches to these
    # kernels (Meta outranks the other devices), and would otherwise return garbage.
    devices = {t.device for t in tensors if t is not None}
    torch._check(len(devices) <= 1, lambda: f"fastnn::{op}: all tensors must be on one device, "
                                            f"got {sorted(str(d) for d in devices)}")


def _dense(t: Tensor, shape=None, dtype=None) -> Tensor:
    return t.new_empty(t.shape if shape is None else shape, dtype=dtype or t.dtype)


def _acc_dtype(input: Tensor) -> torch.dtype:
    # A loss over half-precision inputs keeps its log-sum-exp and total weight in float32.
    return torch.float32 if input.dtype in (torch.float16, torch.bfloat16) else input.dtype


@torch.library.register_fake("fastnn::linear_forward")
def _(input, weight, bias):
    _check_one_device("linear_forward", input, weight, bias)
    torch._check(weight.dim() == 2, lambda: "fastnn::linear_forward: weight must be 2-D")
    torch._check(input.dim() >= 1, lambda: "fastnn::linear_forward: input must be at least 1-D")
    torch._check(input.shape[-1] == weight.shape[1],
                 lambda: "fastnn::linear_forward: input and weight feature sizes differ")
    return _dense(input, (*input.shape[:-1], weight.shape[0]))


@torch.library.register_fake("fastnn::linear_backward")
def _(grad_output, input, weight, output_mask):
    _check_one_device("linear_backward", grad_output, input, weight)
    return (_dense(input) if output_mask[0] else None,
            _dense(weight) if output_mask[1] else None,
            _dense(weight, (weight.shape[0],)) if output_mask[2] else None)


@torch.library.register_fake("fastnn::relu_forward")
def _(input):
    return torch.empty_like(input)  # the input's layout, as native relu (fastnn/layout.h)


@torch.library.register_fake("fastnn::relu_forward_")
def _(input):
    return None


@torch.library.register_fake("fastnn::relu_backward")
def _(grad_output, output):
    _check_one_device("relu_backward", grad_output, output)
    return torch.empty_like(output)


@torch.library.register_fake("fastnn::log_softmax_forward")
def _(input, dim):
    return _dense(input)


@torch.library.register_fake("fastnn::log_softmax_backward")
def _(grad_output, output, dim):
    _check_one_device("log_softmax_backward", grad_output, output)
    return _dense(output)


def _loss_shape(target: Tensor, reduction: int):
    return target.shape if reduction == REDUCTION_NONE else ()


@torch.library.register_fake("fastnn::nll_loss_forward")
def _(input, target, weight, reduction, ignore_index):
    _check_one_device("nll_loss_forward", input, target, weight)
    return (_dense(input, _loss_shape(target, reduction)),
            _dense(input, (), _acc_dtype(input)))


@torch.library.register_fake("fastnn::nll_loss_backward")
def _(grad_output, input, target, weight, reduction, ignore_index, total_weight):
    _check_one_device("nll_loss_backward", grad_output, input, target, weight, total_weight)
    return _dense(input)


@torch.library.register_fake("fastnn::cross_entropy_forward")
def _(input, target, weight, reduction, ignore_index, label_smoothing=0.0):
    _check_one_device("cross_entropy_forward", input, target, weight)
    return (_dense(input, _loss_shape(target, reduction)),
            _dense(input, (*target.shape, 2), _acc_dtype(input)),  # (max, log-sum) pairs
            _dense(input, (), _acc_dtype(input)))


@torch.library.register_fake("fastnn::cross_entropy_backward")
def _(grad_output, input, target, weight, reduction, ignore_index, lse, total_weight,
      label_smoothing=0.0):
    _check_one_device("cross_entropy_backward", grad_output, input, target, weight, lse,
                      total_weight)
    return _dense(input)


# ----------------------------------------------------------------------------- flop counts
# torch.utils.flop_counter.FlopCounterMode counts Linear's products as it counts native
# addmm/mm: 2 * (rows of x) * in * out per product (the bias add is not counted).

def _linear_flops(input_shape, weight_shape) -> int:
    rows = 1
    for n in input_shape[:-1]:
        rows *= n
    return 2 * rows * weight_shape[0] * weight_shape[1]


@torch.utils.flop_counter.register_flop_formula(torch.ops.fastnn.linear_forward)
def _(input_shape, weight_shape, bias_shape, *args, **kwargs) -> int:
    return _linear_flops(input_shape, weight_shape)


@torch.utils.flop_counter.register_flop_formula(torch.ops.fastnn.linear_backward)
def _(grad_output_shape, input_shape, weight_shape, output_mask, *args, **kwargs) -> int:
    return _linear_flops(input_shape, weight_shape) * (int(output_mask[0]) + int(output_mask[1]))
