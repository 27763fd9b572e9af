"""fastnn log_softmax / LogSoftmax vs native: every dim (incl. negative) of 1-D..4-D
inputs, non-contiguous inputs, large and infinite logits, empty and 0-d inputs."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastnn
import fastnn.functional as FF
from support import (NONCONTIG_LAYOUTS, assert_close, assert_dense, leaf, make_layout, nan_in_one_thread,
                     randn, tol)

SHAPES = [(10,), (1,), (3, 7), (1, 1000), (64, 10), (2, 3, 4), (5, 1, 33), (2, 3, 4, 5), (3, 17, 2, 9)]
DIM_CASES = [pytest.param(shape, dim, id=f"{shape}-dim{dim}")
             for shape in SHAPES for dim in range(-len(shape), len(shape))]


def check(x, dim, dtype, g=None, fwd_atol=None):
    """Values and dx vs native. fwd_atol overrides the forward's atol (for huge logits,
    where the rounding of x - max - lse is relative to |x|, not to the output)."""
    x0, x1 = leaf(x), leaf(x)
    y0 = F.log_softmax(x0, dim)
    y1 = FF.log_softmax(x1, dim)
    assert_dense(y1)
    k = x.shape[dim] if x.dim() else 1
    if fwd_atol is None:
        assert_close(y1, y0.detach(), dtype, k=k)
    else:
        torch.testing.assert_close(y1, y0.detach(), rtol=tol(dtype)["rtol"], atol=fwd_atol)
    g = randn(*x.shape, dtype=dtype, device=x.device) if g is None else g
    y0.backward(g)
    y1.backward(g)
    assert_close(x1.grad, x0.grad, dtype, k=k)


@pytest.mark.parametrize("shape,dim", DIM_CASES)
def test_log_softmax_dims(device, dtype, shape, dim):
    check(randn(*shape, dtype=dtype, device=device, scale=3), dim, dtype)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 31, 32, 33, 255, 1000, 4097])
def test_log_softmax_row_lengths(device, dtype, n):
    """Row lengths around the vector width / unrolling of the kernels, both along the
    last dim (contiguous rows) and along dim 0 (strided columns)."""
    check(randn(5, n, dtype=dtype, device=device, scale=3), 1, dtype)
    check(randn(n, 5, dtype=dtype, device=device, scale=3), 0, dtype)


@pytest.mark.parametrize("n", [1, 10, 32, 33])
def test_log_softmax_row_independent_of_batch(device, dtype, n):
    """A row's result is bitwise the same whichever batch it is in and wherever it sits
    (short rows run several at a time on the CPU, a partial last group included)."""
    x = randn(37, n, dtype=dtype, device=device)
    whole = FF.log_softmax(x, 1)
    for i in (0, 7, 8, 31, 32, 36):
        assert torch.equal(FF.log_softmax(x[i:i + 1], 1), whole[i:i + 1])
        assert torch.equal(FF.log_softmax(x[i:], 1), whole[i:])


@pytest.mark.dtypes(torch.float32, torch.float64)
@pytest.mark.parametrize("layout", NONCONTIG_LAYOUTS)
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_log_softmax_noncontiguous(device, dtype, layout, dim):
    x = make_layout(randn(13, 21, dtype=dtype, device=device, scale=2), layout)
    g = make_layout(randn(13, 21, dtype=dtype, device=device), "transposed")
    check(x, dim, dtype, g)


@pytest.mark.dtypes(torch.float32, torch.float64)
def test_log_softmax_permuted_4d(device, dtype):
    x = randn(2, 3, 4, 5, dtype=dtype, device=device).permute(3, 1, 0, 2)
    for dim in range(4):
        check(x, dim, dtype)


@pytest.mark.parametrize("scale", [1e4, -1e4, 3e4])
def test_log_softmax_large_logits(device, dtype, scale):
    if dtype == torch.float16:
        scale = 5e3 if scale > 0 else -5e3  # stay far from float16's max (65504)
    x = randn(16, 40, dtype=dtype, device=device) * scale
    for dim in (1, 0):
        y0, y1 = F.log_softmax(x, dim), FF.log_softmax(x, dim)
        assert torch.isfinite(y0).all()
        assert torch.isfinite(y1).all(), "large-magnitude logits must give finite log-probs"
    # x - max - lse is rounded relative to |x| (e.g. (x - max) - lse vs x - (max + lse)):
    # allow a few ulp of max|x| absolute
    atol = 4 * torch.finfo(dtype).eps * x.abs().max().item()
    check(x, 1, dtype, fwd_atol=atol)
    check(x, 0, dtype, fwd_atol=atol)


def test_log_softmax_neg_inf(device, dtype):
    """-inf logits give -inf log-probs and zero gradient; a row that is all -inf is NaN
    natively (compared only where native is not NaN)."""
    x = randn(6, 37, dtype=dtype, device=device)
    x[0, 3] = float("-inf")
    x[1, :30] = float("-inf")      # all but 7 entries
    x[2, 1:] = float("-inf")       # a single finite entry -> log-prob 0
    x[4, :] = float("-inf")        # whole row: native gives NaN
    x[5, ::2] = float("-inf")
    for dim in (1, 0):
        y0, y1 = F.log_softmax(x, dim), FF.log_softmax(x, dim)
        finite = torch.isfinite(y0)
        assert torch.equal(torch.isfinite(y1) & finite, finite), "finite where native is finite"
        torch.testing.assert_close(y1[finite], y0[finite], **tol(dtype))
        neginf = torch.isneginf(y0)
        assert torch.isneginf(y1[neginf]).all(), "-inf where native is -inf"
    # gradient of rows that native treats as finite (exclude the all -inf row)
    keep = [0, 1, 2, 3, 5]
    xs = x[keep]
    g = randn(*xs.shape, dtype=dtype, device=device)
    x0, x1 = leaf(xs.clone()), leaf(xs.clone())
    F.log_softmax(x0, 1).backward(g)
    FF.log_softmax(x1, 1).backward(g)
    torch.testing.assert_close(x1.grad, x0.grad, **tol(dtype, 37))


@pytest.mark.parametrize("shape,dim", [((3, 37), 1), ((2, 2000), 1), ((37, 3), 0),
                                       ((2, 5, 3), 1)], ids=str)
def test_log_softmax_pos_inf(device, dtype, shape, dim):
    """A +inf logit makes its whole row NaN, as natively (exp(inf - inf)), on every kernel
    path: short and long rows (one warp / one block per row) and a reduced dim that is not
    the last (strided)."""
    x = randn(*shape, dtype=dtype, device=device)
    row = [0] * len(shape)
    row[dim] = shape[dim] // 2
    x[tuple(row)] = float("inf")
    y0, y1 = F.log_softmax(x, dim), FF.log_softmax(x, dim)
    assert torch.isnan(y0).any()
    assert torch.equal(torch.isnan(y1), torch.isnan(y0)), "NaN exactly where native has it"
    finite = ~torch.isnan(y0)
    torch.testing.assert_close(y1[finite], y0[finite], **tol(dtype))


@pytest.mark.parametrize("C", [9, 2000], ids=str)
def test_log_softmax_nan_propagates(device, dtype, C):
    """A NaN makes its row NaN, as natively, for short rows (one warp per row on CUDA) and
    long ones (one block per row), also when one thread of the block sees every NaN."""
    x = randn(4, C, dtype=dtype, device=device)
    x[1, 4] = float("nan")
    nan_in_one_thread(x[2])
    y0, y1 = F.log_softmax(x, 1), FF.log_softmax(x, 1)
    assert torch.isnan(y0[1]).all() and torch.equal(torch.isnan(y1), torch.isnan(y0))
    finite = ~torch.isnan(y0)
    torch.testing.assert_close(y1[finite], y0[finite], **tol(dtype, C))


@pytest.mark.parametrize("shape,dim", [((0, 5), 1), ((0, 5), 0), ((3, 0), 1), ((3, 0), 0),
                                       ((2, 0, 4), 2), ((0,), 0)], ids=str)
def test_log_softmax_empty(device, dtype, shape, dim):
    x = randn(*shape, dtype=dtype, device=device)
    y0, y1 = F.log_softmax(x, dim), FF.log_softmax(x, dim)
    assert y1.shape == y0.shape and y1.dtype == y0.dtype
    x1 = leaf(x.clone())
    FF.log_softmax(x1, dim).sum().backward()
    assert x1.grad.shape == x.shape


@pytest.mark.dtypes(torch.float32, torch.float64)
@pytest.mark.parametrize("dim", [0, -1])
def test_log_softmax_0d(device, dtype, dim):
    x = torch.tensor(2.5, dtype=dtype, device=device)
    check(x, dim, dtype, g=torch.tensor(0.7, dtype=dtype, device=device))


@pytest.mark.dtypes(torch.float32, torch.float64)
def test_log_softmax_dtype_arg_and_implicit_dim(device, dtype):
    x = randn(4, 6, dtype=torch.float32, device=device)
    y = FF.log_softmax(x, 1, dtype=dtype)
    assert y.dtype == dtype
    assert_close(y, F.log_softmax(x, 1, dtype=dtype), dtype, k=6)
    with pytest.warns(UserWarning, match="Implicit dimension"):
        y = FF.log_softmax(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = F.log_softmax(x)
    assert_close(y, expected, torch.float32, k=6)


@pytest.mark.parametrize("dim", [1, -1, 0])
def test_log_softmax_module(device, dtype, dim):
    native, fast = nn.LogSoftmax(dim=dim), fastnn.LogSoftmax(dim=dim)
    assert repr(fast) == repr(native)
    x = randn(8, 11, dtype=dtype, device=device, scale=2)
    x0, x1 = leaf(x), leaf(x)
    y0, y1 = native(x0), fast(x1)
    assert_close(y1, y0.detach(), dtype, k=11)
    g = randn(8, 11, dtype=dtype, device=device)
    y0.backward(g)
    y1.backward(g)
    assert_close(x1.grad, x0.grad, dtype, k=11)
