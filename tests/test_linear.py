"""fastnn.functional.linear / fastnn.Linear vs torch.nn.functional.linear / nn.Linear:
forward values and dx, dW, db through autograd, over shapes that cross GEMM blocking
boundaries, leading dims, 1-D and empty inputs, and non-contiguous operands."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastnn
import fastnn.functional as FF
from support import (NONCONTIG_LAYOUTS, assert_close, assert_dense, init_weight, leaf,
                     make_layout, randn)

SIZES = [1, 7, 8, 15, 16, 17, 63, 64, 65, 255, 256, 257, 511, 513, 1000]
BATCHES = [1, 5, 6, 7, 64, 65, 300]


def _shape_cases():
    """Each in_features with 3 different out_features (every size appears 3 times as
    in_features and 3 times as out_features) and a batch cycling through BATCHES."""
    cases = []
    for i, fin in enumerate(SIZES):
        for j in range(3):
            fout = SIZES[(4 * i + 5 * j + 2) % len(SIZES)]
            batch = BATCHES[(i + 3 * j) % len(BATCHES)]
            if batch * fin * fout > 4e7:  # keep the largest products quick in float64
                batch = 7
            cases.append(pytest.param(batch, fin, fout, (i + j) % 2 == 0,
                                      id=f"b{batch}-in{fin}-out{fout}-{'bias' if (i + j) % 2 == 0 else 'nobias'}"))
    # a few explicit combinations
    for b, fin, fout in [(300, 513, 257), (65, 1000, 10), (64, 784, 256), (1, 1, 1), (6, 8, 16)]:
        for has_bias in (True, False):
            cases.append(pytest.param(b, fin, fout, has_bias,
                                      id=f"b{b}-in{fin}-out{fout}-{'bias' if has_bias else 'nobias'}"))
    return cases


def run_both(x, w, b, grad_out=None):
    """Forward + backward through native and fastnn; returns (native, fastnn) tuples of
    (y, dx, dW, db) (None for what does not require grad)."""
    results = []
    for fn in (F.linear, FF.linear):
        xs = leaf(x.clone()) if x.is_contiguous() else leaf(x)
        ws = leaf(w.clone()) if w.is_contiguous() else leaf(w)
        bs = None if b is None else leaf(b)
        y = fn(xs, ws, bs)
        g = torch.ones_like(y) if grad_out is None else grad_out
        y.backward(g)
        results.append((y.detach(), xs.grad, ws.grad, None if bs is None else bs.grad))
    return results


def check(x, w, b, dtype, grad_out=None):
    (y0, dx0, dw0, db0), (y1, dx1, dw1, db1) = run_both(x, w, b, grad_out)
    fin, fout = w.shape[1], w.shape[0]
    rows = x.shape[:-1].numel()
    assert_dense(y1)
    assert_close(y1, y0, dtype, k=fin)
    assert_close(dx1, dx0, dtype, k=fout)
    assert_close(dw1, dw0, dtype, k=rows)
    if b is not None:
        assert_close(db1, db0, dtype, k=rows)


@pytest.mark.parametrize("batch,fin,fout,has_bias", _shape_cases())
def test_linear_shapes(device, dtype, batch, fin, fout, has_bias):
    x = randn(batch, fin, dtype=dtype, device=device)
    w = init_weight(fout, fin, dtype=dtype, device=device)
    b = randn(fout, dtype=dtype, device=device, scale=0.1) if has_bias else None
    g = randn(batch, fout, dtype=dtype, device=device)
    check(x, w, b, dtype, g)


@pytest.mark.parametrize("shape", [(2, 3, 17), (17,), (0, 17), (2, 0, 17), (1, 1, 1, 17), (4, 1, 17)],
                         ids=str)
@pytest.mark.parametrize("has_bias", [True, False], ids=["bias", "nobias"])
def test_linear_leading_dims(device, dtype, shape, has_bias):
    x = randn(*shape, dtype=dtype, device=device)
    w = init_weight(9, 17, dtype=dtype, device=device)
    b = randn(9, dtype=dtype, device=device) if has_bias else None
    g = randn(*shape[:-1], 9, dtype=dtype, device=device)
    check(x, w, b, dtype, g)


_BIAS = [((6, 17), b) for b in [(), (1,), (1, 9), (6, 9), (6, 1)]] + [
    ((2, 1, 6, 17), b) for b in [(), (6, 9), (2, 1, 1, 9)]]


@pytest.mark.parametrize("x_shape,bias_shape", _BIAS, ids=str)
def test_linear_broadcast_bias(device, dtype, x_shape, bias_shape):
    """As natively, a bias that expands to the output's shape. (Native's fused path for a
    contiguous 3-D input refuses some of these; fastnn takes them for any input.)"""
    x = randn(*x_shape, dtype=dtype, device=device)
    w = init_weight(9, 17, dtype=dtype, device=device)
    b = randn(*bias_shape, dtype=dtype, device=device)
    (y0, dx0, dw0, db0), (y1, dx1, dw1, db1) = run_both(x, w, b)
    assert_close(y1, y0, dtype, k=17)
    assert_close(dx1, dx0, dtype, k=9)
    assert_close(dw1, dw0, dtype, k=12)
    assert_close(db1, db0, dtype, k=12)


@pytest.mark.parametrize("shape", [(5, 17), (17,), (2, 3, 17), (0, 17)], ids=str)
def test_linear_1d_weight(device, dtype, shape):
    """As natively, a 1-D weight (in_features,) without bias maps (*, in) to (*)."""
    x = randn(*shape, dtype=dtype, device=device)
    w = randn(17, dtype=dtype, device=device)
    (y0, dx0, dw0, _), (y1, dx1, dw1, _) = run_both(x, w, None)
    assert y1.shape == y0.shape == shape[:-1]
    assert_close(y1, y0, dtype, k=17)
    assert_close(dx1, dx0, dtype, k=1)
    assert_close(dw1, dw0, dtype, k=max(1, x.shape[:-1].numel()))


@pytest.mark.dtypes(torch.float32, torch.float64)
@pytest.mark.parametrize("x_layout", ("contiguous",) + NONCONTIG_LAYOUTS)
@pytest.mark.parametrize("w_layout", ("contiguous",) + NONCONTIG_LAYOUTS)
def test_linear_noncontiguous(device, dtype, x_layout, w_layout):
    x = make_layout(randn(37, 70, dtype=dtype, device=device), x_layout)
    w = make_layout(init_weight(33, 70, dtype=dtype, device=device), w_layout)
    b = make_layout(randn(33, dtype=dtype, device=device), "strided")
    g = make_layout(randn(37, 33, dtype=dtype, device=device), "transposed")
    check(x, w, b, dtype, g)


@pytest.mark.dtypes(torch.float32, torch.float64)
def test_linear_transposed_3d_input(device, dtype):
    # (2, 3, in) with the leading dims permuted: not viewable as (6, in) without a copy
    x = randn(3, 2, 20, dtype=dtype, device=device).transpose(0, 1)
    w = init_weight(5, 20, dtype=dtype, device=device)
    b = randn(5, dtype=dtype, device=device)
    check(x, w, b, dtype, randn(2, 3, 5, dtype=dtype, device=device))
    x = randn(20, 3, 2, dtype=dtype, device=device).permute(2, 1, 0)  # feature dim strided
    check(x, w, b, dtype, randn(2, 3, 5, dtype=dtype, device=device))


@pytest.mark.dtypes(torch.float32, torch.float64)
def test_linear_zero_in_features(device, dtype):
    # K = 0: y = bias (native broadcasts the bias), dW is empty, dx is empty
    x = randn(4, 0, dtype=dtype, device=device)
    w = torch.empty(3, 0, dtype=dtype, device=device)
    b = randn(3, dtype=dtype, device=device)
    check(x, w, b, dtype)
    check(x, w, None, dtype)


@pytest.mark.dtypes(torch.float32, torch.float64)
@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False), (False, False, True),
                                   (False, True, True), (True, True, False), (True, False, True)],
                         ids=lambda n: "x%dw%db%d" % n)
def test_linear_partial_grads(device, dtype, needs):
    """Only the requested gradients are computed (output_mask), and they are right."""
    x0 = randn(6, 11, dtype=dtype, device=device)
    w0 = init_weight(4, 11, dtype=dtype, device=device)
    b0 = randn(4, dtype=dtype, device=device)
    grads = []
    for fn in (F.linear, FF.linear):
        x, w, b = (t.clone().requires_grad_(n) for t, n in zip((x0, w0, b0), needs))
        fn(x, w, b).pow(2).sum().backward()
        grads.append((x.grad, w.grad, b.grad))
    for g_native, g_fast, n in zip(*grads, needs):
        if n:
            assert_close(g_fast, g_native, dtype, k=11)
        else:
            assert g_fast is None


def test_linear_no_grad_and_inference_mode(device, dtype):
    x = randn(5, 12, dtype=dtype, device=device, scale=1).requires_grad_()
    w = init_weight(3, 12, dtype=dtype, device=device).requires_grad_()
    b = randn(3, dtype=dtype, device=device).requires_grad_()
    expected = F.linear(x, w, b).detach()
    with torch.no_grad():
        y = FF.linear(x, w, b)
    assert not y.requires_grad
    assert_close(y, expected, dtype, k=12)
    with torch.inference_mode():
        y = FF.linear(x, w, b)
    assert_close(y, expected, dtype, k=12)


@pytest.mark.parametrize("has_bias", [True, False], ids=["bias", "nobias"])
def test_linear_module(device, dtype, has_bias):
    native = nn.Linear(29, 13, bias=has_bias).to(device=device, dtype=dtype)
    fast = fastnn.Linear(29, 13, bias=has_bias).to(device=device, dtype=dtype)
    fast.load_state_dict(native.state_dict())
    x = randn(2, 7, 29, dtype=dtype, device=device)
    x0, x1 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y0, y1 = native(x0), fast(x1)
    assert_close(y1, y0.detach(), dtype, k=29)
    g = randn(2, 7, 13, dtype=dtype, device=device)
    y0.backward(g)
    y1.backward(g)
    assert_close(x1.grad, x0.grad, dtype, k=13)
    assert_close(fast.weight.grad, native.weight.grad, dtype, k=14)
    if has_bias:
        assert_close(fast.bias.grad, native.bias.grad, dtype, k=14)


@pytest.mark.dtypes(torch.float64)
def test_linear_backward_twice_and_grad_accumulation(device, dtype):
    """Several forwards before one backward, retain_graph, and .grad accumulation."""
    w = init_weight(4, 6, dtype=dtype, device=device)
    b = randn(4, dtype=dtype, device=device)
    xs = [randn(3, 6, dtype=dtype, device=device) for _ in range(3)]
    grads = []
    for fn in (F.linear, FF.linear):
        wl, bl = w.clone().requires_grad_(), b.clone().requires_grad_()
        outs = [fn(x, wl, bl) for x in xs]
        loss = sum((o * (i + 1)).sum() for i, o in enumerate(outs))
        loss.backward(retain_graph=True)
        loss.backward()
        grads.append((wl.grad, bl.grad))
    assert_close(grads[1][0], grads[0][0], dtype, k=9)
    assert_close(grads[1][1], grads[0][1], dtype, k=9)


def test_linear_meta_device():
    """The fake kernel gives the right output shape on the meta device (used by compile)."""
    x = torch.empty(2, 3, 5, device="meta")
    w = torch.empty(7, 5, device="meta")
    y = FF.linear(x, w, torch.empty(7, device="meta"))
    assert y.device.type == "meta" and y.shape == (2, 3, 7) and y.dtype == torch.float32
    assert FF.linear(torch.empty(5, device="meta"), w).shape == (7,)
