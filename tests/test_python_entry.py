"""fastnn._C's direct entry points (csrc/python.cpp), which fastnn/_ops.py calls in eager
mode instead of the torch.ops.fastnn OpOverloads: the same dispatcher call, so the same
results and autograd graph, and every dispatch-level tool still sees the ops."""
import warnings

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

import fastnn
import fastnn.functional as FF
from support import randn

ops = torch.ops.fastnn


def _cases(device):
    x = randn(6, 5, dtype=torch.float64, device=device)
    w = randn(4, 5, dtype=torch.float64, device=device)
    b = randn(4, dtype=torch.float64, device=device)
    t = torch.tensor([0, 3, 1, -100, 2, 2], device=device)
    cw = torch.rand(5, dtype=torch.float64, device=device)
    return {
        "linear_forward": (x, w, b),
        "relu_forward": (x,),
        "log_softmax_forward": (x, 0),
        "nll_loss_forward": (x, t, cw, 1, -100),
        "cross_entropy_forward": (x, t, None, 0, -100, 0.1),
    }


@pytest.mark.parametrize("name", ["linear_forward", "relu_forward", "log_softmax_forward",
                                  "nll_loss_forward", "cross_entropy_forward"])
def test_entry_point_is_the_op(device, name):
    args = _cases(device)[name]
    leaf = args[0].clone().requires_grad_()
    args = (leaf,) + args[1:]
    got, ref = getattr(fastnn._C, name)(*args), getattr(ops, name).default(*args)
    got, ref = (got, ref) if isinstance(got, tuple) else ((got,), (ref,))
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert torch.equal(g, r) and g.dtype == r.dtype and g.stride() == r.stride()
    assert type(got[0].grad_fn) is type(ref[0].grad_fn) and got[0].grad_fn is not None
    (gx,) = torch.autograd.grad(got[0].sum(), leaf)
    (rx,) = torch.autograd.grad(ref[0].sum(), leaf)
    assert torch.equal(gx, rx)


def test_in_place_entry_point(device):
    x = randn(4, 5, device=device)
    y = x.clone()
    assert fastnn._C.relu_forward_(y) is None
    assert torch.equal(y, torch.relu(x))


def _model(x, w, t):
    return FF.nll_loss(FF.log_softmax(FF.relu(FF.linear(x, w)), 1), t)


def test_dispatch_modes_and_fake_tensors_see_the_ops(device):
    x = randn(4, 5, device=device).requires_grad_()
    w = randn(3, 5, device=device)
    t = torch.tensor([0, 1, 2, 0], device=device)

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(func)
            return func(*args, **(kwargs or {}))

    with Record() as rec:
        _model(x, w, t).backward()
    seen = [f for f in rec.ops if f.namespace == "fastnn"]
    assert seen == [ops.linear_forward.default, ops.relu_forward.default,
                    ops.log_softmax_forward.default, ops.nll_loss_forward.default,
                    ops.nll_loss_backward.default, ops.log_softmax_backward.default,
                    ops.relu_backward.default, ops.linear_backward.default]
    with FakeTensorMode():
        fake = _model(torch.empty(4, 5, device=device), torch.empty(3, 5, device=device),
                      torch.zeros(4, dtype=torch.long, device=device))
    assert type(fake).__name__ == "FakeTensor" and fake.shape == () and fake.device == x.device


def test_profiler_and_jit_trace_see_the_ops():
    x = randn(4, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the profiler's notes about missing GPU tracers
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            FF.relu(x)
    assert "fastnn::relu_forward" in [e.name for e in prof.events()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated
        traced = torch.jit.trace(lambda a: FF.log_softmax(FF.relu(a), 1), (x,))
    assert "fastnn::relu_forward" in str(traced.graph)
    assert "fastnn::log_softmax_forward" in str(traced.graph)
    y = randn(4, 5)
    assert torch.equal(traced(y), FF.log_softmax(FF.relu(y), 1))


def test_entry_point_argument_errors():
    x = randn(4, 5)
    with pytest.raises(TypeError, match=r"log_softmax_forward\(\): argument 'dim' must be int, "
                                        r"not str"):
        fastnn._C.log_softmax_forward(x, "1")
    with pytest.raises(TypeError, match="argument 'dim' must be int, not bool"):
        fastnn._C.log_softmax_forward(x, True)
    with pytest.raises(TypeError, match="argument 'weight' must be Tensor, not list"):
        fastnn._C.linear_forward(x, [[1.0] * 5], None)
    with pytest.raises(TypeError, match="argument 'label_smoothing' must be float"):
        fastnn._C.cross_entropy_forward(x, torch.zeros(4, dtype=torch.long), None, 1, -100, "0")
    with pytest.raises(TypeError, match="expects 1 positional argument, got 0"):
        fastnn._C.relu_forward()
    # errors from the op keep their Python types
    with pytest.raises(IndexError, match="out of bounds"):
        fastnn._C.nll_loss_forward(x, torch.tensor([0, 1, 9, 0]), None, 1, -100)
