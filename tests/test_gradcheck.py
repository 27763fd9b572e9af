"""torch.autograd.gradcheck in float64 for every op, through the fastnn.functional API:
reverse mode, and forward mode (dual tensors, also batched through vmap) against the same
finite differences. Second derivatives: test_autograd.py."""
import pytest
import torch
from torch.autograd import gradcheck

import fastnn.functional as FF
from support import randn

pytestmark = pytest.mark.dtypes(torch.float64)


def away_from_zero(*shape, device):
    """Values with |x| >= 0.2, so the finite differences (eps 1e-6) never cross relu's kink."""
    x = randn(*shape, dtype=torch.float64, device=device)
    return torch.where(x >= 0, x + 0.2, x - 0.2)


def gc(fn, inputs):
    assert gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, check_backward_ad=True,
                     check_batched_grad=False, check_grad_dtypes=True, check_forward_ad=True,
                     check_batched_forward_grad=True)


@pytest.mark.parametrize("shape", [(4, 5), (5,), (2, 3, 5), (1, 5), (0, 5)], ids=str)
@pytest.mark.parametrize("has_bias", [True, False], ids=["bias", "nobias"])
def test_gradcheck_linear(device, dtype, shape, has_bias):
    x = randn(*shape, dtype=dtype, device=device).requires_grad_()
    w = randn(3, 5, dtype=dtype, device=device).requires_grad_()
    b = randn(3, dtype=dtype, device=device).requires_grad_() if has_bias else None
    gc(FF.linear, (x, w, b))


def test_gradcheck_linear_noncontiguous(device, dtype):
    x = randn(5, 4, dtype=dtype, device=device).t().requires_grad_()
    w = randn(5, 3, dtype=dtype, device=device).t().requires_grad_()
    b = randn(6, dtype=dtype, device=device)[::2].requires_grad_()
    gc(FF.linear, (x, w, b))


def test_gradcheck_relu(device, dtype):
    x = away_from_zero(3, 7, device=device).requires_grad_()
    gc(FF.relu, (x,))
    gc(lambda t: FF.relu(t * 1.0, inplace=True), (x,))  # in-place on a non-leaf
    gc(FF.relu, (away_from_zero(6, 4, device=device).t().requires_grad_(),))


@pytest.mark.parametrize("shape,dim", [((6,), 0), ((6,), -1), ((3, 5), 1), ((3, 5), 0),
                                       ((2, 3, 4), 1), ((2, 3, 4), -1), ((2, 3, 2, 3), 2),
                                       ((2, 3, 2, 3), -4)], ids=str)
def test_gradcheck_log_softmax(device, dtype, shape, dim):
    x = randn(*shape, dtype=dtype, device=device).requires_grad_()
    gc(lambda t: FF.log_softmax(t, dim), (x,))


def test_gradcheck_log_softmax_noncontiguous(device, dtype):
    x = randn(5, 4, dtype=dtype, device=device).t().requires_grad_()
    gc(lambda t: FF.log_softmax(t, 1), (x,))
    gc(lambda t: FF.log_softmax(t, 0), (x,))


LOSS_CASES = [
    # shape, weighted, ignore_index, reduction
    ((4, 5), False, None, "mean"),
    ((4, 5), True, None, "mean"),
    ((4, 5), True, 2, "mean"),
    ((4, 5), True, 2, "sum"),
    ((4, 5), False, 1, "none"),
    ((5,), True, None, "mean"),
    ((5,), False, None, "none"),
    ((3, 4, 2), True, 0, "mean"),
    ((2, 3, 2, 2), False, 1, "sum"),
    ((2, 3, 2, 2), True, -1, "none"),
]


def _loss_inputs(shape, weighted, ignore_index, device):
    C = shape[0] if len(shape) == 1 else shape[1]
    tshape = () if len(shape) == 1 else (shape[0],) + shape[2:]
    t = torch.randint(0, C, tshape, device=device)
    if ignore_index is not None and t.dim() > 0:
        t.view(-1)[::3] = ignore_index  # some targets ignored
    w = torch.rand(C, dtype=torch.float64, device=device) + 0.5 if weighted else None
    kw = {"reduction": None}
    if ignore_index is not None:
        kw["ignore_index"] = ignore_index
    return t, w, kw


@pytest.mark.parametrize("shape,weighted,ignore_index,reduction", LOSS_CASES, ids=str)
@pytest.mark.parametrize("loss", ["nll_loss", "cross_entropy"])
def test_gradcheck_losses(device, dtype, loss, shape, weighted, ignore_index, reduction):
    x = randn(*shape, dtype=dtype, device=device).requires_grad_()
    t, w, kw = _loss_inputs(shape, weighted, ignore_index, device)
    kw["reduction"] = reduction
    fn = getattr(FF, loss)
    gc(lambda inp: fn(inp, t, w, **kw), (x,))


@pytest.mark.parametrize("shape,weighted,ignore_index,reduction", LOSS_CASES, ids=str)
def test_gradcheck_cross_entropy_label_smoothing(device, dtype, shape, weighted, ignore_index,
                                                 reduction):
    x = randn(*shape, dtype=dtype, device=device).requires_grad_()
    t, w, kw = _loss_inputs(shape, weighted, ignore_index, device)
    kw["reduction"] = reduction
    gc(lambda inp: FF.cross_entropy(inp, t, w, label_smoothing=0.3, **kw), (x,))


def test_gradcheck_mlp_chain(device, dtype):
    """The whole seed-MLP chain, small: linear -> relu -> linear -> log_softmax -> nll."""
    for seed in range(100):  # relu kinks: pick inputs whose pre-activations are not near 0
        torch.manual_seed(seed)
        x = randn(4, 6, dtype=dtype, device=device)
        w1, b1 = randn(5, 6, dtype=dtype, device=device), randn(5, dtype=dtype, device=device)
        if (x @ w1.t() + b1).abs().min() > 0.05:
            break
    w2 = randn(3, 5, dtype=dtype, device=device)
    x, w1, b1, w2 = (t.requires_grad_() for t in (x, w1, b1, w2))
    t = torch.tensor([0, 2, 1, 2], device=device)

    def f(x, w1, b1, w2):
        h = FF.relu(FF.linear(x, w1, b1))
        return FF.nll_loss(FF.log_softmax(FF.linear(h, w2), 1), t)

    gc(f, (x, w1, b1, w2))
