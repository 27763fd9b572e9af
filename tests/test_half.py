"""float16 and bfloat16 on every device: fastnn computes them in float32 and rounds once,
so each result must be about as accurate as native's against a float64 reference; the
outputs' dtypes; and autocast, whose per-op policy differs between CPU and CUDA."""
import copy

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

import fastnn
import fastnn.functional as FF
from support import HALF_DTYPES, init_weight, randn, seed_mlp, synthetic_mnist

HALF_IDS = ["float16", "bfloat16"]


def _err(a, ref):
    return (a.double() - ref).abs()


def assert_no_worse_than_native(out, native, ref64, dtype, slack_ulps=2):
    """Elementwise |fastnn - exact| <= 2 * |native - exact| + slack_ulps ulp(|exact|):
    fastnn (float32 accumulation, one rounding) must be about as accurate as native."""
    assert out.dtype == native.dtype == dtype and out.shape == native.shape
    ulp = torch.finfo(dtype).eps * ref64.abs().clamp_min(torch.finfo(dtype).tiny * 2 ** 10)
    bound = 2 * _err(native, ref64) + slack_ulps * ulp + 1e-6
    bad = _err(out, ref64) > bound
    assert not bad.any(), (f"{int(bad.sum())} elements less accurate than native: worst "
                           f"{_err(out, ref64)[bad].max():.3e} vs native {_err(native, ref64)[bad].max():.3e}")


def check_linear_vs_float64(x, w, b, g, dtype):
    """fastnn's output and gradients (for output gradient g) against native's, both
    against float64; b is any bias that broadcasts to the output."""
    outs = []
    for fn in (F.linear, FF.linear):
        xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
        y = fn(xs, ws, bs)
        y.backward(g)
        outs.append((y.detach(), xs.grad, ws.grad, bs.grad))
    x64, w64, b64, g64 = (t.double() for t in (x, w, b, g))
    refs = (F.linear(x64, w64, b64), g64 @ w64, g64.t() @ x64, g64.sum_to_size(b.shape))
    for native, fast, ref in zip(outs[0], outs[1], refs):
        assert_no_worse_than_native(fast, native, ref, dtype)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=HALF_IDS)
@pytest.mark.parametrize("batch,fin,fout", [(64, 784, 256), (65, 257, 63), (1, 1000, 10), (300, 17, 513)])
def test_half_linear_vs_float64_reference(device, dtype, batch, fin, fout):
    x = randn(batch, fin, dtype=dtype, device=device)
    w = init_weight(fout, fin, dtype=dtype, device=device)
    b = randn(fout, dtype=dtype, device=device, scale=0.1)
    g = randn(batch, fout, dtype=dtype, device=device)
    check_linear_vs_float64(x, w, b, g, dtype)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=HALF_IDS)
@pytest.mark.parametrize("bias_shape", [(), (1,), (9, 1), (9, 12)], ids=str)
def test_half_linear_broadcast_bias_rounds_once(device, dtype, bias_shape):
    """A bias of another shape that broadcasts to the output's is added in float32 too:
    the product is not rounded before the add (which can cancel most of it)."""
    x = randn(9, 40, dtype=dtype, device=device)
    w = init_weight(12, 40, dtype=dtype, device=device)
    prod = x.double() @ w.double().t()  # a bias that cancels it (in at least one element)
    b = (-prod[:bias_shape[0], :bias_shape[1]] if len(bias_shape) == 2 else -prod[0, 0])
    b = b.reshape(bias_shape).to(dtype)
    g = randn(9, 12, dtype=dtype, device=device)
    check_linear_vs_float64(x, w, b, g, dtype)


def test_half_linear_broadcast_bias_checks_the_weight_dtype(device):
    """The float32 detour of a broadcast bias still refuses a weight of another dtype."""
    x = randn(2, 3, dtype=torch.bfloat16, device=device)
    b = randn(dtype=torch.bfloat16, device=device)
    for wdtype in (torch.float32, torch.float64):
        with pytest.raises(RuntimeError, match="`weight` has dtype"):
            FF.linear(x, randn(4, 3, dtype=wdtype, device=device), b)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=HALF_IDS)
def test_half_linear_rounds_once_on_cpu(dtype):
    """On the CPU the half-type product is the float32 product rounded once: bitwise
    float32's GEMM result (fastnn's float32 path) rounded to the half type."""
    x = randn(33, 700, dtype=dtype)  # K = 700 > one K block: still a single rounding
    w = init_weight(20, 700, dtype=dtype)
    b = randn(20, dtype=dtype)
    want = FF.linear(x.float(), w.float(), b.float()).to(dtype)
    assert torch.equal(FF.linear(x, w, b), want)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=HALF_IDS)
def test_half_log_softmax_and_losses_vs_float64_reference(device, dtype):
    x = randn(64, 1000, dtype=dtype, device=device, scale=3)
    t = torch.randint(0, 1000, (64,), device=device)
    t[::5] = 7
    w = (torch.rand(1000, device=device) + 0.5).to(dtype)
    x64 = x.double()
    assert_no_worse_than_native(FF.log_softmax(x, 1), F.log_softmax(x, 1), F.log_softmax(x64, 1), dtype)
    for red in ("none", "sum", "mean"):
        kw = dict(weight=w, ignore_index=7, reduction=red)
        kw64 = dict(kw, weight=w.double())
        assert_no_worse_than_native(FF.cross_entropy(x, t, **kw), F.cross_entropy(x, t, **kw),
                                    F.cross_entropy(x64, t, **kw64), dtype, slack_ulps=4)
        lp = F.log_softmax(x, 1)
        assert_no_worse_than_native(FF.nll_loss(lp, t, **kw), F.nll_loss(lp, t, **kw),
                                    F.nll_loss(lp.double(), t, **kw64), dtype, slack_ulps=4)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=HALF_IDS)
def test_half_log_softmax_is_correctly_rounded_on_cpu(dtype):
    """fastnn's CPU log_softmax in a half type is the float32 result rounded once, so for
    these sizes it equals the exact value rounded (native's CPU kernel rounds twice)."""
    for shape, dim in (((37, 300), 1), ((64, 10), 1), ((6, 20, 7), 1), ((5, 9), 0)):
        x = randn(*shape, dtype=dtype, scale=3)
        want = F.log_softmax(x.double(), dim).to(dtype)
        assert torch.equal(FF.log_softmax(x, dim), want)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=HALF_IDS)
def test_half_losses_stay_finite(device, dtype):
    """Losses accumulate in float32: the mean of 64 losses of ~1e4 is finite in float16
    too, although their sum is not (native CPU's float16 mean overflows)."""
    x = randn(64, 50, dtype=dtype, device=device, scale=5e3)
    t = torch.randint(0, 50, (64,), device=device)
    for fast, native in ((FF.cross_entropy, F.cross_entropy), (FF.nll_loss, F.nll_loss)):
        ref = native(x.double(), t)
        got = fast(x, t)
        assert torch.isfinite(got) and abs(got.double() - ref) <= 1e-2 * ref.abs()


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=HALF_IDS)
def test_half_cross_entropy_outputs(device, dtype):
    """Loss in the input dtype, lse and total_weight kept in float32 (as the fake kernel
    says)."""
    x = randn(8, 5, dtype=dtype, device=device)
    t = torch.randint(0, 5, (8,), device=device)
    loss, lse, tw = torch.ops.fastnn.cross_entropy_forward(x, t, None, 1, -100)
    assert loss.dtype == dtype and tw.dtype == torch.float32
    assert lse.dtype == torch.float32 and lse.shape == (8, 2)
    torch.testing.assert_close(lse[:, 0], x.float().amax(1), rtol=0, atol=0)
    torch.testing.assert_close(lse.sum(1), torch.logsumexp(x.float(), 1), rtol=1e-5, atol=1e-5)
    assert tw.item() == 8


# ----------------------------------------------------------------------------- autocast

@pytest.mark.parametrize("amp", HALF_DTYPES, ids=HALF_IDS)
def test_autocast_dtypes_like_native(device, amp):
    """Each op's output dtype under autocast is native's: Linear in the autocast dtype, the
    losses in float32, log_softmax in float32 on CUDA and in its input's dtype on the CPU."""
    torch.manual_seed(0)
    native = seed_mlp(torch.nn).to(device)
    fast = fastnn.convert(copy.deepcopy(native))
    x, t = synthetic_mnist(32, device=device)
    with torch.autocast(device, dtype=amp):
        h0, h1 = native[0](x), fast[0](x)
        assert h1.dtype == h0.dtype == amp
        y0, y1 = native(x), fast(x)
        assert y1.dtype == y0.dtype == (torch.float32 if device == "cuda" else amp)
        l0, l1 = F.nll_loss(y0, t), FF.nll_loss(y1, t)
        assert l1.dtype == l0.dtype == torch.float32
        logits0 = native[:-1](x)
        logits1 = fast[:-1](x)
        assert logits1.dtype == logits0.dtype == amp
        c0, c1 = F.cross_entropy(logits0, t), FF.cross_entropy(logits1, t)
        assert c1.dtype == c0.dtype == torch.float32
        q = torch.softmax(logits0.detach().float(), 1)
        p0, p1 = F.cross_entropy(logits0, q), FF.cross_entropy(logits1, q)
        assert p1.dtype == p0.dtype == torch.float32
        ls0, ls1 = F.log_softmax(logits0, 1), FF.log_softmax(logits1, 1)
        assert ls1.dtype == ls0.dtype
        # float64 is left alone by autocast, as natively
        assert FF.linear(x.double(), native[0].weight.double()).dtype == torch.float64
    tol = dict(rtol=5e-3, atol=5e-3) if amp == torch.float16 else dict(rtol=4e-2, atol=4e-2)
    torch.testing.assert_close(h1, h0, **tol)
    torch.testing.assert_close(l1, l0, **tol)
    torch.testing.assert_close(c1, c0, **tol)
    torch.testing.assert_close(p1, p0, **tol)
    l1.backward()
    l0.backward()
    gtol = dict(rtol=2e-2, atol=2e-3) if amp == torch.float16 else dict(rtol=1e-1, atol=1e-2)
    for p0, p1 in zip(native.parameters(), fast.parameters()):
        assert p1.grad.dtype == torch.float32
        torch.testing.assert_close(p1.grad, p0.grad, **gtol)


def test_autocast_training_step_like_native(device):
    """A few Adam steps of the seed MLP under autocast (bfloat16 on the CPU, float16 on
    CUDA) with fastnn layers track native's."""
    amp = torch.float16 if device == "cuda" else torch.bfloat16
    torch.manual_seed(0)
    native = seed_mlp(torch.nn, log_softmax=False).to(device)
    fast = fastnn.convert(copy.deepcopy(native))
    x, t = synthetic_mnist(256, device=device)
    losses = []
    for model in (native, fast):
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        out = []
        for i in range(5):
            xb, tb = x[i * 50:(i + 1) * 50], t[i * 50:(i + 1) * 50]
            with torch.autocast(device, dtype=amp):
                loss = F.cross_entropy(model(xb), tb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            out.append(loss.item())
        losses.append(out)
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=HALF_IDS)
@pytest.mark.parametrize("shape", [(70000, 4), (1, 3, 256, 256)], ids=["70000x4", "1x3x256x256"])
def test_half_mean_over_more_than_65504_targets(device, dtype, shape):
    """A loss's total_weight is float32 for the half types: past 65504 counted targets
    (a 256 x 256 segmentation map is 65536) native's float16 total_weight is inf and its
    'mean' gradient silently all zeros; fastnn's is the float64 reference's, rounded."""
    x = randn(*shape, dtype=dtype, device=device)
    t_shape = (shape[0],) + shape[2:]
    t = torch.randint(0, shape[1], t_shape, device=device)
    _, tw = torch.ops.fastnn.nll_loss_forward(x, t, None, 1, -100)
    assert tw.dtype == torch.float32 and tw.item() == t.numel()
    ref_x = x.double().requires_grad_()
    F.cross_entropy(ref_x, t).backward()
    xf = x.clone().requires_grad_()
    loss = FF.cross_entropy(xf, t)
    torch.testing.assert_close(loss.double(), F.cross_entropy(x.double(), t), rtol=2e-3, atol=0)
    loss.backward()
    assert xf.grad.dtype == dtype
    # entries ~1e-5 are subnormal in float16: allow its subnormal spacing
    atol = 2.0 ** -24 if dtype == torch.float16 else 0.0
    torch.testing.assert_close(xf.grad.double(), ref_x.grad, rtol=8e-3, atol=atol)
    lp = F.log_softmax(x.double(), 1).to(dtype).requires_grad_()
    FF.nll_loss(lp, t).backward()
    ref = torch.zeros_like(lp, dtype=torch.float64).scatter_(1, t.unsqueeze(1), -1 / t.numel())
    torch.testing.assert_close(lp.grad.double(), ref, rtol=8e-3, atol=atol)


@pytest.mark.parametrize("path", ["autograd", "torch.func"])
def test_float16_mean_over_more_than_65504_targets_higher_derivatives(device, path):
    """The loss's tangent and its second derivative divide by the float32 total_weight
    too (in float32, rounded once to float16), in the C++ autograd and the torch.func
    path alike."""
    x = randn(70000, 4, dtype=torch.float16, device=device)
    v = randn(70000, 4, dtype=torch.float16, device=device)
    t = torch.randint(0, 4, (70000,), device=device)
    w = torch.rand(4, device=device).half()
    weights = {torch.float16: w, torch.float64: w.double()}

    def loss(fn, x, dtype):
        return fn(x, t, weight=weights[dtype], label_smoothing=0.1)

    def second(fn, x, dtype):  # d/dx of <dloss/dx, v>
        if path == "torch.func":
            g = torch.func.grad(lambda y: loss(fn, y, dtype))
            return torch.func.grad(lambda y: (g(y).to(dtype) * v.to(dtype)).sum())(x)
        x = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(loss(fn, x, dtype), x, create_graph=True)
        return torch.autograd.grad((g * v.to(dtype)).sum(), x)[0]

    if path == "torch.func":
        tan = torch.func.jvp(lambda y: loss(FF.cross_entropy, y, x.dtype), (x,), (v,))[1]
    else:
        with fwAD.dual_level():
            tan = fwAD.unpack_dual(loss(FF.cross_entropy, fwAD.make_dual(x, v), x.dtype)).tangent
    ref = torch.func.jvp(lambda y: loss(F.cross_entropy, y, torch.float64), (x.double(),),
                         (v.double(),))[1]
    assert tan.dtype == torch.float16
    torch.testing.assert_close(tan.double(), ref, rtol=1e-2, atol=1e-6)
    got, ref = second(FF.cross_entropy, x, x.dtype), second(F.cross_entropy, x.double(),
                                                             torch.float64)
    assert got.dtype == torch.float16 and got.count_nonzero() > 0
    torch.testing.assert_close(got.double(), ref, rtol=2e-2, atol=4 * 2.0 ** -24)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=HALF_IDS)
def test_half_nll_products_in_float32(device, dtype):
    """-w[t] * x is formed in float32 before the (double) sum, so a product beyond float16's
    range does not turn the mean into inf (native CPU's does)."""
    x = torch.tensor([[-1000.0, 0.0]], dtype=dtype, device=device).requires_grad_()
    w = torch.tensor([100.0, 1.0], dtype=dtype, device=device)
    t = torch.tensor([0], device=device)
    loss = FF.nll_loss(x, t, weight=w)
    assert loss.item() == 1000.0
    loss.backward()
    assert x.grad.tolist() == [[-1.0, 0.0]]
