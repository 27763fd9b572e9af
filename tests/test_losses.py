"""fastnn nll_loss / cross_entropy (and NLLLoss / CrossEntropyLoss) vs native, over the
option matrix: input shapes (N, C), (C), (N, C, d1), (N, C, d1, d2); weight None/given;
ignore_index default and set (with targets equal to it); reduction none/mean/sum;
all-ignored and empty batches; non-contiguous inputs; values and input gradients."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastnn
import fastnn.functional as FF
from support import HALF_DTYPES, assert_close, leaf, make_layout, nan_in_one_thread, randn

LOSSES = {
    "nll": (F.nll_loss, FF.nll_loss),
    "ce": (F.cross_entropy, FF.cross_entropy),
}
SHAPES = [(5, 7), (7,), (4, 5, 3), (2, 4, 3, 5), (1, 1), (300, 10), (8, 1000)]
REDUCTIONS = ["none", "mean", "sum"]
IGNORE = [None, 2, -1]  # None: the default (-100) with no target equal to it


def make_inputs(shape, dtype, device, ignore_index=None, weighted=False, ignore_frac=0.3):
    C = shape[0] if len(shape) == 1 else shape[1]
    tshape = () if len(shape) == 1 else (shape[0],) + tuple(shape[2:])
    x = randn(*shape, dtype=dtype, device=device, scale=2)
    t = torch.randint(0, max(C, 1), tshape, device=device)
    if ignore_index is not None and t.numel() > 0:
        mask = torch.rand(tshape, device=device) < ignore_frac
        if t.dim() == 0:
            mask = torch.tensor(False, device=device)
        t = torch.where(mask, torch.full_like(t, ignore_index), t)
    w = (torch.rand(C, dtype=torch.float64) * 1.5 + 0.5).to(dtype=dtype, device=device) if weighted else None
    return x, t, w


def kwargs_of(reduction, ignore_index):
    kw = dict(reduction=reduction)
    if ignore_index is not None:
        kw["ignore_index"] = ignore_index
    return kw


def reference_dtype(dtype):
    """The dtype native runs in as fastnn's reference. fastnn's float16/bfloat16 losses
    accumulate in float32 on every device (as native CUDA's do); native CPU's accumulate in
    the half type itself (a float16 sum of 1000 smoothed log-probs overflows to inf), so
    for half types the reference is native in float32, rounded to the half type."""
    return torch.float32 if dtype in HALF_DTYPES else dtype


def check_loss(name, x, t, w, kw, dtype, equal_nan=False):
    native, fast = LOSSES[name]
    ref = reference_dtype(dtype)
    x0, x1 = leaf(x.to(ref)), leaf(x)
    l0 = native(x0, t, None if w is None else w.to(ref), **kw)
    l1 = fast(x1, t, w, **kw)
    k = max(t.numel(), 1) * (x.shape[0] if x.dim() == 1 else x.shape[1] if name == "ce" else 1)
    assert_close(l1, l0.detach().to(dtype), dtype, k=k, equal_nan=equal_nan)
    assert l1.is_contiguous()
    g = randn(*l0.shape, dtype=dtype, device=x.device) if l0.dim() else torch.tensor(
        1.7, dtype=dtype, device=x.device)
    l0.backward(g.to(ref))
    l1.backward(g)
    assert_close(x1.grad, x0.grad.to(dtype), dtype, k=k, equal_nan=equal_nan)
    return l1


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("weighted", [False, True], ids=["noweight", "weight"])
@pytest.mark.parametrize("ignore_index", IGNORE, ids=lambda i: f"ii{i}")
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_loss_matrix(device, dtype, name, shape, weighted, ignore_index, reduction):
    x, t, w = make_inputs(shape, dtype, device, ignore_index, weighted)
    check_loss(name, x, t, w, kwargs_of(reduction, ignore_index), dtype)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("shape", [(6, 4), (3, 4, 5), (4,)], ids=str)
@pytest.mark.parametrize("weighted", [False, True], ids=["noweight", "weight"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_loss_all_ignored(device, dtype, name, shape, weighted, reduction):
    """Every target is ignore_index: mean is 0/0 = NaN natively; sum is 0; none is 0s."""
    x, t, w = make_inputs(shape, dtype, device, weighted=weighted)
    t = torch.full_like(t, 3)
    kwargs = dict(reduction=reduction, ignore_index=3)
    if len(shape) == 1 and device == "cuda":
        # Native CUDA returns 0 rather than NaN for the mean over a (C)-shaped input whose
        # target is ignored; native CPU returns 0/0 = NaN, as both do for batched inputs.
        # fastnn returns NaN on every device, so the reference is native on the CPU.
        ref = LOSSES[name][0](x.cpu().float(), t.cpu(), None if w is None else w.cpu().float(),
                              **kwargs)
        out = LOSSES[name][1](x, t, w, **kwargs)
        torch.testing.assert_close(out.cpu().float(), ref, equal_nan=True)
    else:
        check_loss(name, x, t, w, kwargs, dtype, equal_nan=True)
    out = LOSSES[name][1](x, t, w, **kwargs)
    if reduction == "mean":
        assert torch.isnan(out)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("shape", [(0, 5), (0, 5, 3), (2, 5, 0), (0, 0)], ids=str)
@pytest.mark.parametrize("weighted", [False, True], ids=["noweight", "weight"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_loss_empty_batch(device, dtype, name, shape, weighted, reduction):
    x, t, w = make_inputs(shape, dtype, device, weighted=weighted)
    l1 = check_loss(name, x, t, w, dict(reduction=reduction), dtype, equal_nan=True)
    if reduction == "none":
        assert l1.shape == t.shape
    else:
        assert l1.shape == ()


@pytest.mark.dtypes(torch.float32, torch.float64)
@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("layout", ["transposed", "strided", "sliced"])
def test_loss_noncontiguous(device, dtype, name, reduction, layout):
    x, t, w = make_inputs((9, 6), dtype, device, ignore_index=1, weighted=True)
    x = make_layout(x, layout)
    t = make_layout(t, "strided")
    w = make_layout(w, "strided")
    check_loss(name, x, t, w, dict(reduction=reduction, ignore_index=1), dtype)
    # spatial input with the class dim last in memory (channels-last-like)
    t3 = torch.randint(0, 4, (3, 5), device=device).t().contiguous().t()
    x3 = randn(3, 4, 5, dtype=dtype, device=device).permute(0, 2, 1).contiguous().permute(0, 2, 1)
    check_loss(name, x3, t3, None, dict(reduction=reduction), dtype)


@pytest.mark.dtypes(torch.float32, torch.float64)
@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_loss_large_batch(device, dtype, name, reduction):
    """Big enough for multi-threaded / multi-block reductions."""
    x, t, w = make_inputs((5000, 10), dtype, device, ignore_index=0, weighted=True, ignore_frac=0.1)
    check_loss(name, x, t, w, dict(reduction=reduction, ignore_index=0), dtype)
    x, t, w = make_inputs((16, 7, 33, 17), dtype, device, weighted=False)
    check_loss(name, x, t, w, dict(reduction=reduction), dtype)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_large_logits(device, dtype, reduction):
    scale = 5e3 if dtype == torch.float16 else 1e4
    x = randn(32, 50, dtype=dtype, device=device) * scale
    t = torch.randint(0, 50, (32,), device=device)
    l0 = F.cross_entropy(x.to(reference_dtype(dtype)), t, reduction=reduction).to(dtype)
    l1 = FF.cross_entropy(x, t, reduction=reduction)
    # Finite wherever native is (a float16 sum of 32 losses of ~1e4 overflows in both).
    assert torch.equal(torch.isfinite(l1), torch.isfinite(l0))
    # losses are O(scale): errors are relative to |x|
    atol = 8 * torch.finfo(dtype).eps * x.abs().max().item() * (32 if reduction == "sum" else 1)
    torch.testing.assert_close(l1, l0, rtol=1e-4 if dtype != torch.bfloat16 else 4e-2, atol=atol)
    x0, x1 = leaf(x.to(reference_dtype(dtype))), leaf(x)
    F.cross_entropy(x0, t, reduction=reduction).sum().backward()
    FF.cross_entropy(x1, t, reduction=reduction).sum().backward()
    assert torch.isfinite(x1.grad).all()
    assert_close(x1.grad, x0.grad.to(dtype), dtype, k=50)


@pytest.mark.dtypes(torch.float32, torch.float64)
@pytest.mark.parametrize("offset", [0.0, 1e2, 1e4, 1e8], ids=lambda o: f"offset{o:g}")
@pytest.mark.parametrize("shape", [(64, 10), (16, 300), (4, 10, 6)], ids=str)
def test_cross_entropy_grad_at_large_offsets(device, dtype, offset, shape):
    """The backward's softmax is rounded like native log_softmax's, (x - max) - log-sum,
    so shifting every logit by a large constant costs no more accuracy than natively
    (a single saved max + log-sum would lose half an ulp of the offset)."""
    x = randn(*shape, dtype=torch.float64, device=device, scale=3) + offset
    x = x.to(dtype)  # the test's logits, exactly representable in dtype
    t = torch.randint(0, shape[1], (shape[0],) + shape[2:], device=device)
    ref = leaf(x.double())
    F.cross_entropy(ref, t, reduction="sum").backward()
    errs = []
    for f in (F, FF):
        a = leaf(x)
        f.cross_entropy(a, t, reduction="sum").backward()
        errs.append((a.grad.double() - ref.grad).abs().max().item())
    native_err, fastnn_err = errs
    assert fastnn_err <= 4 * native_err + 8 * torch.finfo(dtype).eps, (fastnn_err, native_err)


def test_cross_entropy_grad_of_equal_huge_logits(device):
    x = torch.full((1, 4), 1e8, device=device, requires_grad=True)
    FF.cross_entropy(x, torch.tensor([0], device=device)).backward()
    # within a few ulp: CUDA's expf (2-ulp accurate) may not round exp(-log 4) to 0.25
    torch.testing.assert_close(x.grad, torch.tensor([[-0.75, 0.25, 0.25, 0.25]], device=device),
                               rtol=4 * torch.finfo(torch.float32).eps, atol=0)


def test_cross_entropy_lse_parts(device, dtype):
    """The raw op's lse holds (max, log(sum(exp(x - max)))) per position."""
    x = randn(6, 9, dtype=dtype, device=device)
    t = torch.randint(0, 9, (6,), device=device)
    _, lse, _ = torch.ops.fastnn.cross_entropy_forward(x, t, None, 1, -100)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert lse.shape == (6, 2) and lse.dtype == acc
    assert torch.equal(lse[:, 0], x.to(acc).amax(1))
    torch.testing.assert_close(lse.sum(1), torch.logsumexp(x.to(acc), 1))


@pytest.mark.dtypes(torch.float32, torch.float64)
def test_cross_entropy_neg_inf_logits(device, dtype):
    """-inf logits off the target are fine natively (probability 0): same here."""
    x = randn(4, 6, dtype=dtype, device=device)
    x[:, 0] = float("-inf")
    x[2, 3:] = float("-inf")
    t = torch.tensor([1, 2, 1, 5], device=device)
    check_loss("ce", x, t, None, dict(reduction="none"), dtype)
    check_loss("ce", x, t, None, dict(reduction="mean"), dtype)


@pytest.mark.dtypes(torch.float32, torch.float64)
@pytest.mark.parametrize("shape", [(4, 6), (2, 2000), (2, 6, 5)], ids=str)
def test_cross_entropy_pos_inf_logit(device, dtype, shape):
    """A +inf logit makes its sample's loss and gradient NaN, as natively, on every kernel
    path (short and long rows, spatial (N, C, d) inputs)."""
    x = randn(*shape, dtype=dtype, device=device)
    t = torch.zeros((shape[0],) + shape[2:], dtype=torch.long, device=device)
    x[(0, 1) + (0,) * (len(shape) - 2)] = float("inf")
    x0, x1 = leaf(x.clone()), leaf(x.clone())
    l0 = F.cross_entropy(x0, t, reduction="none")
    l1 = FF.cross_entropy(x1, t, reduction="none")
    assert torch.isnan(l0).any() and torch.equal(torch.isnan(l1), torch.isnan(l0))
    ok = ~torch.isnan(l0)
    assert_close(l1[ok], l0[ok], dtype, k=4)
    g = torch.ones_like(l0)
    (d0,), (d1,) = torch.autograd.grad(l0, x0, g), torch.autograd.grad(l1, x1, g)
    assert torch.equal(torch.isnan(d1), torch.isnan(d0))
    assert_close(d1[~torch.isnan(d0)], d0[~torch.isnan(d0)], dtype, k=4)


@pytest.mark.parametrize("C", [6, 2000], ids=str)
def test_cross_entropy_nan_logit(device, dtype, C):
    """A NaN logit makes its sample's loss NaN, as natively, for short and long rows, also
    when one thread of a CUDA block-per-row kernel sees every NaN of the row."""
    x = randn(3, C, dtype=dtype, device=device)
    x[0, 1] = float("nan")
    nan_in_one_thread(x[1])
    t = torch.zeros(3, dtype=torch.long, device=device)
    l0 = F.cross_entropy(x, t, reduction="none")
    l1 = FF.cross_entropy(x, t, reduction="none")
    assert torch.isnan(l0[0]) and torch.equal(torch.isnan(l1), torch.isnan(l0))
    finite = ~torch.isnan(l0)  # row 1 too where the row is shorter than the NaN pattern
    assert_close(l1[finite], l0[finite], dtype, k=C)


@pytest.mark.parametrize("name", LOSSES)
def test_loss_legacy_args(device, name):
    x, t, _ = make_inputs((6, 4), torch.float32, device)
    native, fast = LOSSES[name]
    with pytest.warns(UserWarning):
        expected = native(x, t, size_average=False)
    with pytest.warns(UserWarning):
        out = fast(x, t, size_average=False)
    assert_close(out, expected, torch.float32, k=6)
    with pytest.warns(UserWarning):
        expected = native(x, t, reduce=False)
    with pytest.warns(UserWarning):
        out = fast(x, t, reduce=False)
    assert_close(out, expected, torch.float32, k=4)


def test_bad_reduction_string(device):
    x, t, _ = make_inputs((6, 4), torch.float32, device)
    for fn in (FF.nll_loss, FF.cross_entropy):
        with pytest.raises(ValueError, match="reduction must be"):
            fn(x, t, reduction="avg")


def test_loss_no_grad(device, dtype):
    x, t, w = make_inputs((6, 4), dtype, device, ignore_index=1, weighted=True)
    for name, (native, fast) in LOSSES.items():
        with torch.no_grad():
            out = fast(x.requires_grad_(), t, w, ignore_index=1)
        assert not out.requires_grad
        assert_close(out, native(x.detach(), t, w, ignore_index=1), dtype, k=24)
        x = x.detach()


# ----------------------------------------------------------------------------- label smoothing

SMOOTHING = [0.1, 1.0]


@pytest.mark.parametrize("shape", [(5, 7), (7,), (4, 5, 3), (300, 10), (8, 1000), (3, 2000)],
                         ids=str)
@pytest.mark.parametrize("weighted", [False, True], ids=["noweight", "weight"])
@pytest.mark.parametrize("ignore_index", [None, 2], ids=lambda i: f"ii{i}")
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("eps", SMOOTHING, ids=lambda e: f"eps{e}")
def test_cross_entropy_label_smoothing(device, dtype, shape, weighted, ignore_index, reduction,
                                       eps):
    """Native's label smoothing, (1 - eps) * NLL + eps / C * (-sum_c w[c] log_softmax[c]),
    on every kernel path: small and large C (8 x 1000, 3 x 2000: the long-row paths), a
    spatial dim, a (C) input."""
    x, t, w = make_inputs(shape, dtype, device, ignore_index, weighted)
    kw = kwargs_of(reduction, ignore_index)
    kw["label_smoothing"] = eps
    check_loss("ce", x, t, w, kw, dtype)


@pytest.mark.parametrize("weighted", [False, True], ids=["noweight", "weight"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_label_smoothing_edge_cases(device, dtype, weighted, reduction):
    """All targets ignored or weighted 0 (mean: NaN, though the smoothing term is not 0),
    an empty batch, and -inf logits (the smoothing term sees log(0) = -inf: the loss is
    inf, as natively)."""
    kw = dict(reduction=reduction, label_smoothing=0.2)
    x, t, w = make_inputs((6, 4), dtype, device, weighted=weighted)
    check_loss("ce", x, torch.full_like(t, -100), w, kw, dtype, equal_nan=True)
    if weighted:  # targets in classes 0 and 1 only, weighted 0; classes 2 and 3 are not
        w[:2] = 0
        check_loss("ce", x, t % 2, w, kw, dtype, equal_nan=True)
    x, t, w = make_inputs((0, 4), dtype, device, weighted=weighted)
    check_loss("ce", x, t, w, kw, dtype, equal_nan=True)
    x, t, w = make_inputs((3, 4), dtype, device, weighted=weighted)
    x[0, 1] = -float("inf")
    t[0] = 0
    want = F.cross_entropy(x, t, w, **kw)
    got = FF.cross_entropy(x, t, w, **kw)
    assert_close(got, want, dtype, k=12, equal_nan=True)


def test_cross_entropy_zero_total_weight_derivatives_are_nan(device):
    """'mean' over a total weight of 0 with label smoothing: the loss, its gradient, its
    second derivative and its forward-mode tangent are NaN, as natively (not +-inf)."""
    x = torch.randn(3, 4, dtype=torch.float64, device=device)
    t = torch.tensor([1, 1, 2], device=device)
    w = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64, device=device)
    for fn in (FF.cross_entropy, F.cross_entropy):
        xs = x.clone().requires_grad_()
        loss = fn(xs, t, weight=w, label_smoothing=0.3)
        g, = torch.autograd.grad(loss, xs, create_graph=True)
        gg, = torch.autograd.grad(g.sum(), xs)
        with torch.autograd.forward_ad.dual_level():
            dual = torch.autograd.forward_ad.make_dual(x, torch.ones_like(x))
            tangent = torch.autograd.forward_ad.unpack_dual(
                fn(dual, t, weight=w, label_smoothing=0.3)).tangent
        assert all(v.isnan().all() for v in (loss, g, gg, tangent)), fn


def test_cross_entropy_label_smoothing_zero_is_plain(device, dtype):
    """label_smoothing=0 takes the unsmoothed path: bitwise the default's loss and grad."""
    x, t, w = make_inputs((9, 6, 2), dtype, device, ignore_index=1, weighted=True)
    x0, x1 = leaf(x), leaf(x)
    l0 = FF.cross_entropy(x0, t, w, ignore_index=1)
    l1 = FF.cross_entropy(x1, t, w, ignore_index=1, label_smoothing=0.0)
    l0.backward()
    l1.backward()
    assert torch.equal(l0, l1) and torch.equal(x0.grad, x1.grad)


def test_cross_entropy_label_smoothing_arguments(device):
    x, t, _ = make_inputs((4, 5), torch.float32, device)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(RuntimeError, match="label_smoothing` must be between 0.0 and 1.0"):
            FF.cross_entropy(x, t, label_smoothing=bad)
    with pytest.raises(TypeError, match="'label_smoothing' must be float, not str"):
        FF.cross_entropy(x, t, label_smoothing="0.1")
    # the number types native takes: int, NumPy float, a one-element tensor
    want = F.cross_entropy(x, t, label_smoothing=1.0)
    for eps in (1, np.float32(1.0), torch.tensor(1.0)):
        torch.testing.assert_close(FF.cross_entropy(x, t, label_smoothing=eps), want)


# ----------------------------------------------------------------------------- modules

@pytest.mark.parametrize("weighted", [False, True], ids=["noweight", "weight"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("cls", ["NLLLoss", "CrossEntropyLoss"])
def test_loss_modules(device, dtype, cls, weighted, reduction):
    C = 6
    w = torch.rand(C, dtype=torch.float64) + 0.5 if weighted else None
    kw = dict(ignore_index=2, reduction=reduction)
    if cls == "CrossEntropyLoss":
        kw["label_smoothing"] = 0.15
    native = getattr(nn, cls)(weight=w, **kw)
    fast = getattr(fastnn, cls)(weight=None if w is None else w.clone(), **kw)
    assert repr(fast) == repr(native)
    assert fast.state_dict().keys() == native.state_dict().keys()
    native.to(device=device, dtype=dtype)
    fast.to(device=device, dtype=dtype)
    x, t, _ = make_inputs((10, C, 3), dtype, device, ignore_index=2)
    x0, x1 = leaf(x), leaf(x)
    l0, l1 = native(x0, t), fast(x1, t)
    assert_close(l1, l0.detach(), dtype, k=30 * C)
    (l0 * 1.3).sum().backward()
    (l1 * 1.3).sum().backward()
    assert_close(x1.grad, x0.grad, dtype, k=30 * C)


def test_nll_after_log_softmax_matches_cross_entropy(device, dtype):
    x, t, w = make_inputs((12, 9), dtype, device, ignore_index=4, weighted=True)
    a = FF.nll_loss(FF.log_softmax(x, 1), t, w, ignore_index=4)
    b = FF.cross_entropy(x, t, w, ignore_index=4)
    assert_close(a, b, dtype, k=108)


# ----------------------------------------------------------------------------- probability targets

@pytest.mark.parametrize("shape", [(6, 5), (5,), (3, 4, 2, 2), (0, 4)], ids=str)
@pytest.mark.parametrize("weighted", [False, True], ids=["noweight", "weight"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("eps", [0.0, 0.2], ids=lambda e: f"eps{e}")
def test_cross_entropy_probability_targets(device, dtype, shape, weighted, reduction, eps):
    """A target of the input's shape holds class probabilities, as natively: the loss and
    the gradients towards the input, the target and the weight match native's."""
    x, _, w = make_inputs(shape, dtype, device, weighted=weighted)
    q = torch.softmax(randn(*shape, device=device), 0 if len(shape) == 1 else 1).to(dtype)
    args0 = [leaf(a) for a in (x, q) + ((w,) if weighted else ())]
    args1 = [leaf(a) for a in (x, q) + ((w,) if weighted else ())]
    kw = dict(reduction=reduction, label_smoothing=eps)
    l0 = F.cross_entropy(*args0, **kw)
    l1 = FF.cross_entropy(*args1, **kw)
    k = x.numel() + 1
    assert_close(l1, l0.detach(), dtype, k=k, equal_nan=True)
    if x.numel() == 0:
        return
    g = randn(*l0.shape, dtype=dtype, device=device)
    l0.backward(g)
    l1.backward(g)
    for a0, a1 in zip(args0, args1):
        assert_close(a1.grad, a0.grad, dtype, k=k)


def test_cross_entropy_probability_target_module(device, dtype):
    x, _, w = make_inputs((7, 4), dtype, device, weighted=True)
    q = torch.softmax(randn(7, 4, device=device), 1).to(dtype)
    native = nn.CrossEntropyLoss(weight=w, reduction="sum", label_smoothing=0.1)
    fast = fastnn.CrossEntropyLoss(weight=w, reduction="sum", label_smoothing=0.1)
    assert_close(fast(x, q), native(x, q), dtype, k=28)


def test_cross_entropy_probability_target_errors(device):
    x = randn(4, 5, device=device)
    q = torch.softmax(randn(4, 5, device=device), 1)
    with pytest.raises(RuntimeError, match="class probabilities and must be floating point"):
        FF.cross_entropy(x, torch.zeros(4, 5, dtype=torch.long, device=device))
    with pytest.raises(RuntimeError, match="ignore_index is not supported for probability"):
        FF.cross_entropy(x, q, ignore_index=1)
    with pytest.raises(RuntimeError, match="`weight` must be 1-D with one entry per class"):
        FF.cross_entropy(x, q, torch.ones(4, device=device))
    with pytest.raises(RuntimeError, match="between 0.0 and 1.0"):
        FF.cross_entropy(x, q, label_smoothing=2.0)
    # a floating target of another shape is read as class indices, which must be int64
    with pytest.raises(RuntimeError, match="class indices as int64"):
        FF.cross_entropy(x, q[:, 0])
