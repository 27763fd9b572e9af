"""fastnn's layers: drop-in twins of their torch.nn namesakes.

Each subclasses the torch.nn layer, so constructor signature, defaults, parameter
names, initialisation, ``state_dict`` keys and ``repr`` are the native ones (a native
checkpoint loads into a fastnn model and back); only ``forward`` runs fastnn's kernels.
"""
from torch import Tensor, nn

from . import functional as F

__all__ = ["Linear", "ReLU", "LogSoftmax", "NLLLoss", "CrossEntropyLoss"]


class Linear(nn.Linear):
    """y = x W^T + b on fastnn's GEMM; input (*, in_features) -> (*, out_features)."""

    def forward(self, input: Tensor) -> Tensor:
        return F.linear(input, self.weight, self.bias)


class ReLU(nn.ReLU):
    """max(x, 0) elementwise; ``inplace=True`` overwrites the input as nn.ReLU does."""

    def forward(self, input: Tensor) -> Tensor:
        return F.relu(input, inplace=self.inplace)


class LogSoftmax(nn.LogSoftmax):
    """log(softmax(x)) over ``dim``, numerically stable."""

    def forward(self, input: Tensor) -> Tensor:
        return F.log_softmax(input, self.dim, _stacklevel=5)


class NLLLoss(nn.NLLLoss):
    """Negative log-likelihood of log-probabilities (N, C) / (C) / (N, C, d1, ...)."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index,
                          reduction=self.reduction)


class CrossEntropyLoss(nn.CrossEntropyLoss):
    """log_softmax + NLLLoss fused into one kernel each way, for class-index targets."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing)
