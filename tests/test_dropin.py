"""Drop-in compatibility with torch.nn: state_dict round trips, repr, parameter names,
default initialisation, fastnn.convert, and models written against `fastnn.nn`."""
import copy
import io
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastnn
import fastnn.nn.functional as FNF
from fastnn import nn as fnn
from support import assert_close, seed_mlp, synthetic_mnist

FAST_TYPES = (fastnn.Linear, fastnn.ReLU, fastnn.LogSoftmax, fastnn.NLLLoss, fastnn.CrossEntropyLoss)


def test_fastnn_nn_namespace():
    assert fnn.Linear is fastnn.Linear and fnn.ReLU is fastnn.ReLU
    assert fnn.LogSoftmax is fastnn.LogSoftmax and fnn.NLLLoss is fastnn.NLLLoss
    assert fnn.CrossEntropyLoss is fastnn.CrossEntropyLoss and fnn.LazyLinear is fastnn.LazyLinear
    # everything else is torch.nn's own
    assert fnn.Sequential is nn.Sequential and fnn.Module is nn.Module
    assert fnn.Dropout is nn.Dropout and fnn.init is nn.init and fnn.utils is nn.utils
    for name in ("linear", "relu", "log_softmax", "nll_loss", "cross_entropy"):
        assert getattr(FNF, name) is getattr(fastnn.functional, name)
    assert FNF.softmax is F.softmax and FNF.dropout is F.dropout
    for cls in FAST_TYPES:
        assert issubclass(cls, getattr(nn, cls.__name__))


def test_default_init_matches_native():
    torch.manual_seed(42)
    native = seed_mlp(torch.nn)
    after_native = torch.rand(3)
    torch.manual_seed(42)
    fast = seed_mlp(fnn)
    after_fast = torch.rand(3)
    assert torch.equal(after_native, after_fast), "construction drew a different number of randoms"
    n_sd, f_sd = native.state_dict(), fast.state_dict()
    assert list(n_sd.keys()) == list(f_sd.keys())
    for k in n_sd:
        assert torch.equal(n_sd[k], f_sd[k]), k
    assert [n for n, _ in native.named_parameters()] == [n for n, _ in fast.named_parameters()]
    assert repr(fast) == repr(native)


@pytest.mark.parametrize("kwargs", [dict(), dict(bias=False)], ids=["bias", "nobias"])
def test_linear_repr_params_and_init(kwargs):
    torch.manual_seed(3)
    a = nn.Linear(7, 5, **kwargs)
    torch.manual_seed(3)
    b = fastnn.Linear(7, 5, **kwargs)
    assert repr(a) == repr(b)
    assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize("make", [
    lambda m: m.ReLU(inplace=True), lambda m: m.ReLU(), lambda m: m.LogSoftmax(dim=1),
    lambda m: m.NLLLoss(ignore_index=3, reduction="sum"),
    lambda m: m.CrossEntropyLoss(weight=torch.ones(4), reduction="none"),
    lambda m: m.Linear(3, 2, dtype=torch.float64)])
def test_module_repr_and_state_dict_keys(make):
    a, b = make(nn), make(fnn)
    assert repr(a) == repr(b)
    assert a.state_dict().keys() == b.state_dict().keys()


def test_state_dict_round_trip_sequential(device):
    torch.manual_seed(0)
    native = seed_mlp(torch.nn).to(device)
    torch.manual_seed(1)  # different init: loading must overwrite it
    fast = seed_mlp(fnn).to(device)
    fast.load_state_dict(native.state_dict())
    x, _ = synthetic_mnist(16, device=device)
    assert_close(fast(x), native(x).detach(), torch.float32, k=784)
    # and back
    torch.manual_seed(2)
    native2 = seed_mlp(torch.nn).to(device)
    native2.load_state_dict(fast.state_dict())
    for a, b in zip(native.state_dict().values(), native2.state_dict().values()):
        assert torch.equal(a, b)


def test_state_dict_round_trip_ordered_dict(device, tmp_path):
    def build(m):
        return m.Sequential(OrderedDict([
            ("fc1", m.Linear(784, 256)), ("relu1", m.ReLU()), ("drop", m.Dropout(0.2)),
            ("fc2", m.Linear(256, 10)), ("out", m.LogSoftmax(dim=1))]))

    torch.manual_seed(0)
    native = build(nn).to(device)
    fast = build(fnn).to(device)
    assert repr(fast) == repr(native)
    assert list(fast.state_dict()) == list(native.state_dict()) == \
        ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    path = tmp_path / "native.pt"
    torch.save(native.state_dict(), path)
    fast.load_state_dict(torch.load(path, weights_only=True))
    native.eval()
    fast.eval()
    x, t = synthetic_mnist(8, device=device)
    assert_close(fast(x), native(x).detach(), torch.float32, k=784)
    torch.save(fast.state_dict(), path)
    native.load_state_dict(torch.load(path, weights_only=True))


def test_convert_swaps_exact_types_and_keeps_parameters():
    class MyLinear(nn.Linear):  # a user subclass may override forward: must be left alone
        def forward(self, x):
            return super().forward(x) * 2

    body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), MyLinear(8, 8),
                         nn.Sequential(nn.Linear(8, 3), nn.LogSoftmax(dim=1)), nn.Tanh())
    root = nn.ModuleDict({"body": body, "nll": nn.NLLLoss(weight=torch.ones(3)),
                          "ce": nn.CrossEntropyLoss(ignore_index=1)})
    params = list(root.parameters())
    param_ids = [id(p) for p in params]
    modules = list(root.modules())
    x = torch.randn(5, 4)
    root.eval()
    expected = body(x)
    opt = torch.optim.SGD(root.parameters(), lr=0.1)  # built before conversion

    out = fastnn.convert(root)
    assert out is root
    assert [id(p) for p in root.parameters()] == param_ids
    assert [id(m) for m in root.modules()] == [id(m) for m in modules]
    model = root["body"]
    assert type(model[0]) is fastnn.Linear and type(model[1]) is fastnn.ReLU
    assert type(model[2]) is nn.Dropout
    assert type(model[3]) is MyLinear
    assert type(model[4][0]) is fastnn.Linear and type(model[4][1]) is fastnn.LogSoftmax
    assert type(model[5]) is nn.Tanh
    assert type(root["nll"]) is fastnn.NLLLoss and type(root["ce"]) is fastnn.CrossEntropyLoss
    assert torch.equal(root["nll"].weight, torch.ones(3)) and root["ce"].ignore_index == 1
    assert_close(model(x), expected.detach(), torch.float32, k=8)
    # the optimizer still updates the converted model's parameters
    before = model[0].weight.detach().clone()
    root["nll"](model(x), torch.tensor([0, 1, 2, 0, 1])).backward()
    opt.step()
    assert not torch.equal(model[0].weight, before)
    # idempotent
    assert fastnn.convert(root) is root and type(model[0]) is fastnn.Linear


def test_convert_single_layer_and_inplace_flag():
    lin = nn.Linear(3, 2)
    assert fastnn.convert(lin) is lin and type(lin) is fastnn.Linear
    r = nn.ReLU(inplace=True)
    fastnn.convert(r)
    assert type(r) is fastnn.ReLU and r.inplace
    ls = nn.LogSoftmax(dim=0)
    fastnn.convert(ls)
    assert ls.dim == 0


def test_lazy_linear_becomes_fastnn_linear(device):
    """fastnn.nn.LazyLinear materialises into fastnn's Linear (its first call already on
    fastnn's kernel); convert() swaps a native LazyLinear that is not yet materialised."""
    x = torch.randn(4, 7, device=device)
    lazy = fnn.LazyLinear(3).to(device)
    y = lazy(x)
    assert type(lazy) is fastnn.Linear and lazy.in_features == 7
    assert_close(y, F.linear(x, lazy.weight, lazy.bias), torch.float32, k=7)
    model = nn.Sequential(nn.LazyLinear(3), nn.ReLU()).to(device)
    fastnn.convert(model)
    model(x)
    assert type(model[0]) is fastnn.Linear and type(model[1]) is fastnn.ReLU


def test_convert_keeps_loss_options(device):
    """A converted CrossEntropyLoss keeps its options (label smoothing, weight,
    ignore_index, reduction) and computes what the native one did."""
    w = torch.rand(5, device=device) + 0.5
    loss = nn.CrossEntropyLoss(weight=w, ignore_index=1, reduction="sum", label_smoothing=0.1)
    x, t = torch.randn(8, 5, device=device), torch.randint(0, 5, (8,), device=device)
    want = loss(x, t)
    fastnn.convert(loss)
    assert type(loss) is fastnn.CrossEntropyLoss
    torch.testing.assert_close(loss(x, t), want)


def test_fx_symbolic_trace(device):
    """torch.fx records each fastnn layer as one call, as it records native layers, and
    the traced module computes what the model does."""
    model = seed_mlp(fnn).to(device)
    traced = torch.fx.symbolic_trace(model)
    x, _ = synthetic_mnist(8, device=device)
    assert torch.equal(traced(x), model(x))
    calls = [n.target.__name__ for n in traced.graph.nodes if n.op == "call_function"]
    assert calls.count("linear") == 4 and "log_softmax" in calls


def test_fx_symbolic_trace_of_functional_calls(device):
    """A forward written with fastnn.nn.functional traces too: each call one node (the
    functions defer to __torch_function__ overrides, as native's do)."""
    import fastnn.nn.functional as FF

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 4)

        def forward(self, x, t):
            h = FF.relu(FF.linear(x, self.fc.weight, self.fc.bias), inplace=True)
            return (FF.cross_entropy(h, t, label_smoothing=0.1)
                    + FF.nll_loss(FF.log_softmax(h, dim=1), t, reduction="sum"))
    model = Net().to(device)
    traced = torch.fx.symbolic_trace(model)
    calls = [n.target.__name__ for n in traced.graph.nodes if n.op == "call_function"]
    assert calls == ["linear", "relu", "cross_entropy", "log_softmax", "nll_loss", "add"]
    assert all(n.target.__module__ == "fastnn.functional" for n in traced.graph.nodes
               if n.op == "call_function" and n.target.__name__ != "add")
    x, t = torch.randn(5, 6, device=device), torch.randint(0, 4, (5,), device=device)
    torch.testing.assert_close(traced(x, t), model(x, t))


def test_flop_counter_counts_linear_like_native():
    from torch.utils.flop_counter import FlopCounterMode
    counts = []
    for mod in (nn, fnn):
        lin = mod.Linear(64, 32)
        x = torch.randn(16, 64, requires_grad=True)
        with FlopCounterMode(display=False) as counter:
            lin(x).sum().backward()
        counts.append(counter.get_total_flops())
    assert counts[1] == counts[0] == 3 * 2 * 16 * 64 * 32  # forward, dx, dW


def test_converted_model_matches_native_training_step(device):
    torch.manual_seed(0)
    native = seed_mlp(torch.nn).to(device)
    fast = fastnn.convert(copy.deepcopy(native))
    x, t = synthetic_mnist(32, device=device)
    for model in (native, fast):
        F.nll_loss(model(x), t).backward()
    for (n0, p0), (n1, p1) in zip(native.named_parameters(), fast.named_parameters()):
        assert n0 == n1
        assert_close(p1.grad, p0.grad, torch.float32, k=784, msg=lambda m: f"{n0}: {m}")


def test_classifier_written_against_fastnn_nn(device):
    from fastnn import nn as nn_  # noqa: the "drop-in" import style
    import fastnn.nn.functional as F_

    class Classifier(nn_.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn_.Linear(784, 256)
            self.fc2 = nn_.Linear(256, 128)
            self.fc3 = nn_.Linear(128, 64)
            self.fc4 = nn_.Linear(64, 10)
            self.dropout = nn_.Dropout(p=0.2)

        def forward(self, x):
            x = x.view(x.shape[0], -1)
            x = self.dropout(F_.relu(self.fc1(x)))
            x = self.dropout(F_.relu(self.fc2(x)))
            x = self.dropout(F_.relu(self.fc3(x)))
            return F_.log_softmax(self.fc4(x), dim=1)

    class NativeClassifier(Classifier):
        def forward(self, x):
            x = x.view(x.shape[0], -1)
            x = F.relu(F.linear(x, self.fc1.weight, self.fc1.bias))
            x = F.relu(F.linear(x, self.fc2.weight, self.fc2.bias))
            x = F.relu(F.linear(x, self.fc3.weight, self.fc3.bias))
            return F.log_softmax(F.linear(x, self.fc4.weight, self.fc4.bias), dim=1)

    torch.manual_seed(0)
    model = Classifier().to(device)
    ref = NativeClassifier().to(device)
    ref.load_state_dict(model.state_dict())
    assert type(model.fc1) is fastnn.Linear
    model.eval()
    x, t = synthetic_mnist(10, device=device)
    x = x.view(10, 1, 28, 28)
    criterion = nn_.NLLLoss()
    loss = criterion(model(x), t)
    loss_ref = F.nll_loss(ref(x), t)
    assert_close(loss.detach(), loss_ref.detach(), torch.float32, k=784)
    loss.backward()
    loss_ref.backward()
    for (n0, p0), (n1, p1) in zip(ref.named_parameters(), model.named_parameters()):
        assert_close(p1.grad, p0.grad, torch.float32, k=784, msg=lambda m: f"{n0}: {m}")
    # train mode (dropout active) runs and gives a finite loss
    model.train()
    assert torch.isfinite(criterion(model(x), t))


_JIT_DEPRECATED = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:FutureWarning")


def _scripted_case(device):
    """A model using every layer form, a loss per form, and inputs."""
    model = fnn.Sequential(fnn.Linear(6, 8), fnn.ReLU(), fnn.Linear(8, 5, bias=False),
                           fnn.ReLU(inplace=True), fnn.LogSoftmax(dim=1)).to(device, torch.float64)
    cw = torch.rand(5, dtype=torch.float64, device=device) + 0.5
    losses = [fnn.NLLLoss(), fnn.NLLLoss(weight=cw, ignore_index=2, reduction="sum"),
              fnn.CrossEntropyLoss(reduction="none"), fnn.CrossEntropyLoss(weight=cw),
              fnn.CrossEntropyLoss(weight=cw, label_smoothing=0.1)]
    x = torch.randn(7, 6, dtype=torch.float64, device=device)
    t = torch.tensor([0, 4, 2, 1, 3, 2, 0], device=device)
    return model, [loss.to(device) for loss in losses], x, t


@_JIT_DEPRECATED
def test_torchscript(device):
    """torch.jit.script compiles each layer to its fastnn op; the scripted model gives the
    eager model's values and gradients, and survives torch.jit.save / load."""
    model, losses, x, t = _scripted_case(device)
    scripted = torch.jit.script(model)
    for op in ("linear_forward", "relu_forward", "relu_forward_", "log_softmax_forward"):
        assert f"ops.fastnn.{op}(" in "\n".join(m.code for m in scripted.children())
    for loss in losses:
        s_loss = torch.jit.script(loss)
        assert "ops.fastnn." in s_loss.code
        want = loss(model(x), t)
        want_grads = torch.autograd.grad(want.sum(), list(model.parameters()))
        got = s_loss(scripted(x), t)
        got_grads = torch.autograd.grad(got.sum(), list(scripted.parameters()))
        assert torch.equal(got, want)
        for g, w in zip(got_grads, want_grads):
            assert torch.equal(g, w)
        # the byte-target form native takes, and the implicit-dim LogSoftmax
        assert torch.equal(s_loss(scripted(x), t.to(torch.uint8)), want)
    # class-probability targets, scripted (log_softmax's op, the rest composed)
    soft = fnn.CrossEntropyLoss(weight=torch.rand(5, dtype=torch.float64, device=device),
                                label_smoothing=0.1)
    q = torch.softmax(torch.randn(7, 5, dtype=torch.float64, device=device), 1)
    logits = torch.randn(7, 5, dtype=torch.float64, device=device)
    assert torch.equal(torch.jit.script(soft)(logits, q), soft(logits, q))
    implicit = torch.jit.script(fnn.LogSoftmax())
    with pytest.warns(UserWarning, match="Implicit dimension choice for log_softmax"):
        assert torch.equal(implicit(x), fnn.LogSoftmax(dim=1)(x))

    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf, map_location=device)
    assert torch.equal(loaded(x), model(x))


@_JIT_DEPRECATED
def test_torchscript_refuses_what_eager_refuses():
    scripted = torch.jit.script(fnn.CrossEntropyLoss(ignore_index=1))
    with pytest.raises(torch.jit.Error, match="ignore_index is not supported for probability"):
        scripted(torch.randn(3, 4), torch.softmax(torch.randn(3, 4), 1))
    scripted = torch.jit.script(fnn.NLLLoss(reduction="average"))
    with pytest.raises(torch.jit.Error, match="reduction must be"):
        scripted(torch.randn(3, 4), torch.tensor([0, 1, 2]))
