"""torch.nn with fastnn's layers swapped in.

Code written against torch.nn runs on fastnn by changing its import:

    from fastnn import nn                 # instead of: from torch import nn
    import fastnn.nn.functional as F      # instead of: import torch.nn.functional as F

Every other name (Module, Sequential, Dropout, init, utils, ...) is torch.nn's own.
"""
from torch.nn import *  # noqa: F401,F403
from torch.nn import init, modules, parameter, utils  # noqa: F401

from ..modules import CrossEntropyLoss, LazyLinear, Linear, LogSoftmax, NLLLoss, ReLU  # noqa: F401
from . import functional  # noqa: F401,E402
