"""fastnn's layers: drop-in twins of their torch.nn namesakes.

Each subclasses the torch.nn layer, so constructor signature, defaults, parameter
names, initialisation, ``state_dict`` keys and ``repr`` are the native ones (a native
checkpoint loads into a fastnn model and back); only ``forward`` runs fastnn's kernels.

``torch.jit.script`` compiles each layer to a call of its fastnn op (``torch.ops.fastnn.*``,
whose autograd is in C++); the compiler skips the eager branch. A saved scripted model loads
where fastnn is imported (which registers the ops). The eager-only extras do not apply in
it: autocast casts and the torch.func routing.
"""
import torch
import torch.fx
from torch import Tensor, nn

from .functional import (check_probability_target, cross_entropy, legacy_softmax_dim, linear,
                         log_softmax, nll_loss, probability_target_loss, relu)

__all__ = ["Linear", "LazyLinear", "ReLU", "LogSoftmax", "NLLLoss", "CrossEntropyLoss"]

# torch.fx.symbolic_trace records the layers' calls as single nodes, as it records native
# layers (leaf modules), instead of tracing into the functions' device and autocast checks.
for _name in ("linear", "relu", "log_softmax", "nll_loss", "cross_entropy"):
    torch.fx.wrap(_name)


def _scripted_reduction(reduction: str) -> int:
    """_ops.reduction_enum in TorchScript (which takes no globals: codes as literals)."""
    if reduction == "none":
        return 0
    if reduction == "mean" or reduction == "elementwise_mean":
        return 1
    if reduction == "sum":
        return 2
    raise ValueError("reduction must be 'none', 'mean' or 'sum', got " + reduction)


def _scripted_target(target: Tensor) -> Tensor:
    return target.long() if target.dtype == torch.uint8 else target  # as native takes it


class Linear(nn.Linear):
    """y = x W^T + b on fastnn's GEMM; input (*, in_features) -> (*, out_features)."""

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return torch.ops.fastnn.linear_forward(input, self.weight, self.bias)
        return linear(input, self.weight, self.bias)


class LazyLinear(nn.LazyLinear):
    """nn.LazyLinear that becomes fastnn's Linear once in_features is inferred."""

    cls_to_become = Linear
    forward = Linear.forward  # the first call already runs fastnn's kernel


class ReLU(nn.ReLU):
    """max(x, 0) elementwise; ``inplace=True`` overwrites the input as nn.ReLU does."""

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            if self.inplace:
                torch.ops.fastnn.relu_forward_(input)
                return input
            return torch.ops.fastnn.relu_forward(input)
        return relu(input, inplace=self.inplace)


class LogSoftmax(nn.LogSoftmax):
    """log(softmax(x)) over ``dim``, numerically stable."""

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            dim = self.dim
            if dim is None:  # the deprecated implicit choice (and warning), as in native's
                dim = legacy_softmax_dim(input.dim())
            return torch.ops.fastnn.log_softmax_forward(input, dim)
        return log_softmax(input, self.dim, _stacklevel=5)


class NLLLoss(nn.NLLLoss):
    """Negative log-likelihood of log-probabilities (N, C) / (C) / (N, C, d1, ...)."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return torch.ops.fastnn.nll_loss_forward(
                input, _scripted_target(target), self.weight, _scripted_reduction(self.reduction),
                self.ignore_index)[0]
        return nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index,
                        reduction=self.reduction)


class CrossEntropyLoss(nn.CrossEntropyLoss):
    """log_softmax + NLLLoss fused into one kernel each way for class-index targets (with
    label smoothing); class-probability targets run fastnn's log_softmax, the rest composed
    as natively."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            if target.dim() == input.dim() and target.size() == input.size():
                check_probability_target(target, self.ignore_index, self.label_smoothing)
                logp = torch.ops.fastnn.log_softmax_forward(input, 0 if input.dim() == 1 else 1)
                return probability_target_loss(logp, target, self.weight,
                                               _scripted_reduction(self.reduction),
                                               self.label_smoothing)
            return torch.ops.fastnn.cross_entropy_forward(
                input, _scripted_target(target), self.weight, _scripted_reduction(self.reduction),
                self.ignore_index, self.label_smoothing)[0]
        return cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                             reduction=self.reduction, label_smoothing=self.label_smoothing)
