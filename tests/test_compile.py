"""torch.compile(fullgraph=True) of the seed MLP built from fastnn layers: forward + loss
compile into one graph (the fake kernels in fastnn/_ops.py make fastnn's ops traceable),
backward runs through AOT autograd, and everything matches eager fastnn and native.
Compiled autograd (the backward of an eagerly recorded graph, compiled) takes fastnn's
autograd nodes too."""
import copy

import pytest
import torch
import torch._dynamo

import fastnn
from fastnn import nn as fnn
import fastnn.functional as FF
from support import assert_close, seed_mlp, synthetic_mnist


@pytest.fixture(autouse=True)
def _reset_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _models(device, loss):
    torch.manual_seed(0)
    native = seed_mlp(torch.nn, log_softmax=(loss == "nll")).to(device)
    fast = fastnn.convert(copy.deepcopy(native))
    loss_fn = fastnn.NLLLoss() if loss == "nll" else fastnn.CrossEntropyLoss()
    native_loss = torch.nn.NLLLoss() if loss == "nll" else torch.nn.CrossEntropyLoss()
    return native, fast, loss_fn, native_loss


def _run(model, loss_fn, x, t):
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), t)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def _compare(got, ref, dtype=torch.float32):
    (l1, g1), (l0, g0) = got, ref
    assert_close(l1, l0, dtype, k=784)
    for a, b in zip(g1, g0):
        assert_close(a, b, dtype, k=784)


@pytest.mark.parametrize("loss", ["nll", "ce"])
def test_compile_mlp_aot_eager(device, loss):
    native, fast, loss_fn, native_loss = _models(device, loss)
    x, t = synthetic_mnist(64, device=device)
    eager = _run(fast, loss_fn, x, t)
    _compare(eager, _run(native, native_loss, x, t))

    compiled_step = torch.compile(lambda x, t: loss_fn(fast(x), t), backend="aot_eager",
                                  fullgraph=True)
    for _ in range(2):  # second call: the cached graph
        fast.zero_grad(set_to_none=True)
        loss_value = compiled_step(x, t)
        loss_value.backward()
        got = (loss_value.detach(), [p.grad.clone() for p in fast.parameters()])
        _compare(got, eager)


def test_compile_module_fullgraph_and_inplace_relu(device):
    """torch.compile(module, fullgraph=True), with inplace ReLU and a 3-D input."""
    torch.manual_seed(0)
    model = fnn.Sequential(fnn.Linear(20, 32), fnn.ReLU(inplace=True), fnn.Linear(32, 5),
                           fnn.LogSoftmax(dim=-1)).to(device)
    ref = copy.deepcopy(model)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.randn(3, 4, 20, device=device)
    y1, y0 = compiled(x), ref(x)
    assert_close(y1, y0, torch.float32, k=32)
    y1.square().sum().backward()
    y0.square().sum().backward()
    for a, b in zip(model.parameters(), ref.parameters()):
        assert_close(a.grad, b.grad, torch.float32, k=32)


def test_compile_functional_with_loss_options(device):
    """nll_loss / cross_entropy with weight, ignore_index, reduction inside a graph."""
    import fastnn.functional as FF
    w = torch.rand(10, device=device) + 0.5
    x = torch.randn(16, 10, device=device, requires_grad=True)
    t = torch.randint(0, 10, (16,), device=device)
    t[::4] = 3

    def f(x):
        lp = FF.log_softmax(x, 1)
        return (FF.nll_loss(lp, t, w, ignore_index=3, reduction="sum")
                + FF.cross_entropy(x, t, w, ignore_index=3, reduction="none").mean()
                + FF.cross_entropy(x, t, w, ignore_index=3, label_smoothing=0.1)
                + FF.cross_entropy(x, torch.softmax(x.detach(), 1), w, label_smoothing=0.1)
                + FF.relu(FF.linear(x, torch.eye(10, device=device))).sum())

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    out1 = compiled(x)
    (g1,) = torch.autograd.grad(out1, x)
    out0 = f(x)
    (g0,) = torch.autograd.grad(out0, x)
    assert_close(out1.detach(), out0.detach(), torch.float32, k=160)
    assert_close(g1, g0, torch.float32, k=160)


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["nll"])
def test_compile_mlp_inductor(device, loss):
    """The default backend (inductor; on CPU it compiles C++ with gcc). fastnn's ops are
    extern calls in the generated code; the rest (none here but views) is generated."""
    native, fast, loss_fn, native_loss = _models(device, loss)
    x, t = synthetic_mnist(64, device=device)
    eager = _run(fast, loss_fn, x, t)
    compiled_step = torch.compile(lambda x, t: loss_fn(fast(x), t), fullgraph=True)
    fast.zero_grad(set_to_none=True)
    loss_value = compiled_step(x, t)
    loss_value.backward()
    _compare((loss_value.detach(), [p.grad.clone() for p in fast.parameters()]), eager)


_TARGET = torch.tensor([3, 0, 9, 1, 4, 4, 7, 2])
_WEIGHT = torch.linspace(0.5, 2.0, 10)
def _relu_inplace_on_view(x):
    y = x * 1.0
    FF.relu(y[:, 2:7], inplace=True)  # rebases y's history through a CopySlices node
    return y


_GRAPHS = {
    "linear": lambda x, w: FF.linear(x, w, w[0]),
    "relu": lambda x, w: FF.relu(x),
    "relu_inplace": lambda x, w: FF.relu(x * 1.0, inplace=True),
    "relu_inplace_view": lambda x, w: _relu_inplace_on_view(x),
    "log_softmax": lambda x, w: FF.log_softmax(x, dim=1),
    "nll_loss": lambda x, w: FF.nll_loss(x, _TARGET.to(x.device), weight=_WEIGHT.to(x.device),
                                         ignore_index=4),
    "cross_entropy": lambda x, w: FF.cross_entropy(x, _TARGET.to(x.device), reduction="sum"),
}


@pytest.mark.parametrize("op", list(_GRAPHS))
def test_compiled_autograd(device, op):
    """Each op's backward node is traced by compiled autograd and gives eager fastnn's
    gradients."""
    from torch._dynamo import compiled_autograd

    torch.manual_seed(0)
    x = torch.randn(8, 10, device=device, requires_grad=True)
    w = torch.randn(10, 10, device=device, requires_grad=True)
    grads0 = torch.autograd.grad(_GRAPHS[op](x, w).sum(), (x, w), allow_unused=True)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm

    with compiled_autograd._enable(torch.compile(backend=backend)):
        _GRAPHS[op](x, w).sum().backward()
    # one graph, the fastnn node in it like the native nodes (an untraceable node would run
    # eagerly between two graphs)
    assert len(graphs) == 1
    called = {str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"}
    assert any("fastnn" in name and "Function" in name for name in called), called
    for p, g0 in zip((x, w), grads0):
        if g0 is None:
            assert p.grad is None
        else:
            assert torch.equal(p.grad, g0), op


def test_export_seed_mlp_with_dynamic_batch(device, tmp_path):
    """torch.export of a fastnn model: fastnn's ops stay ops in the exported graph, the batch
    dim can be dynamic, and the program saves, loads and runs like the eager model."""
    torch.manual_seed(0)
    model = fastnn.convert(seed_mlp(torch.nn)).to(device).eval()
    x, _ = synthetic_mnist(16, device=device)
    batch = torch.export.Dim("batch", min=2)
    program = torch.export.export(model, (x,), dynamic_shapes={"input": {0: batch}})
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert {"fastnn.linear_forward.default", "fastnn.relu_forward.default"} <= targets
    path = tmp_path / "mlp.pt2"
    torch.export.save(program, path)
    loaded = torch.export.load(path).module()
    for n in (16, 5):
        xb, _ = synthetic_mnist(n, device=device)
        assert torch.equal(loaded(xb), model(xb))


def test_compile_vmap_fullgraph(device):
    """A compiled vmap of fastnn ops traces whole (the transform check is constant at trace
    time), and gives what the eager vmap gives."""
    x = torch.randn(3, 4, 5, dtype=torch.float64, device=device)
    w = torch.randn(6, 5, dtype=torch.float64, device=device)

    def f(x):
        return torch.func.vmap(lambda xi: FF.log_softmax(FF.relu(FF.linear(xi, w)), 1))(x)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), f(x))


def test_compiled_function_under_grad_after_plain_call(device):
    """The transform check is a trace-time constant: a function compiled (and first called)
    outside any transform still differentiates right when called under torch.func.grad
    afterwards (Dynamo does not reuse the plain trace inside a transform it did not start:
    it runs the function eagerly there)."""
    x = torch.randn(4, 5, dtype=torch.float64, device=device)
    w = torch.randn(6, 5, dtype=torch.float64, device=device)
    compiled = torch.compile(lambda x: FF.log_softmax(FF.linear(x, w), 1).sin().sum(),
                             backend="aot_eager")
    native = lambda x: torch.log_softmax(x @ w.t(), 1).sin().sum()  # noqa: E731
    torch.testing.assert_close(compiled(x), native(x))
    torch.testing.assert_close(torch.func.grad(compiled)(x), torch.func.grad(native)(x))
    torch.testing.assert_close(torch.func.vmap(torch.func.grad(compiled))(x.expand(3, 4, 5)),
                               torch.func.vmap(torch.func.grad(native))(x.expand(3, 4, 5)))


def test_compile_jvp_and_jacfwd_fullgraph(device):
    """Forward mode compiles whole: the jvp transform runs fastnn's Python Functions."""
    x = torch.randn(4, 5, dtype=torch.float64, device=device)
    w = torch.randn(6, 5, dtype=torch.float64, device=device)

    def f(lib):
        return lambda x: lib.log_softmax(lib.relu(lib.linear(x, w)), 1).sin().sum()
    import torch.nn.functional as F
    jvp = torch.func.jvp
    got = torch.compile(lambda x: jvp(f(FF), (x,), (torch.ones_like(x),))[1],
                        backend="aot_eager", fullgraph=True)(x)
    torch.testing.assert_close(got, jvp(f(F), (x,), (torch.ones_like(x),))[1])
    got = torch.compile(lambda x: torch.func.jacfwd(f(FF))(x), backend="aot_eager",
                        fullgraph=True)(x)
    torch.testing.assert_close(got, torch.func.jacfwd(f(F))(x))
    # a loss with a class weight (made inside from a constant: no tangent)
    t = torch.tensor([0, 2, 5, 1], device=device)
    cw = torch.rand(6, device=device)

    def loss(lib):
        return lambda x: lib.cross_entropy(lib.linear(x, w), t, weight=cw.to(x.dtype))
    got = torch.compile(lambda x: torch.func.jacfwd(loss(FF))(x), backend="aot_eager",
                        fullgraph=True)(x)
    torch.testing.assert_close(got, torch.func.jacfwd(loss(F))(x))
