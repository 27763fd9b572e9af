"""fastnn: hand-written CPU and CUDA kernels for the layers of a small MLP classifier.

Drop-in replacements for torch.nn's Linear, ReLU, LogSoftmax, NLLLoss and
CrossEntropyLoss, backed by fastnn's own operators (``torch.ops.fastnn.*``):

    from fastnn import nn                 # torch.nn with fastnn's layers swapped in
    import fastnn.nn.functional as F      # torch.nn.functional, likewise
    model = fastnn.convert(native_model)  # or swap the layers of an existing model
"""
from ._loader import load_extension as _load_extension

_C = _load_extension()

from . import _ops  # noqa: E402,F401  (typed wrappers + fake kernels for torch.compile)
from . import functional  # noqa: E402
from .modules import CrossEntropyLoss, LazyLinear, Linear, LogSoftmax, NLLLoss, ReLU  # noqa: E402
from .convert import convert  # noqa: E402
from . import nn  # noqa: E402

__version__ = "0.1.0"

#: True when the CUDA kernels were compiled in.
WITH_CUDA = bool(_C.WITH_CUDA)

__all__ = [
    "Linear", "LazyLinear", "ReLU", "LogSoftmax", "NLLLoss", "CrossEntropyLoss",
    "convert", "functional", "nn", "WITH_CUDA",
]
