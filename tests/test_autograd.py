"""fastnn's autograd layer (csrc/autograd/): the forward ops are differentiable in C++.

Checked here: the raw ops record a graph exactly when native ops do (grad mode on and an
input requiring grad) and give native gradients; no graph under no_grad or
inference_mode; double backward (and higher) as natively; forward mode (dual tensors),
forward over reverse and reverse over forward as natively; the
non-differentiable outputs (lse, total_weight) and arguments (target, class weights)
behave as natively; in-place ReLU bumps the version counter once, like native relu_;
Linear saves what native saves; autograd's memory tools (checkpointing, saved-tensor hooks)
work through fastnn's nodes."""
import pytest
import torch
import torch.nn.functional as F

import fastnn.functional as FF
from support import assert_close, randn

ops = torch.ops.fastnn
NONE, MEAN, SUM = 0, 1, 2


def _calls(device):
    """(name, fastnn call, native call) on fresh leaves; each returns a scalar to backprop."""
    x = randn(6, 5, dtype=torch.float64, device=device)
    w = randn(4, 5, dtype=torch.float64, device=device)
    b = randn(4, dtype=torch.float64, device=device)
    t = torch.tensor([0, 4, 1, 3, 2, 2], device=device)
    return [
        ("linear", (x, w, b), lambda x, w, b: ops.linear_forward(x, w, b).sin().sum(),
         lambda x, w, b: F.linear(x, w, b).sin().sum()),
        ("relu", (x,), lambda x: ops.relu_forward(x).sin().sum(),
         lambda x: F.relu(x).sin().sum()),
        ("relu_", (x,), lambda x: FF.relu(x * 1, inplace=True).sin().sum(),
         lambda x: F.relu(x * 1, inplace=True).sin().sum()),
        ("log_softmax", (x,), lambda x: ops.log_softmax_forward(x, 1).sin().sum(),
         lambda x: F.log_softmax(x, 1).sin().sum()),
        ("nll_loss", (x,), lambda x: ops.nll_loss_forward(x, t, None, MEAN, -100)[0],
         lambda x: F.nll_loss(x, t)),
        ("cross_entropy", (x,), lambda x: ops.cross_entropy_forward(x, t, None, SUM, 2)[0],
         lambda x: F.cross_entropy(x, t, reduction="sum", ignore_index=2)),
    ]


def _leaves(args):
    return [a.detach().clone().requires_grad_() for a in args]


@pytest.mark.parametrize("i", range(6), ids=[c[0] for c in _calls("cpu")])
def test_raw_ops_are_differentiable_like_native(device, i):
    name, args, fast, native = _calls(device)[i]
    a0, a1 = _leaves(args), _leaves(args)
    y0, y1 = native(*a0), fast(*a1)
    assert y1.requires_grad and y1.grad_fn is not None
    assert_close(y1, y0, torch.float64)
    for g1, g0 in zip(torch.autograd.grad(y1, a1), torch.autograd.grad(y0, a0)):
        assert_close(g1, g0, torch.float64)


def _linear_after_inplace_change(linear, values, needs, changed):
    """Gradients of a linear whose operand `changed` is modified in place after the forward
    (as a training loop may modify a frozen layer's input): the exception type when backward
    refuses (a saved tensor was modified), else the gradients."""
    args = [v.clone().requires_grad_(bool(n)) for v, n in zip(values, needs)]
    y = linear(*args)
    with torch.no_grad():
        args[changed].mul_(2)
    try:
        return torch.autograd.grad((y * y.detach().cos()).sum(),
                                   [a for a in args if a.requires_grad])
    except RuntimeError as e:
        return type(e)


@pytest.mark.parametrize("changed", [0, 1, 2], ids=["input", "weight", "bias"])
@pytest.mark.parametrize("needs", [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1),
                                   (0, 1, 1), (1, 1, 1)], ids=lambda n: "".join(map(str, n)))
@pytest.mark.parametrize("shape", [(5,), (6, 5), (2, 3, 5)], ids=str)
def test_linear_saves_what_native_saves(device, shape, needs, changed):
    """x is saved only when W requires grad, W only when x does: gradients towards any
    subset of (x, W, b) are native's, and an in-place change of an operand after the
    forward is refused at backward exactly when native refuses it."""
    f64 = dict(dtype=torch.float64, device=device)
    values = randn(*shape, **f64), randn(3, shape[-1], **f64), randn(3, **f64)
    got = _linear_after_inplace_change(ops.linear_forward, values, needs, changed)
    want = _linear_after_inplace_change(F.linear, values, needs, changed)
    if isinstance(want, type):
        assert got is want
    else:
        assert len(got) == len(want)
        for g, r in zip(got, want):
            assert_close(g, r, torch.float64)


@pytest.mark.parametrize("i", range(6), ids=[c[0] for c in _calls("cpu")])
def test_no_graph_without_grad(device, i):
    name, args, fast, _ = _calls(device)[i]
    with torch.no_grad():
        assert not fast(*_leaves(args)).requires_grad
    assert not fast(*[a.detach() for a in args]).requires_grad
    with torch.inference_mode():
        y = fast(*[a.detach().clone() for a in args])
        assert not y.requires_grad and y.is_inference()


@pytest.mark.parametrize("i", range(6), ids=[c[0] for c in _calls("cpu")])
def test_double_backward_like_native(device, i):
    """Gradients taken with create_graph=True are differentiable again: a gradient penalty
    (the sum of the squared gradients) differentiated towards every input matches native,
    also when differentiating towards the inputs only."""
    name, args, fast, native = _calls(device)[i]
    a1, a0 = _leaves(args), _leaves(args)
    g1 = torch.autograd.grad(fast(*a1), a1, create_graph=True)
    g0 = torch.autograd.grad(native(*a0), a0, create_graph=True)
    for x1, x0 in zip(g1, g0):
        assert_close(x1, x0, torch.float64)
    pen1, pen0 = sum(g.pow(2).sum() for g in g1), sum(g.pow(2).sum() for g in g0)
    h1 = torch.autograd.grad(pen1, a1, allow_unused=True, materialize_grads=True)
    h0 = torch.autograd.grad(pen0, a0, allow_unused=True, materialize_grads=True)
    for x1, x0 in zip(h1, h0):  # (an unused input: zeros on both sides)
        assert_close(x1, x0, torch.float64)


@pytest.mark.parametrize("op", ["nll_loss", "relu"])
def test_double_backward_gives_zeros_where_native_does(device, op):
    """NLL's gradient does not depend on its input's values, nor ReLU's on its output's
    (almost everywhere): differentiating them towards that tensor gives zeros, as natively,
    not "unused in the graph"."""
    x = randn(3, 5, dtype=torch.float64, device=device)
    t = torch.tensor([0, 2, 4], device=device)
    got = []
    for lib in (FF, F):
        a = x.clone().requires_grad_()
        if op == "nll_loss":
            (g,) = torch.autograd.grad(lib.nll_loss(a, t, reduction="sum"), a, create_graph=True)
            (h,) = torch.autograd.grad((g * g).sum(), a)
        else:
            y = lib.relu(a)
            (g,) = torch.autograd.grad((y * y.detach()).sum(), a, create_graph=True)
            (h,) = torch.autograd.grad((g * g).sum(), a)
        got.append(h)
    assert torch.equal(got[0], got[1])


_GG_LOSS = [("none", None, 0.0), ("mean", "w", 0.0), ("sum", "w", 0.2), ("mean", None, 0.3)]


@pytest.mark.parametrize("red,weighted,eps", _GG_LOSS, ids=str)
def test_gradgradcheck_losses(device, red, weighted, eps):
    """Second (and, through gradgradcheck's own differentiation, third) derivatives of the
    losses in float64, over (N, C), (C) and spatial inputs with ignored targets."""
    f64 = dict(dtype=torch.float64, device=device)
    for shape in [(5, 4), (4,), (2, 4, 3)]:
        x = randn(*shape, **f64).requires_grad_()
        C = shape[0] if len(shape) == 1 else shape[1]
        t = torch.randint(0, C, () if len(shape) == 1 else (shape[0],) + shape[2:], device=device)
        if t.dim():
            t.view(-1)[0] = -100
        w = torch.rand(C, **f64) + 0.5 if weighted else None
        assert torch.autograd.gradgradcheck(
            lambda x: FF.cross_entropy(x, t, w, reduction=red, label_smoothing=eps), (x,),
            check_fwd_over_rev=True)
        assert torch.autograd.gradgradcheck(
            lambda x: FF.nll_loss(x, t, w, reduction=red), (x,), check_fwd_over_rev=True)


def test_gradgradcheck_layers(device):
    f64 = dict(dtype=torch.float64, device=device)
    x, w, b = randn(2, 3, 5, **f64), randn(4, 5, **f64), randn(4, **f64)
    x, w, b = (a.requires_grad_() for a in (x, w, b))

    def ggc(fn, inputs):
        assert torch.autograd.gradgradcheck(fn, inputs, check_fwd_over_rev=True)
    ggc(FF.linear, (x, w, b))
    ggc(lambda x, w: FF.linear(x, w), (x, w))
    ggc(lambda x: FF.linear(x, w.detach()), (x,))
    ggc(lambda w: FF.linear(x.detach(), w), (w,))
    # relu away from its kink, where finite differences hold
    xr = randn(4, 5, **f64)
    xr = (xr + xr.sign() * 0.1).requires_grad_()
    ggc(FF.relu, (xr,))
    ggc(lambda x: FF.relu(x * 1, inplace=True), (xr,))
    for dim in (0, 1, -1):
        ggc(lambda x: FF.log_softmax(x, dim), (x,))


def test_hessian_of_the_seed_mlp(device):
    """torch.autograd.functional.hessian (reverse over reverse) of a small classifier's loss
    in its first layer's weight, as natively."""
    f64 = dict(dtype=torch.float64, device=device)
    torch.manual_seed(0)
    x, t = randn(8, 6, **f64), torch.randint(0, 3, (8,), device=device)
    w1, b1, w2 = randn(5, 6, **f64), randn(5, **f64), randn(3, 5, **f64)

    def loss(lib):
        return lambda w: lib.nll_loss(lib.log_softmax(
            lib.linear(lib.relu(lib.linear(x, w, b1)), w2), 1), t)
    got = torch.autograd.functional.hessian(loss(FF), w1)
    want = torch.autograd.functional.hessian(loss(F), w1)
    assert_close(got, want, torch.float64)


def test_forward_over_reverse_hessian_of_the_seed_mlp(device):
    """The same Hessian as forward over reverse (the outer Jacobian in forward mode,
    vectorized): dual tensors through the backward ops and the tensors their nodes saved."""
    f64 = dict(dtype=torch.float64, device=device)
    torch.manual_seed(0)
    x, t = randn(8, 6, **f64), torch.randint(0, 3, (8,), device=device)
    w1, b1, w2 = randn(5, 6, **f64), randn(5, **f64), randn(3, 5, **f64)

    def loss(lib):
        return lambda w, b: (lib.nll_loss(lib.log_softmax(
            lib.linear(lib.relu(lib.linear(x, w, b)), w2), 1), t)
            + lib.cross_entropy(lib.linear(x, w, b), t, label_smoothing=0.1))

    def hessian(fn):
        return torch.autograd.functional.hessian(
            fn, (w1, b1), vectorize=True, outer_jacobian_strategy="forward-mode")
    for got, want in zip(hessian(loss(FF)), hessian(loss(F))):
        for g, r in zip(got, want):
            assert_close(g, r, torch.float64)


def _dual(fn, args, tangents):
    """fn at dual tensors: (primal, tangent) of its output."""
    import torch.autograd.forward_ad as fwAD
    with fwAD.dual_level():
        out = fn(*[fwAD.make_dual(a, t) for a, t in zip(args, tangents)])
        return fwAD.unpack_dual(out)


@pytest.mark.parametrize("i", range(6), ids=[c[0] for c in _calls("cpu")])
def test_dual_tensors_like_native(device, i):
    """Forward mode through the raw ops (torch.autograd.forward_ad): the output's tangent."""
    name, args, fast, native = _calls(device)[i]
    tangents = [randn(*a.shape, dtype=a.dtype, device=device) for a in args]
    got, want = _dual(fast, args, tangents), _dual(native, args, tangents)
    assert_close(got.primal, want.primal, torch.float64)
    assert_close(got.tangent, want.tangent, torch.float64)


@pytest.mark.parametrize("i", range(6), ids=[c[0] for c in _calls("cpu")])
def test_reverse_over_forward_like_native(device, i):
    """The gradient of a tangent (its inputs and their tangents requiring grad). Native
    log_softmax (and logsumexp, and cross_entropy through it) fail here: their tangent
    formula modifies a saved exp in place (as does softmax's). The references there
    spell log_softmax out as log(exp(x) / sum(exp(x)))."""
    name, args, fast, native = _calls(device)[i]
    t = torch.tensor([0, 4, 1, 3, 2, 2], device=device)

    def log_softmax(x):
        return (x.exp() / x.exp().sum(1, keepdim=True)).log()
    if name == "log_softmax":
        native = lambda x: log_softmax(x).sin().sum()  # noqa: E731
    if name == "cross_entropy":
        native = lambda x: F.nll_loss(log_softmax(x), t, reduction="sum", ignore_index=2)  # noqa
    tangents = [randn(*a.shape, dtype=a.dtype, device=device) for a in args]

    def grads(fn):
        a, t = _leaves(args), _leaves(tangents)
        tan = _dual(fn, a, t).tangent
        return torch.autograd.grad(tan.sin().sum(), a + t, allow_unused=True)
    for g, r in zip(grads(fast), grads(native)):
        assert (g is None) == (r is None) or (g if r is None else r).abs().max() == 0
        if g is not None and r is not None:
            assert_close(g, r, torch.float64)


def test_dual_outputs_are_freed_inside_the_level(device):
    """A dual output with a graph is freed when dropped, within the dual level (no reference
    cycle between a node, the output it saves and that output's tangent; native relu and
    relu_ have one, fastnn's relu does not)."""
    import torch.autograd.forward_ad as fwAD
    from torch.multiprocessing.reductions import StorageWeakRef
    x = randn(6, 5, dtype=torch.float64, device=device).requires_grad_()
    w = randn(4, 5, dtype=torch.float64, device=device).requires_grad_()
    t = torch.tensor([0, 4, 1, 3, 2, 2], device=device)
    with fwAD.dual_level():
        d = fwAD.make_dual(x, torch.ones_like(x))
        for op in (lambda: FF.log_softmax(d, 1), lambda: FF.relu(d), lambda: FF.linear(d, w),
                   lambda: FF.cross_entropy(d, t, label_smoothing=0.1),
                   lambda: FF.nll_loss(d, t)):
            out = op()
            ref = StorageWeakRef(out.untyped_storage())
            del out
            assert ref.expired()


def test_mean_loss_tangent_over_zero_weight_is_nan_like_native(device):
    """'mean' with every target ignored: the loss is NaN (0 / 0), and so is its tangent."""
    f64 = dict(dtype=torch.float64, device=device)
    x, xt = randn(3, 4, **f64), randn(3, 4, **f64)
    t = torch.full((3,), 1, device=device)
    for fast, native in ((FF.cross_entropy, F.cross_entropy),
                         (FF.nll_loss, F.nll_loss)):
        for eps in (0.0, 0.1) if fast is FF.cross_entropy else (None,):
            kw = dict(ignore_index=1) | ({} if eps is None else dict(label_smoothing=eps))
            got = _dual(lambda x: fast(x, t, **kw), [x], [xt])
            want = _dual(lambda x: native(x, t, **kw), [x], [xt])
            assert got.primal.isnan() and want.primal.isnan()
            assert got.tangent.isnan() and want.tangent.isnan()
            got = torch.func.jvp(lambda x: fast(x, t, **kw), (x,), (xt,))[1]
            assert got.isnan()


def test_dual_input_through_the_seed_mlp(device):
    """Eager forward mode through the classifier's fastnn layers and losses (the tangent of
    the loss in the direction of an input change), as through its torch.nn twin."""
    from fastnn.models import Classifier
    fast = Classifier(hidden_sizes=(32, 16), impl="fastnn").to(device, torch.float64)
    native = Classifier(hidden_sizes=(32, 16), impl="native").to(device, torch.float64)
    native.load_state_dict(fast.state_dict())
    x, xt = randn(8, 784, dtype=torch.float64, device=device), randn(8, 784, dtype=torch.float64,
                                                                      device=device)
    t = torch.randint(0, 10, (8,), device=device)
    got = _dual(lambda x: FF.cross_entropy(fast.logits(x), t) + FF.nll_loss(fast(x), t), [x], [xt])
    want = _dual(lambda x: F.cross_entropy(native.logits(x), t) + F.nll_loss(native(x), t), [x],
                 [xt])
    assert_close(got.primal, want.primal, torch.float64, k=784)
    assert_close(got.tangent, want.tangent, torch.float64, k=784)


def test_dual_class_weight_is_refused(device):
    """As with requires_grad: the losses are not differentiable in their class weights."""
    import torch.autograd.forward_ad as fwAD
    x = randn(4, 3, dtype=torch.float64, device=device)
    t = torch.tensor([0, 2, 1, 1], device=device)
    cw = torch.rand(3, dtype=torch.float64, device=device)
    with fwAD.dual_level():
        w = fwAD.make_dual(cw, torch.ones_like(cw))
        for fn in (FF.nll_loss, FF.cross_entropy):
            with pytest.raises(RuntimeError, match="`weight` cannot be a dual tensor"):
                fn(x, t, weight=w)


def test_two_forwards_then_backwards(device):
    """Everything a backward needs is in its node: two graphs through the same layer
    parameters backpropagate independently, in either order."""
    w = randn(3, 5, device=device).requires_grad_()
    x1, x2 = randn(4, 5, device=device), randn(2, 5, device=device)
    y1, y2 = FF.log_softmax(FF.linear(x1, w), 1), FF.log_softmax(FF.linear(x2, w), 1)
    (g2,) = torch.autograd.grad(y2.sum(), w)
    (g1,) = torch.autograd.grad(y1.sum(), w)
    w0 = w.detach().clone().requires_grad_()
    (r1,) = torch.autograd.grad(F.log_softmax(F.linear(x1, w0), 1).sum(), w0)
    (r2,) = torch.autograd.grad(F.log_softmax(F.linear(x2, w0), 1).sum(), w0)
    assert_close(g1, r1, torch.float32, k=5)
    assert_close(g2, r2, torch.float32, k=5)


@pytest.mark.parametrize("op", ["nll_loss_forward", "cross_entropy_forward"])
def test_loss_side_outputs_are_not_differentiable(device, op):
    x = randn(4, 3, device=device).requires_grad_()
    t = torch.tensor([0, 2, 1, 1], device=device)
    out = getattr(ops, op)(x, t, None, MEAN, -100)
    assert out[0].requires_grad
    assert not any(o.requires_grad for o in out[1:])
    out[0].backward()  # the side outputs' missing gradients are not needed
    assert x.grad is not None


@pytest.mark.parametrize("loss", [FF.nll_loss, FF.cross_entropy], ids=["nll", "ce"])
def test_loss_weight_requiring_grad_is_refused_like_native(device, loss):
    x = randn(4, 3, device=device).requires_grad_()
    t = torch.tensor([0, 2, 1, 1], device=device)
    w = torch.rand(3, device=device).requires_grad_()
    with pytest.raises(RuntimeError, match="not differentiable with respect to `weight`"):
        loss(x, t, weight=w)
    with torch.no_grad():
        loss(x, t, weight=w)
    loss(x, t, weight=w.detach()).backward()


def test_relu_inplace_bumps_version_once_like_native(device):
    for requires_grad in (False, True):
        h0 = randn(3, 4, device=device).requires_grad_(requires_grad) * 1
        h1 = h0.detach().clone().requires_grad_(requires_grad) * 1
        v0, v1 = h0._version, h1._version
        F.relu(h0, inplace=True)
        FF.relu(h1, inplace=True)
        assert h1._version - v1 == h0._version - v0 == 1
        assert torch.equal(h1, h0)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_relu_inplace_bumps_version_without_autograd(device, mode):
    """Under no_grad / inference_mode an in-place ReLU on a normal tensor still bumps its
    version, so overwriting a tensor saved for backward is caught, as natively."""
    guard = torch.no_grad if mode == "no_grad" else torch.inference_mode
    for relu in (torch.relu_, lambda t: FF.relu(t, inplace=True)):
        x = randn(5, device=device).requires_grad_()
        s = torch.tanh(x)  # saves its output for backward
        v = s._version
        with guard():
            relu(s.detach())
        assert s._version == v + 1
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            s.sum().backward()


def test_relu_inplace_on_inference_tensor(device):
    with torch.inference_mode():
        x = randn(5, device=device)
        y = FF.relu(x, inplace=True)
        assert y is x and x.is_inference() and bool((x >= 0).all())


def _small_mlp(fast, device):
    torch.manual_seed(0)
    lin = lambda i, o: torch.nn.Linear(i, o, dtype=torch.float64, device=device)  # noqa: E731
    l1, l2 = lin(6, 5), lin(5, 4)
    if not fast:
        return lambda x: F.log_softmax(F.relu(l2(F.relu(l1(x)))), 1), (l1, l2)
    return (lambda x: FF.log_softmax(FF.relu(FF.linear(FF.relu(FF.linear(x, l1.weight, l1.bias)),
                                                       l2.weight, l2.bias)), 1), (l1, l2))


def test_older_batched_gradients(device):
    """PyTorch's older batching (not torch.func): batched grad_outputs, vectorized
    jacobians and gradcheck's batched-gradient check, through every layer, as native.
    (linear_backward has its own rule there: the generic fallback cannot batch its
    optional outputs.)"""
    x = randn(3, 6, dtype=torch.float64, device=device).requires_grad_()
    results = []
    for fast in (False, True):
        f, (l1, l2) = _small_mlp(fast, device)
        leaves = (x, l1.weight, l1.bias, l2.weight)
        g = randn(5, 3, 4, dtype=torch.float64, device=device)
        batched = torch.autograd.grad(f(x), leaves, g, is_grads_batched=True)
        jac = torch.autograd.functional.jacobian(f, x.detach(), vectorize=True)
        results.append((batched, jac))
        assert torch.autograd.gradcheck(f, (x,), check_batched_grad=True)
    (b0, j0), (b1, j1) = results
    for g1, g0 in zip(b1, b0):
        assert g1.shape == g0.shape
        assert_close(g1, g0, torch.float64)
    assert_close(j1, j0, torch.float64)


def _memory_tools():
    """(name, loss of model(x) under one of autograd's memory / debugging tools)."""
    from torch.utils.checkpoint import checkpoint

    def saved_hooks(m, x, t):
        with torch.autograd.graph.saved_tensors_hooks(lambda s: s.clone(), lambda s: s):
            return F.nll_loss(m(x), t)

    def save_on_cpu(m, x, t):
        with torch.autograd.graph.save_on_cpu():
            return F.nll_loss(m(x), t)

    def anomaly(m, x, t):
        with torch.autograd.detect_anomaly(check_nan=True):
            return F.nll_loss(m(x), t)

    def module_hooks(m, x, t):
        m[0].register_full_backward_hook(lambda mod, gi, go: None)
        m[2].register_full_backward_pre_hook(lambda mod, go: None)
        return F.nll_loss(m(x), t)

    return [
        ("checkpoint", lambda m, x, t: F.nll_loss(checkpoint(m, x, use_reentrant=False), t)),
        ("checkpoint_reentrant",
         lambda m, x, t: F.nll_loss(checkpoint(m, x.requires_grad_(), use_reentrant=True), t)),
        ("saved_tensors_hooks", saved_hooks), ("save_on_cpu", save_on_cpu),
        ("detect_anomaly", anomaly), ("full_backward_hooks", module_hooks),
    ]


@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("i", range(6), ids=[c[0] for c in _memory_tools()])
def test_autograd_memory_tools(device, i):
    """Activation checkpointing (both forms), saved-tensor hooks, CPU offload of saved
    tensors, anomaly mode and module backward hooks give native's loss and gradients."""
    import fastnn.nn as fnn
    _, loss_of = _memory_tools()[i]
    x = randn(5, 8, dtype=torch.float64, device=device)
    t = torch.tensor([0, 1, 2, 3, 0], device=device)
    results = []
    for lib in (torch.nn, fnn):
        torch.manual_seed(0)
        m = lib.Sequential(lib.Linear(8, 16), lib.ReLU(), lib.Linear(16, 4),
                           lib.LogSoftmax(dim=1)).to(device, torch.float64)
        loss = loss_of(m, x.clone(), t)
        loss.backward()  # (reentrant checkpointing supports .backward() only)
        results.append((loss.detach(), [p.grad for p in m.parameters()]))
    (l0, g0), (l1, g1) = results
    assert_close(l1, l0, torch.float64)
    for a, b in zip(g1, g0):
        assert_close(a, b, torch.float64)


def test_saved_tensors_like_native(device):
    """The seed MLP's fastnn nodes save as many tensors as native's (saved-tensor hooks see
    each one), so memory tools built on those hooks treat both alike."""
    import fastnn.nn as fnn
    from support import seed_mlp, synthetic_mnist
    x, t = synthetic_mnist(8, device=device)
    counts = []
    for lib in (torch.nn, fnn):
        packed = []
        model = seed_mlp(lib).to(device)
        with torch.autograd.graph.saved_tensors_hooks(lambda s: packed.append(s) or s, lambda s: s):
            F.nll_loss(model(x), t)
        counts.append(len(packed))
    assert counts[1] == counts[0]
