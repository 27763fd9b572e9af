"""fastnn relu / ReLU vs native: values, gradients, inplace semantics, special values."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastnn
import fastnn.functional as FF
from support import NONCONTIG_LAYOUTS, assert_close, assert_dense, leaf, make_layout, randn

SHAPES = [(), (1,), (7,), (0,), (0, 5), (3, 5), (64, 65), (2, 3, 4, 5), (1000, 33), (100003,)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_relu_values_and_grad(device, dtype, shape):
    x = randn(*shape, dtype=dtype, device=device)
    g = randn(*shape, dtype=dtype, device=device)
    x0, x1 = leaf(x.clone()), leaf(x.clone())
    y0, y1 = F.relu(x0), FF.relu(x1)
    assert_dense(y1)
    # relu is exact: bitwise equal values
    assert y1.dtype == y0.dtype and y1.shape == y0.shape
    assert torch.equal(y1, y0)
    y0.backward(g)
    y1.backward(g)
    assert torch.equal(x1.grad, x0.grad)


@pytest.mark.parametrize("layout", NONCONTIG_LAYOUTS)
def test_relu_noncontiguous(device, dtype, layout):
    x = make_layout(randn(17, 33, dtype=dtype, device=device), layout)
    g = make_layout(randn(17, 33, dtype=dtype, device=device), layout)
    x0, x1 = leaf(x), leaf(x)
    y0, y1 = F.relu(x0), FF.relu(x1)
    assert y1.stride() == y0.stride(), "the output takes the input's layout, as natively"
    assert torch.equal(y1, y0)
    y0.backward(g)
    y1.backward(g)
    assert torch.equal(x1.grad, x0.grad)


def test_relu_keeps_channels_last(device, dtype):
    x = randn(2, 3, 4, 5, dtype=dtype, device=device).to(memory_format=torch.channels_last)
    y0, y1 = F.relu(x), FF.relu(x)
    assert y1.is_contiguous(memory_format=torch.channels_last) and y1.stride() == y0.stride()
    assert torch.equal(y1, y0)
    dy = randn(2, 3, 4, 5, dtype=dtype, device=device)  # contiguous: the gradient follows y
    dx0 = torch.ops.aten.threshold_backward(dy, y0, 0)
    dx1 = torch.ops.fastnn.relu_backward(dy, y1)
    assert dx1.stride() == dx0.stride() and torch.equal(dx1, dx0)


def test_relu_special_values(device, dtype):
    vals = [float("nan"), -0.0, 0.0, float("inf"), float("-inf"), -1.0, 1.0, 1e-30, -1e-30,
            float("nan"), 3.0, -5.0]
    x = torch.tensor(vals * 3, dtype=dtype, device=device)  # > 32 elements: vector + tail
    expected = F.relu(x)
    out = FF.relu(x)
    assert torch.equal(torch.isnan(out), torch.isnan(expected)), "NaN must propagate like native"
    torch.testing.assert_close(out, expected, equal_nan=True, rtol=0, atol=0)
    # signed zeros as native's (a NaN's sign carries no meaning: native's bfloat16 relu
    # may flip it, fastnn's keeps the input's NaN as it is)
    num = ~torch.isnan(expected)
    assert torch.equal(torch.signbit(out[num]), torch.signbit(expected[num])), "signed zeros as native's"
    assert not (out < 0).any() and not torch.isneginf(out).any()
    # in-place too
    x2 = x.clone()
    FF.relu(x2, inplace=True)
    torch.testing.assert_close(x2, expected, equal_nan=True, rtol=0, atol=0)
    # gradient where the output is not NaN equals native's (at NaN native passes the
    # gradient through; that is not specified for fastnn and not compared here)
    x0, x1 = leaf(x.clone()), leaf(x.clone())
    g = torch.arange(1, x.numel() + 1, dtype=dtype, device=device)
    F.relu(x0).backward(g)
    FF.relu(x1).backward(g)
    finite = ~torch.isnan(x)
    assert torch.equal(x1.grad[finite], x0.grad[finite])


def test_relu_backward_special_values(device, dtype):
    """dx = (y <= 0) ? 0 : dy, exactly aten's threshold_backward: for y = +-0, +-inf,
    NaN, tiny and ordinary values (a NaN y passes the gradient)."""
    vals = [float("nan"), -0.0, 0.0, float("inf"), float("-inf"), -1.0, 1.0, 1e-30, -1e-30,
            float("nan"), 3.0, -5.0]
    y = torch.tensor(vals * 3, dtype=dtype, device=device)  # > 32 elements: vector + tail
    dy = randn(y.numel(), dtype=dtype, device=device)
    want = torch.ops.aten.threshold_backward(dy, y, 0)
    assert torch.equal(torch.ops.fastnn.relu_backward(dy, y), want)


@pytest.mark.parametrize("shape", [(5, 7), (3, 4, 5), (100003,), (0, 3)], ids=str)
def test_relu_inplace_functional(device, dtype, shape):
    x = randn(*shape, dtype=dtype, device=device)
    expected = F.relu(x)
    # without autograd
    x1 = x.clone()
    out = FF.relu(x1, inplace=True)
    assert out is x1 or out.data_ptr() == x1.data_ptr()
    assert torch.equal(x1, expected)
    # with autograd: on a non-leaf, as nn.ReLU(inplace=True) after a Linear
    a0, a1 = leaf(x.clone()), leaf(x.clone())
    h0, h1 = a0 * 2, a1 * 2
    r0 = F.relu(h0, inplace=True)
    r1 = FF.relu(h1, inplace=True)
    assert r1.data_ptr() == h1.data_ptr(), "inplace relu must return its input's storage"
    assert torch.equal(h1, h0), "the input is modified in place"
    assert torch.equal(r1, r0)
    g = randn(*shape, dtype=dtype, device=device)
    r0.backward(g)
    r1.backward(g)
    assert torch.equal(a1.grad, a0.grad)


def test_relu_inplace_noncontiguous(device, dtype):
    base0 = randn(8, 20, dtype=dtype, device=device)
    base1 = base0.clone()
    v0, v1 = base0[:, ::2], base1[:, ::2]  # strided views: only they may change
    F.relu(v0, inplace=True)
    FF.relu(v1, inplace=True)
    assert torch.equal(base1, base0), "in-place relu on a view must change exactly the view"
    t1 = base1.t()
    t0 = base0.t()
    F.relu(t0.add_(-0.3), inplace=True)
    FF.relu(t1.add_(-0.3), inplace=True)
    assert torch.equal(base1, base0)


def test_relu_inplace_on_leaf_raises_like_native(device):
    x = randn(3, 4, device=device).requires_grad_()
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        F.relu(x, inplace=True)
    before = x.detach().clone()
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        FF.relu(x, inplace=True)
    assert torch.equal(x.detach(), before) and x._version == 0  # refused before writing
    # a view of such a leaf, likewise
    with pytest.raises(RuntimeError, match="view of a leaf Variable"):
        FF.relu(x[1:], inplace=True)
    assert torch.equal(x.detach(), before)


@pytest.mark.parametrize("inplace", [False, True], ids=["outofplace", "inplace"])
def test_relu_module_in_sequential(device, dtype, inplace):
    torch.manual_seed(1)
    native = nn.Sequential(nn.Linear(20, 30), nn.ReLU(inplace=inplace), nn.Linear(30, 5))
    fast = nn.Sequential(fastnn.Linear(20, 30), fastnn.ReLU(inplace=inplace), fastnn.Linear(30, 5))
    native.to(device=device, dtype=dtype)
    fast.to(device=device, dtype=dtype)
    fast.load_state_dict(native.state_dict())
    assert repr(fast[1]) == repr(native[1])
    x = randn(9, 20, dtype=dtype, device=device)
    y0, y1 = native(x), fast(x)
    assert_close(y1, y0, dtype, k=30)
    g = randn(9, 5, dtype=dtype, device=device)
    y0.backward(g)
    y1.backward(g)
    for (n0, p0), (n1, p1) in zip(native.named_parameters(), fast.named_parameters()):
        assert n0 == n1
        assert_close(p1.grad, p0.grad, dtype, k=30, msg=lambda m: f"{n0}: {m}")


def test_relu_inplace_version_counter(device):
    """mark_dirty: modifying the saved output afterwards is detected like native."""
    x = randn(4, 4, device=device).requires_grad_()
    h = x * 1
    y = FF.relu(h, inplace=True)
    z = y * 3
    y.add_(1)  # y is saved by relu's backward
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        z.sum().backward()
