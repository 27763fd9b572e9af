"""fastnn under torch.func: grad, vjp, jacrev, vmap, and vmap of grad (per-sample gradients)
give native results, through fastnn.functional and the layers; vmap needs no PyTorch
fallback (no "batching rule" warning); ordinary calls keep the C++ autograd graph;
gradients of gradients and forward mode (jvp, jacfwd, hessian) work; what is not supported
(forward mode over forward mode) raises a clear error."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, jvp, vjp, vmap

import fastnn.functional as FF
from fastnn.models import Classifier
from support import assert_close, randn

B = 3  # vmapped batch size


def _cases(device):
    """(name, fastnn fn, native fn, args): the differentiable arguments come first."""
    f64 = dict(dtype=torch.float64, device=device)
    x, w, b = randn(6, 5, **f64), randn(4, 5, **f64), randn(4, **f64)
    t = torch.tensor([0, 4, 1, 3, 2, 2], device=device)
    cw = torch.rand(5, **f64) + 0.5
    return [
        ("linear", FF.linear, F.linear, (x, w, b)),
        ("linear_nobias", lambda x, w: FF.linear(x, w), lambda x, w: F.linear(x, w), (x, w)),
        ("relu", FF.relu, F.relu, (x,)),
        ("relu_", lambda x: FF.relu(x * 1, inplace=True),
         lambda x: F.relu(x * 1, inplace=True), (x,)),
        ("log_softmax", lambda x: FF.log_softmax(x, 1), lambda x: F.log_softmax(x, 1), (x,)),
        ("log_softmax_dim0", lambda x: FF.log_softmax(x, 0), lambda x: F.log_softmax(x, 0), (x,)),
        ("nll_loss", lambda x: FF.nll_loss(x, t), lambda x: F.nll_loss(x, t), (x,)),
        ("nll_loss_weighted_none",
         lambda x: FF.nll_loss(x, t, weight=cw, ignore_index=2, reduction="none"),
         lambda x: F.nll_loss(x, t, weight=cw, ignore_index=2, reduction="none"), (x,)),
        ("cross_entropy", lambda x: FF.cross_entropy(x, t), lambda x: F.cross_entropy(x, t),
         (x,)),
        ("cross_entropy_weighted_sum",
         lambda x: FF.cross_entropy(x, t, weight=cw, ignore_index=1, reduction="sum"),
         lambda x: F.cross_entropy(x, t, weight=cw, ignore_index=1, reduction="sum"), (x,)),
        ("cross_entropy_smoothed",
         lambda x: FF.cross_entropy(x, t, weight=cw, label_smoothing=0.2),
         lambda x: F.cross_entropy(x, t, weight=cw, label_smoothing=0.2), (x,)),
        ("cross_entropy_probabilities",  # towards the input and the target
         lambda x, q: FF.cross_entropy(x, q, weight=cw, label_smoothing=0.1),
         lambda x, q: F.cross_entropy(x, q, weight=cw, label_smoothing=0.1),
         (x, torch.softmax(randn(6, 5, **f64), 1))),
    ]


IDS = [c[0] for c in _cases("cpu")]


def _scalar(fn):
    return lambda *a: fn(*a).sin().sum()


@pytest.mark.parametrize("i", range(len(IDS)), ids=IDS)
def test_grad(device, i):
    _, fast, native, args = _cases(device)[i]
    argnums = tuple(range(len(args)))
    got = grad(_scalar(fast), argnums)(*args)
    want = grad(_scalar(native), argnums)(*args)
    for g, r in zip(got, want):
        assert_close(g, r, torch.float64)


@pytest.mark.parametrize("argnums", [(0,), (1,), (2,), (0, 2), (1, 2)])
def test_grad_of_linear_towards_some_arguments(device, argnums):
    """Linear saves only what the gradients asked for read (x for dW, W for dx); the
    backward gets shape-only stand-ins for the rest."""
    _, fast, native, args = _cases(device)[0]
    got = grad(_scalar(fast), argnums)(*args)
    want = grad(_scalar(native), argnums)(*args)
    for g, r in zip(got, want):
        assert_close(g, r, torch.float64)


@pytest.mark.parametrize("i", range(len(IDS)), ids=IDS)
def test_vjp_and_jacrev(device, i):
    _, fast, native, args = _cases(device)[i]
    out, pull = vjp(fast, *args)
    out0, pull0 = vjp(native, *args)
    assert_close(out, out0, torch.float64)
    cot = randn(*out.shape, dtype=out.dtype, device=device)
    for g, r in zip(pull(cot), pull0(cot)):
        assert_close(g, r, torch.float64)
    assert_close(jacrev(fast)(*args), jacrev(native)(*args), torch.float64)


def _no_fallback_warning(fn):
    """Run fn, failing on PyTorch's vmap fallback warning (an op without a batching rule)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
    fallback = [str(w.message) for w in caught if "batching rule" in str(w.message)]
    assert not fallback, fallback
    return out


def _batched(args, bdim, which):
    """B copies of args (fresh values), stacked along bdim for the args listed in `which`."""
    out, in_dims = [], []
    for k, a in enumerate(args):
        if k in which:
            a = torch.stack([randn(*a.shape, dtype=a.dtype, device=a.device)
                             for _ in range(B)], bdim)
        out.append(a)
        in_dims.append(bdim if k in which else None)
    return out, tuple(in_dims)


@pytest.mark.parametrize("bdim", [0, 1])
@pytest.mark.parametrize("i", range(len(IDS)), ids=IDS)
def test_vmap(device, i, bdim):
    """Batched over the first argument (the input), and for linear over all of them."""
    _, fast, native, args = _cases(device)[i]
    for which in ({0}, set(range(len(args)))) if IDS[i].startswith("linear") else ({0},):
        bargs, in_dims = _batched(args, bdim, which)
        got = _no_fallback_warning(lambda: vmap(fast, in_dims)(*bargs))
        assert_close(got, vmap(native, in_dims)(*bargs), torch.float64)


@pytest.mark.parametrize("i", range(len(IDS)), ids=IDS)
def test_vmap_empty_batch(device, i):
    """B = 0 with every argument batched: an empty batch of outputs shaped like one
    sample's (the per-sample rules take the shapes from the ops' fake kernels; native's
    nll_loss fails here, so the reference is one unbatched call)."""
    name, fast, _, args = _cases(device)[i]
    if name == "cross_entropy_probabilities":
        # composed of native element-wise ops, and vmap of native `tensor * number` fails
        # for B = 0 in this torch (IndexError from select)
        pytest.skip("native element-wise ops with a number fail under vmap with B = 0")
    got = vmap(fast)(*[a.new_empty((0, *a.shape)) for a in args])
    one = fast(*args)
    assert (got.shape, got.dtype, got.device) == ((0, *one.shape), one.dtype, one.device)


@pytest.mark.parametrize("i", range(len(IDS)), ids=IDS)
def test_vmap_of_grad(device, i):
    """Per-sample gradients: vmap over grad, every op and its backward batched."""
    _, fast, native, args = _cases(device)[i]
    bargs, in_dims = _batched(args, 0, {0})
    argnums = tuple(range(len(args)))
    got = _no_fallback_warning(lambda: vmap(grad(_scalar(fast), argnums), in_dims)(*bargs))
    want = vmap(grad(_scalar(native), argnums), in_dims)(*bargs)
    for g, r in zip(got, want):
        assert_close(g, r, torch.float64)


@pytest.mark.parametrize("loss", ["nll", "ce"])
def test_per_sample_gradients_of_the_seed_mlp(device, loss):
    """The torch.func recipe for per-sample gradients, on the tutorial classifier built
    from fastnn layers, against the same model built from torch.nn layers. (The model ends
    in log_softmax, so cross-entropy on its output is the NLL loss again, through the fused
    kernels.)"""
    fast = Classifier(impl="fastnn").to(device, torch.float64)
    native = Classifier(impl="native").to(device, torch.float64)
    native.load_state_dict(fast.state_dict())
    x = randn(8, 784, dtype=torch.float64, device=device)
    t = torch.randint(0, 10, (8,), device=device)

    def per_sample(model, loss_fn):
        params = {k: v.detach() for k, v in model.named_parameters()}

        def loss_of(p, xi, ti):
            out = functional_call(model, p, (xi.unsqueeze(0),))
            return loss_fn(out, ti.unsqueeze(0))
        return vmap(grad(loss_of), in_dims=(None, 0, 0))(params, x, t)

    fast_loss = FF.cross_entropy if loss == "ce" else FF.nll_loss
    native_loss = F.cross_entropy if loss == "ce" else F.nll_loss
    got = _no_fallback_warning(lambda: per_sample(fast, fast_loss))
    want = per_sample(native, native_loss)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].shape == (8, *dict(native.named_parameters())[k].shape)
        assert_close(got[k], want[k], torch.float64, k=784)


def test_forward_mode_through_the_seed_mlp(device):
    """jvp of the classifier's loss in its parameters (a directional derivative, as in
    forward-gradient training), and the Hessian-vector product jvp(grad), through the
    fastnn layers, against the same model built from torch.nn layers."""
    fast = Classifier(hidden_sizes=(32, 16), impl="fastnn").to(device, torch.float64)
    native = Classifier(hidden_sizes=(32, 16), impl="native").to(device, torch.float64)
    native.load_state_dict(fast.state_dict())
    x = randn(8, 784, dtype=torch.float64, device=device)
    t = torch.randint(0, 10, (8,), device=device)
    params = {k: v.detach() for k, v in fast.named_parameters()}
    direction = {k: randn(*v.shape, dtype=v.dtype, device=device) for k, v in params.items()}

    def loss(model, loss_fn):
        return lambda p: loss_fn(functional_call(model, p, (x,)), t)
    for fast_loss, native_loss in ((FF.nll_loss, F.nll_loss),
                                   (FF.cross_entropy, F.cross_entropy)):
        got = jvp(loss(fast, fast_loss), (params,), (direction,))
        want = jvp(loss(native, native_loss), (params,), (direction,))
        assert_close(got[0], want[0], torch.float64, k=784)
        assert_close(got[1], want[1], torch.float64, k=784)
        hvp = jvp(grad(loss(fast, fast_loss)), (params,), (direction,))[1]
        hvp0 = jvp(grad(loss(native, native_loss)), (params,), (direction,))[1]
        for k in params:
            assert_close(hvp[k], hvp0[k], torch.float64, k=784)


def test_ordinary_calls_keep_the_cpp_graph(device):
    """Outside a transform, the graph is the C++ one (no Python autograd.Function)."""
    x = randn(4, 5, device=device).requires_grad_()
    w = randn(3, 5, device=device).requires_grad_()
    assert "LinearFunction" in FF.linear(x, w).grad_fn.name()
    assert "ReLUFunction" in FF.relu(x).grad_fn.name()
    assert "LogSoftmaxFunction" in FF.log_softmax(x, 1).grad_fn.name()


def test_functionalize(device):
    """functionalize alone (no differentiating transform) runs the ops as usual."""
    x = randn(6, 5, dtype=torch.float64, device=device)
    w = randn(4, 5, dtype=torch.float64, device=device)
    t = torch.tensor([0, 3, 1, 2, 2, 1], device=device)

    def f(x):
        h = FF.relu(FF.linear(x, w), inplace=True)
        return FF.cross_entropy(h, t) + FF.nll_loss(FF.log_softmax(h, 1), t)
    assert_close(torch.func.functionalize(f)(x), f(x), torch.float64)


def test_grad_of_grad(device):
    """A second torch.func.grad, and jacrev of jacrev (a Hessian), through every op, as
    natively."""
    f64 = dict(dtype=torch.float64, device=device)
    x, w, b = randn(5, **f64), randn(4, 5, **f64), randn(4, **f64)
    t, cw = torch.tensor(1, device=device), torch.rand(4, **f64) + 0.5

    def f(lib):
        def loss(x):
            h = lib.linear(lib.relu(x), w, b)
            return (lib.cross_entropy(h, t, cw, label_smoothing=0.1)
                    + lib.nll_loss(lib.log_softmax(h, 0), t))
        return loss
    got = grad(lambda x: grad(f(FF))(x).sin().sum())(x)
    want = grad(lambda x: grad(f(F))(x).sin().sum())(x)
    assert_close(got, want, torch.float64)
    assert_close(jacrev(jacrev(f(FF)))(x), jacrev(jacrev(f(F)))(x), torch.float64)


@pytest.mark.parametrize("i", range(len(IDS)), ids=IDS)
def test_jvp_and_jacfwd(device, i):
    """Forward mode towards every differentiable argument at once (jvp), and jacfwd."""
    _, fast, native, args = _cases(device)[i]
    tangents = tuple(randn(*a.shape, dtype=a.dtype, device=device) for a in args)
    out, tan = jvp(fast, args, tangents)
    out0, tan0 = jvp(native, args, tangents)
    assert_close(out, out0, torch.float64)
    assert_close(tan, tan0, torch.float64)
    argnums = tuple(range(len(args)))
    for g, r in zip(jacfwd(fast, argnums)(*args), jacfwd(native, argnums)(*args)):
        assert_close(g, r, torch.float64)


@pytest.mark.parametrize("i", range(len(IDS)), ids=IDS)
def test_forward_over_reverse(device, i):
    """torch.func.hessian (jacfwd of jacrev) and jvp of grad: forward mode through the
    backward ops."""
    _, fast, native, args = _cases(device)[i]
    scalar_fast, scalar_native = _scalar(fast), _scalar(native)
    assert_close(hessian(scalar_fast)(*args), hessian(scalar_native)(*args), torch.float64)
    argnums = tuple(range(len(args)))
    tangents = tuple(randn(*a.shape, dtype=a.dtype, device=device) for a in args)
    got = jvp(grad(scalar_fast, argnums), args, tangents)[1]
    want = jvp(grad(scalar_native, argnums), args, tangents)[1]
    for g, r in zip(got, want):
        assert_close(g, r, torch.float64)


def test_reverse_over_forward(device):
    """jacrev of jacfwd through the seed MLP's ops: the tangents are differentiable."""
    f64 = dict(dtype=torch.float64, device=device)
    x, w, b = randn(5, **f64), randn(4, 5, **f64), randn(4, **f64)
    t = torch.tensor(1, device=device)

    def f(lib):
        return lambda x: lib.cross_entropy(lib.log_softmax(lib.relu(lib.linear(x, w, b)), 0),
                                           t, label_smoothing=0.1)
    assert_close(jacrev(jacfwd(f(FF)))(x), jacrev(jacfwd(f(F)))(x), torch.float64)


def test_forward_over_forward_is_refused(device):
    """jacfwd of jacfwd: autograd.Function runs its jvp with forward mode off, so the inner
    tangent would get a zero tangent of its own. Refused (never a wrong zero)."""
    x = randn(4, 5, dtype=torch.float64, device=device)
    for f in (lambda x: FF.relu(x).sum(), lambda x: FF.log_softmax(x, 1).sin().sum()):
        with pytest.raises(NotImplementedError, match="forward mode over forward mode"):
            jacfwd(jacfwd(f))(x)


def test_class_weight_made_inside_a_transform(device):
    """A class weight an op makes inside the transformed function from constants (here
    `.to(dtype)`) is wrapped by the transform but has no tangent: accepted, as natively,
    directly under jvp / jacfwd and in nested transforms (hessian, jvp of grad)."""
    x = randn(6, 4, dtype=torch.float64, device=device)
    v = randn(6, 4, dtype=torch.float64, device=device)
    t = torch.tensor([0, 3, 1, 1, 2, 0], device=device)
    cw = torch.rand(4, device=device)

    def f(lib):
        return lambda x: lib.cross_entropy(x, t, weight=cw.to(x.dtype), label_smoothing=0.1)
    for transform in (lambda f: jvp(f, (x,), (v,))[1], lambda f: jacfwd(f)(x),
                      lambda f: hessian(f)(x), lambda f: jvp(grad(f), (x,), (v,))[1]):
        assert_close(transform(f(FF)), transform(f(F)), torch.float64)


def test_class_weight_is_not_differentiable(device):
    x = torch.log_softmax(randn(4, 3, dtype=torch.float64, device=device), 1)
    t = torch.tensor([0, 2, 1, 1], device=device)
    cw = torch.ones(3, dtype=torch.float64, device=device)
    for fn in (FF.nll_loss, FF.cross_entropy):
        with pytest.raises(RuntimeError, match="not differentiable with respect to `weight`"):
            grad(lambda w: fn(x, t, weight=w))(cw)
        with pytest.raises(RuntimeError, match="cannot have a forward-mode tangent"):
            jvp(lambda w: fn(x, t, weight=w), (cw,), (cw,))
        with pytest.raises(RuntimeError, match="cannot have a forward-mode tangent"):
            jacfwd(lambda w: fn(x, t, weight=w * 2))(cw)
        # a weight with a tangent of an outer jvp level, used inside an inner grad
        with pytest.raises(RuntimeError, match="cannot have a forward-mode tangent"):
            jvp(lambda w: grad(lambda y: fn(y, t, weight=w))(x), (cw,), (cw,))
