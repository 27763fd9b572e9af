"""The seed classifier (the PyTorch tutorial's MNIST MLP) and its checkpoints.

    model = Classifier(784, (256, 128, 64), 10, dropout=0.2, impl="fastnn")
    save_checkpoint("mnist.pt", model)
    model = load_checkpoint("mnist.pt", impl="native")     # weights are interchangeable
    probs = predict(model, image)                           # (N, 10) class probabilities

``impl="fastnn"`` builds the layers from :mod:`fastnn.nn`, ``impl="native"`` from
:mod:`torch.nn`; both give the same module tree, so the ``state_dict`` keys (and the
checkpoints) are identical and weights copy freely between the two.
"""
from typing import Dict, Optional, Sequence, Union

import torch
from torch import Tensor

__all__ = ["IMPLS", "Classifier", "save_checkpoint", "load_checkpoint", "check_compatible",
           "predict"]

IMPLS = ("fastnn", "native")


def _nn(impl: str):
    """The layer namespace of ``impl``: fastnn.nn or torch.nn."""
    if impl == "fastnn":
        from fastnn import nn
        return nn
    if impl == "native":
        return torch.nn
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


class Classifier(torch.nn.Module):
    """MLP: input -> [Linear -> ReLU -> Dropout] per hidden size -> Linear -> LogSoftmax.

    Input (N, input_size), or (N, *) with prod(*) == input_size (e.g. (N, 1, 28, 28)).
    ``forward`` returns log-probabilities (N, output_size); ``logits`` the scores before
    the log-softmax, for use with a cross-entropy loss.

    Modules: ``hidden`` (ModuleList of Linear), ``output`` (Linear), ``relu``,
    ``dropout`` (torch.nn.Dropout in both impls: fastnn has no dropout kernel),
    ``log_softmax`` (over dim 1).
    """

    def __init__(self, input_size: int = 784, hidden_sizes: Sequence[int] = (256, 128, 64),
                 output_size: int = 10, dropout: float = 0.0, impl: str = "fastnn"):
        super().__init__()
        nn = _nn(impl)
        self.impl = impl
        self.input_size = int(input_size)
        self.hidden_sizes = tuple(int(h) for h in hidden_sizes)
        self.output_size = int(output_size)
        self.dropout_p = float(dropout)
        sizes = (self.input_size,) + self.hidden_sizes
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.output = nn.Linear(sizes[-1], self.output_size)
        self.relu = nn.ReLU()
        self.dropout = torch.nn.Dropout(self.dropout_p)
        self.log_softmax = nn.LogSoftmax(dim=1)

    def logits(self, x: Tensor) -> Tensor:
        """(N, input_size) -> (N, output_size) unnormalised scores."""
        x = x.reshape(x.shape[0], -1)
        for layer in self.hidden:
            x = self.dropout(self.relu(layer(x)))
        return self.output(x)

    def forward(self, x: Tensor) -> Tensor:
        """(N, input_size) -> (N, output_size) log-probabilities."""
        return self.log_softmax(self.logits(x))

    def architecture(self) -> Dict[str, object]:
        return {"input_size": self.input_size, "hidden_sizes": list(self.hidden_sizes),
                "output_size": self.output_size, "dropout": self.dropout_p}

    def extra_repr(self) -> str:
        return f"impl={self.impl!r}"


def save_checkpoint(path: str, model: Classifier) -> None:
    """Save {"input_size", "hidden_sizes", "output_size", "dropout", "state_dict"} to ``path``.

    The state_dict is stored on the CPU, so the file loads on any machine.
    """
    checkpoint = model.architecture()
    checkpoint["state_dict"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(checkpoint, path)


def _expected_shapes(arch: Dict[str, object]) -> Dict[str, tuple]:
    sizes = [arch["input_size"], *arch["hidden_sizes"]]
    shapes = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        shapes[f"hidden.{i}.weight"], shapes[f"hidden.{i}.bias"] = (b, a), (b,)
    shapes["output.weight"] = (arch["output_size"], sizes[-1])
    shapes["output.bias"] = (arch["output_size"],)
    return shapes


def check_compatible(model: Classifier, checkpoint: Dict[str, object]) -> None:
    """Raise ValueError naming every size that differs between ``model`` and ``checkpoint``
    (its architecture entries, then any state_dict tensor whose shape does not match)."""
    problems = []
    mine = model.architecture()
    for key in ("input_size", "hidden_sizes", "output_size"):
        theirs = checkpoint.get(key)
        theirs = list(theirs) if isinstance(theirs, (list, tuple)) else theirs
        if theirs != mine[key]:
            problems.append(f"{key}: checkpoint has {theirs}, model has {mine[key]}")
    state = checkpoint.get("state_dict", {})
    own = model.state_dict()
    for key in sorted(set(own) | set(state)):
        if key not in state:
            problems.append(f"{key}: missing from the checkpoint")
        elif key not in own:
            problems.append(f"{key}: in the checkpoint but not in the model")
        elif tuple(state[key].shape) != tuple(own[key].shape):
            problems.append(f"{key}: checkpoint shape {tuple(state[key].shape)}, "
                            f"model shape {tuple(own[key].shape)}")
    if problems:
        raise ValueError("checkpoint does not match the model architecture:\n  "
                         + "\n  ".join(problems))


def load_checkpoint(path: str, impl: str = "fastnn", model: Optional[Classifier] = None,
                    map_location: Union[str, torch.device] = "cpu") -> Classifier:
    """Rebuild the Classifier stored in ``path`` (with ``impl``'s layers) and load its weights.

    With ``model`` given, load into it instead, after checking that its sizes match the
    checkpoint's (ValueError listing the differences otherwise).
    """
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    missing = [k for k in ("input_size", "hidden_sizes", "output_size", "state_dict")
               if k not in checkpoint]
    if missing:
        raise ValueError(f"{path} is not a fastnn Classifier checkpoint: missing {missing}")
    if model is None:
        model = Classifier(checkpoint["input_size"], checkpoint["hidden_sizes"],
                           checkpoint["output_size"], checkpoint.get("dropout", 0.0), impl=impl)
        shapes = _expected_shapes(model.architecture())
        bad = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items()
               if k in shapes and tuple(v.shape) != shapes[k]}
        if bad:
            raise ValueError(f"{path}: the state_dict does not match the sizes stored beside it: "
                             + ", ".join(f"{k} is {s}, expected {shapes[k]}" for k, s in bad.items()))
    check_compatible(model, checkpoint)
    model.load_state_dict(checkpoint["state_dict"])
    return model


def predict(model: Classifier, image: Tensor) -> Tensor:
    """Class probabilities (N, output_size) for ``image``: any tensor holding N flattened
    inputs of ``model.input_size`` values each (e.g. (784,), (28, 28), (N, 1, 28, 28)).

    Runs in eval mode under no_grad (restoring the previous mode), as softmax of the
    model's log-probabilities.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            param = next(model.parameters())
            x = image.reshape(-1, model.input_size).to(device=param.device, dtype=param.dtype)
            return torch.exp(model(x))
    finally:
        model.train(was_training)
