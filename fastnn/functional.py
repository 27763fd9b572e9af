"""fastnn's functional API, signature-compatible with torch.nn.functional.

    linear(input, weight, bias=None)
    relu(input, inplace=False)
    log_softmax(input, dim=None, _stacklevel=3, dtype=None)
    nll_loss(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean")
    cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                  reduction="mean", label_smoothing=0.0)

Each function calls one fastnn op; cross_entropy with class-probability targets (a target
of the input's shape) calls log_softmax's and composes the rest as native does. The ops are
differentiable (to any order, in reverse and forward mode): their autograd is registered in
C++ (csrc/autograd/), so the graph costs what a native op's does.
Autocast is honoured as native does it: linear runs in the autocast dtype, nll_loss and
cross_entropy in float32, and log_softmax in float32 on CUDA (on the CPU, autocast leaves
it in its input's dtype). As native's, each function first hands
arguments that override ``__torch_function__`` (tensor subclasses, torch.fx's tracing
proxies) to their override, so torch.fx.symbolic_trace records each call as one node.
"""
import operator
import warnings
from typing import Optional

import torch
from torch import Tensor
from torch.nn import _reduction
from torch.overrides import handle_torch_function, has_torch_function_variadic

from . import _C, _ops

__all__ = ["linear", "relu", "log_softmax", "nll_loss", "cross_entropy"]

_DEVICES = ("cpu", "cuda", "meta")
_C_WITH_CUDA = bool(_C.WITH_CUDA)
_any_autocast_enabled = torch._C._is_any_autocast_enabled
_HALF_DTYPES = (torch.float16, torch.bfloat16)
_UINT8 = torch.uint8


def _check_device(op: str, t: Tensor) -> None:
    try:
        if t.is_cpu:  # the common case first: is_cpu is cheaper than t.device
            return
    except AttributeError:
        raise TypeError(f"fastnn.{op}: argument 'input' must be a Tensor, not "
                        f"{type(t).__name__}") from None
    kind = t.device.type
    if kind not in _DEVICES:
        raise RuntimeError(f"fastnn.{op}: tensors on {kind} are not supported; fastnn has kernels "
                           f"for cpu and cuda. Move the tensor with .cpu() or .cuda().")
    if kind == "cuda" and not _C_WITH_CUDA:
        raise RuntimeError(f"fastnn.{op}: got a CUDA tensor, but this fastnn build has no CUDA "
                           f"kernels. Rebuild with a CUDA toolkit (FASTNN_CUDA=1 pip install "
                           f"--no-build-isolation -e .), or use CPU tensors.")


def _int_arg(op: str, name: str, value) -> int:
    """An integer argument (dim, ignore_index) as native takes it: an int or anything with
    __index__ (a NumPy integer, a one-element integer tensor), but not a bool."""
    if type(value) is int:  # the common case first
        return value
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise TypeError(f"fastnn.{op}: argument '{name}' must be int, not {type(value).__name__}")


def _float_arg(op: str, name: str, value) -> float:
    """A float argument (label_smoothing) as native takes it: a Python or NumPy number or a
    one-element tensor."""
    if type(value) is float:  # the common case first
        return value
    if not isinstance(value, (str, bytes)):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    raise TypeError(f"fastnn.{op}: argument '{name}' must be float, not {type(value).__name__}")


def _autocast_dtype(t: Tensor) -> Optional[torch.dtype]:
    """The lower-precision dtype autocast asks for on t's device, or None if autocast is off.
    (Callers on the hot path test _any_autocast_enabled() first: one C call, constant under
    Dynamo, and no Python frame when autocast is off, the common case.)"""
    if t.is_cpu:
        return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
    if t.is_cuda and torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return None


def _cast(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    # Autocast casts floating tensors other than float64, as native does.
    if t is None or t.dtype == dtype or t.dtype == torch.float64 or not t.is_floating_point():
        return t
    return t.to(dtype)


def linear(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    if has_torch_function_variadic(input, weight, bias):
        return handle_torch_function(linear, (input, weight, bias), input, weight, bias=bias)
    _check_device("linear", input)
    dtype = _autocast_dtype(input) if _any_autocast_enabled() else None
    if dtype is not None:
        input, weight, bias = _cast(input, dtype), _cast(weight, dtype), _cast(bias, dtype)
    if weight.dim() == 1 and bias is None:
        # As natively: a 1-D weight (in_features,) maps (*, in_features) to (*).
        return _ops.linear_forward(input, weight.unsqueeze(0), None).squeeze(-1)
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[0]) \
            and weight.dim() == 2 and input.dim() > 0 and bias.dtype == input.dtype \
            and bias.device == input.device:
        # As natively, a bias of another shape that expands to the output's (e.g. a
        # scalar, or one bias per row): fastnn's product, then a native add. (A bias of
        # another dtype or device goes to the op, which says what it must be.)
        out_shape = list(input.shape[:-1]) + [weight.shape[0]]
        if not _expands(list(bias.shape), out_shape):
            raise RuntimeError(f"fastnn.linear: `bias` of shape {list(bias.shape)} does not "
                               f"broadcast to the output's shape {out_shape}; pass a bias of "
                               f"shape [{weight.shape[0]}] (out_features).")
        if input.dtype in _HALF_DTYPES and weight.dtype == input.dtype:
            # the sum in float32, rounded once, as the fused bias does it (a half-type
            # product rounded before the add would lose what the add cancels)
            out = _ops.linear_forward(input.float(), weight.float(), None) + bias.float()
            return out.to(input.dtype)
        return _ops.linear_forward(input, weight, None) + bias
    return _ops.linear_forward(input, weight, bias)


def _expands(shape: list, to: list) -> bool:
    """Whether a tensor of `shape` expands to `to` (Tensor.expand's rule)."""
    return len(shape) <= len(to) and all(
        b == 1 or b == o for b, o in zip(reversed(shape), reversed(to)))


def relu(input: Tensor, inplace: bool = False) -> Tensor:
    if has_torch_function_variadic(input):
        return handle_torch_function(relu, (input,), input, inplace=inplace)
    _check_device("relu", input)
    if inplace:
        return _ops.relu_forward_(input)
    return _ops.relu_forward(input)


def legacy_softmax_dim(ndim: int) -> int:
    """native's deprecated implicit dim (with its warning); TorchScript-compatible."""
    warnings.warn("Implicit dimension choice for log_softmax has been deprecated. "
                  "Change the call to include dim=X as an argument.", stacklevel=3)
    return 0 if ndim == 0 or ndim == 1 or ndim == 3 else 1


def log_softmax(input: Tensor, dim: Optional[int] = None, _stacklevel: int = 3,
                dtype: Optional[torch.dtype] = None) -> Tensor:
    if has_torch_function_variadic(input):
        return handle_torch_function(log_softmax, (input,), input, dim=dim,
                                     _stacklevel=_stacklevel, dtype=dtype)
    _check_device("log_softmax", input)
    dim = legacy_softmax_dim(input.dim()) if dim is None else _int_arg("log_softmax", "dim", dim)
    if dtype is not None:
        input = input.to(dtype)
    elif _any_autocast_enabled() and input.is_cuda and _autocast_dtype(input) is not None:
        # CUDA autocast runs log_softmax in float32; CPU autocast leaves it in its input's dtype
        input = _cast(input, torch.float32)
    return _ops.log_softmax_forward(input, dim)


def _reduction_of(size_average, reduce, reduction: str) -> int:
    if size_average is not None or reduce is not None:
        reduction = _reduction.legacy_get_string(size_average, reduce)
    return _ops.reduction_enum(reduction)


def _loss_inputs(op: str, input: Tensor, target: Tensor, weight: Optional[Tensor]):
    _check_device(op, input)
    if _any_autocast_enabled() and _autocast_dtype(input) is not None:
        input, weight = _cast(input, torch.float32), _cast(weight, torch.float32)
    if target.dtype == _UINT8:  # native takes byte class indices too
        target = target.long()
    return input, target, weight


def nll_loss(input: Tensor, target: Tensor, weight: Optional[Tensor] = None, size_average=None,
             ignore_index: int = -100, reduce=None, reduction: str = "mean") -> Tensor:
    if has_torch_function_variadic(input, target, weight):
        return handle_torch_function(
            nll_loss, (input, target, weight), input, target, weight=weight,
            size_average=size_average, ignore_index=ignore_index, reduce=reduce,
            reduction=reduction)
    red = _reduction_of(size_average, reduce, reduction)
    input, target, weight = _loss_inputs("nll_loss", input, target, weight)
    ignore_index = _int_arg("nll_loss", "ignore_index", ignore_index)
    return _ops.nll_loss_forward(input, target, weight, red, ignore_index)[0]


def cross_entropy(input: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                  size_average=None, ignore_index: int = -100, reduce=None,
                  reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
    if has_torch_function_variadic(input, target, weight):
        return handle_torch_function(
            cross_entropy, (input, target, weight), input, target, weight=weight,
            size_average=size_average, ignore_index=ignore_index, reduce=reduce,
            reduction=reduction, label_smoothing=label_smoothing)
    red = _reduction_of(size_average, reduce, reduction)
    ignore_index = _int_arg("cross_entropy", "ignore_index", ignore_index)
    label_smoothing = _float_arg("cross_entropy", "label_smoothing", label_smoothing)
    _check_device("cross_entropy", input)
    if target.dim() == input.dim() and target.shape == input.shape:
        # class probabilities, as natively: a target of the input's own shape
        check_probability_target(target, ignore_index, label_smoothing)
        if _any_autocast_enabled() and _autocast_dtype(input) is not None:
            input, target, weight = (_cast(t, torch.float32) for t in (input, target, weight))
        logp = _ops.log_softmax_forward(input, 0 if input.dim() == 1 else 1)
        return probability_target_loss(logp, target, weight, red, label_smoothing)
    input, target, weight = _loss_inputs("cross_entropy", input, target, weight)
    return _ops.cross_entropy_forward(input, target, weight, red, ignore_index,
                                      label_smoothing)[0]


def check_probability_target(target: Tensor, ignore_index: int, label_smoothing: float) -> None:
    """The arguments native refuses with class-probability targets, refused first as there."""
    if not target.is_floating_point():
        raise RuntimeError(
            "fastnn.cross_entropy: a target of the input's shape holds class probabilities and "
            "must be floating point, not an integer type; class indices have the input's "
            "shape without its class dim.")
    if ignore_index >= 0:
        raise RuntimeError("fastnn.cross_entropy: ignore_index is not supported for probability "
                           "targets (as natively); leave it at its default.")
    if not (label_smoothing >= 0.0 and label_smoothing <= 1.0):
        raise RuntimeError("fastnn.cross_entropy: `label_smoothing` must be between 0.0 and 1.0, "
                           "got " + str(label_smoothing) + ".")


def probability_target_loss(logp: Tensor, target: Tensor, weight: Optional[Tensor],
                            reduction: int, label_smoothing: float) -> Tensor:
    """Cross-entropy against class probabilities (target: the input's shape), given the
    input's log-probabilities over the class dim (fastnn's log_softmax kernel). The rest is
    composed of native element-wise ops and sums in native's order, as native composes it:
    target <- target * (1 - eps) + eps / C;  loss = -sum_c logp[c] * target[c] * w[c],
    summed over the class dim (none), everything (sum), or everything divided by the
    number of positions N * d1 * ... (mean; NaN for an empty input). Gradients reach the
    input, the target and the weight through autograd. TorchScript-compatible; the
    arguments are checked first by check_probability_target."""
    class_dim = 0 if logp.dim() == 1 else 1
    n_classes = logp.shape[class_dim]
    if label_smoothing > 0.0:
        target = target * (1 - label_smoothing) + label_smoothing / n_classes
    prod = logp * target
    if weight is not None:
        if weight.dim() != 1 or weight.shape[0] != n_classes:
            raise RuntimeError("fastnn.cross_entropy: `weight` must be 1-D with one entry per "
                               "class (" + str(n_classes) + "), got shape "
                               + str(list(weight.shape)) + ".")
        if logp.dim() > 1:
            shape = [1] * logp.dim()
            shape[1] = n_classes
            weight = weight.view(shape)
        prod = prod * weight
    if reduction == 0:
        return -prod.sum(class_dim)
    if reduction == 2:
        return -prod.sum()
    if logp.numel() == 0:
        return -prod.sum().fill_(float("nan"))
    return -prod.sum() / (logp.numel() // n_classes)
