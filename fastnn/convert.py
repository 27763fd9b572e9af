"""fastnn.convert: swap a model's native layers for fastnn's, keeping its weights."""
from torch import nn

from . import modules

# Exact native types only: a user subclass of nn.Linear may override forward.
_SWAPS = {
    nn.Linear: modules.Linear,
    nn.LazyLinear: modules.LazyLinear,  # not yet materialised; becomes fastnn's Linear
    nn.ReLU: modules.ReLU,
    nn.LogSoftmax: modules.LogSoftmax,
    nn.NLLLoss: modules.NLLLoss,
    nn.CrossEntropyLoss: modules.CrossEntropyLoss,
}


def convert(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear / LazyLinear / ReLU / LogSoftmax / NLLLoss / CrossEntropyLoss
    in ``model`` (itself included) by its fastnn twin, in place, and return ``model``.

    The modules keep their identity, parameters, buffers, hooks and attributes (each
    fastnn layer is a subclass of its native twin with only ``forward`` replaced), so an
    optimizer built on the model before conversion still applies, and no random numbers
    are drawn. Layers called through torch.nn.functional inside a custom ``forward`` are
    not reached: use fastnn.nn.functional there.
    """
    for module in model.modules():
        swap = _SWAPS.get(type(module))
        if swap is not None:
            module.__class__ = swap
    return model
