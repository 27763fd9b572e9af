"""fastnn's layers: drop-in twins of their torch.nn namesakes.

Each subclasses the torch.nn layer, so constructor signature, defaults, parameter
names, initialisation, ``state_dict`` keys and ``repr`` are the native ones (a native
checkpoint loads into a fastnn model and back); only ``forward`` runs fastnn's kernels.
"""
import torch.fx
from torch import Tensor, nn

from .functional import cross_entropy, linear, log_softmax, nll_loss, relu

__all__ = ["Linear", "LazyLinear", "ReLU", "LogSoftmax", "NLLLoss", "CrossEntropyLoss"]

# torch.fx.symbolic_trace records the layers' calls as single nodes, as it records native
# layers (leaf modules), instead of tracing into the functions' device and autocast checks.
for _name in ("linear", "relu", "log_softmax", "nll_loss", "cross_entropy"):
    torch.fx.wrap(_name)


class Linear(nn.Linear):
    """y = x W^T + b on fastnn's GEMM; input (*, in_features) -> (*, out_features)."""

    def forward(self, input: Tensor) -> Tensor:
        return linear(input, self.weight, self.bias)


class LazyLinear(nn.LazyLinear):
    """nn.LazyLinear that becomes fastnn's Linear once in_features is inferred."""

    cls_to_become = Linear
    forward = Linear.forward  # the first call already runs fastnn's kernel


class ReLU(nn.ReLU):
    """max(x, 0) elementwise; ``inplace=True`` overwrites the input as nn.ReLU does."""

    def forward(self, input: Tensor) -> Tensor:
        return relu(input, inplace=self.inplace)


class LogSoftmax(nn.LogSoftmax):
    """log(softmax(x)) over ``dim``, numerically stable."""

    def forward(self, input: Tensor) -> Tensor:
        return log_softmax(input, self.dim, _stacklevel=5)


class NLLLoss(nn.NLLLoss):
    """Negative log-likelihood of log-probabilities (N, C) / (C) / (N, C, d1, ...)."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index,
                        reduction=self.reduction)


class CrossEntropyLoss(nn.CrossEntropyLoss):
    """log_softmax + NLLLoss fused into one kernel each way, for class-index targets."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                             reduction=self.reduction, label_smoothing=self.label_smoothing)
