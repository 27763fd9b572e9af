"""CUDA-only tests (skipped without a GPU or without fastnn's CUDA kernels): CUDA vs
fastnn's CPU kernels, TF32, a whole training step captured in a CUDA graph, bitwise
run-to-run determinism, big shapes and non-default streams. (Half dtypes and autocast,
on both devices: test_half.py.)"""
import copy

import pytest
import torch
import torch.nn.functional as F

import fastnn
import fastnn.functional as FF
from support import (CUDA_OK, CUDA_SKIP_REASON, assert_close, init_weight, randn,
                     seed_mlp, synthetic_mnist)

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not CUDA_OK, reason=CUDA_SKIP_REASON)]
DEV = "cuda"


# ----------------------------------------------------------------------------- CUDA vs CPU

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16],
                         ids=["float32", "float64", "float16", "bfloat16"])
def test_cuda_matches_fastnn_cpu(dtype):
    x = randn(37, 300, dtype=dtype, scale=2)
    w = init_weight(65, 300, dtype=dtype)
    b = randn(65, dtype=dtype)
    t = torch.randint(0, 65, (37,))
    t[::4] = 3
    cw = torch.rand(65, dtype=dtype) + 0.5

    def pipeline(dev):
        xs, ws, bs = (v.to(dev).requires_grad_() for v in (x, w, b))
        h = FF.relu(FF.linear(xs, ws, bs))
        lp = FF.log_softmax(h, 1)
        loss = (FF.nll_loss(lp, t.to(dev), cw.to(dev), ignore_index=3)
                + FF.cross_entropy(h, t.to(dev), cw.to(dev), ignore_index=3, reduction="sum"))
        loss.backward()
        return [v.detach().cpu() for v in (h, lp, loss, xs.grad, ws.grad, bs.grad)]

    for a, c in zip(pipeline("cuda"), pipeline("cpu")):
        assert_close(a, c, dtype, k=300)


# ----------------------------------------------------------------------------- TF32

def test_tf32_linear_within_tf32_tolerance():
    """With TF32 allowed native float32 matmuls use TF32 (10-bit mantissa, ~5e-4 relative
    per product); fastnn may or may not. Either way both agree within TF32 accuracy.
    The flag is restored by conftest's autouse fixture (and here)."""
    old = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        x = randn(256, 784, device=DEV)
        w = init_weight(256, 784, device=DEV)
        b = randn(256, device=DEV)
        y0 = F.linear(x, w, b)
        y1 = FF.linear(x, w, b)
        assert y1.dtype == torch.float32
        torch.testing.assert_close(y1, y0, rtol=1e-2, atol=1e-2)
        xs = x.clone().requires_grad_()
        FF.linear(xs, w.requires_grad_(), b).sum().backward()
        torch.testing.assert_close(xs.grad, w.detach().sum(0).expand_as(x), rtol=1e-2, atol=1e-2)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


# ----------------------------------------------------------------------------- CUDA graphs

@pytest.mark.parametrize("loss", ["nll", "ce"])
def test_cuda_graph_training_step(loss):
    """A whole training step (forward, loss, backward, Adam(capturable=True).step())
    captured with torch.cuda.graph and replayed on new static inputs matches the same
    steps run eagerly."""
    torch.manual_seed(0)
    model = fastnn.convert(seed_mlp(torch.nn, log_softmax=(loss == "nll")).to(DEV))
    loss_fn = fastnn.NLLLoss() if loss == "nll" else fastnn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, capturable=True)
    x, t = synthetic_mnist(64 * 8, device=DEV)
    batches = [(x[i * 64:(i + 1) * 64], t[i * 64:(i + 1) * 64]) for i in range(8)]
    static_x, static_t = batches[0][0].clone(), batches[0][1].clone()

    # warm up on a side stream (as the CUDA-graph docs require), 2 real steps
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for xb, tb in batches[:2]:
            opt.zero_grad(set_to_none=True)
            loss_fn(model(xb), tb).backward()
            opt.step()
    torch.cuda.current_stream().wait_stream(s)

    # the eager reference continues from the same state
    ref_model = copy.deepcopy(model)
    ref_opt = torch.optim.Adam(ref_model.parameters(), lr=3e-3, capturable=True)
    ref_opt.load_state_dict(copy.deepcopy(opt.state_dict()))

    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss = loss_fn(model(static_x), static_t)
        static_loss.backward()
        opt.step()

    graph_losses, eager_losses = [], []
    for xb, tb in batches[2:]:
        static_x.copy_(xb)
        static_t.copy_(tb)
        graph.replay()
        graph_losses.append(static_loss.clone())

        ref_opt.zero_grad(set_to_none=True)
        l_ref = loss_fn(ref_model(xb), tb)
        l_ref.backward()
        ref_opt.step()
        eager_losses.append(l_ref.detach())
    torch.cuda.synchronize()
    torch.testing.assert_close(torch.stack(graph_losses), torch.stack(eager_losses),
                               rtol=1e-5, atol=1e-6)
    assert not torch.equal(graph_losses[0], graph_losses[-1]), "replays did not train"
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_cuda_graph_each_op():
    """Every op alone is capturable (no host sync, no cudaMalloc) and replays correctly."""
    x = torch.randn(32, 100, device=DEV, requires_grad=True)
    w = torch.randn(10, 100, device=DEV, requires_grad=True)
    t = torch.randint(0, 10, (32,), device=DEV)

    def step():
        h = FF.relu(FF.linear(x, w))
        loss = FF.nll_loss(FF.log_softmax(h, 1), t) + FF.cross_entropy(h, t, reduction="sum")
        return loss, torch.autograd.grad(loss, (x, w))

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = step()
    with torch.no_grad():
        x.copy_(torch.randn_like(x))
    t.copy_(torch.randint(0, 10, (32,), device=DEV))
    g.replay()
    ref = step()
    torch.testing.assert_close(out[0], ref[0])
    for a, b in zip(out[1], ref[1]):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------- determinism

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16],
                         ids=["float32", "float64", "float16", "bfloat16"])
def test_cuda_bitwise_deterministic(dtype):
    x = randn(1024, 784, dtype=dtype, device=DEV)
    w = init_weight(256, 784, dtype=dtype, device=DEV)
    b = randn(256, dtype=dtype, device=DEV)
    t = torch.randint(0, 256, (1024,), device=DEV)
    t[::9] = 0
    cw = (torch.rand(256, device=DEV) + 0.5).to(dtype)

    def run():
        xs, ws, bs = (v.clone().requires_grad_() for v in (x, w, b))
        h = FF.linear(xs, ws, bs)
        r = FF.relu(h)
        lp = FF.log_softmax(r, 1)
        loss = (FF.nll_loss(lp, t, cw, ignore_index=0) + FF.cross_entropy(h, t, cw, ignore_index=0)
                + FF.cross_entropy(h, t, reduction="sum") * 1e-3)
        loss.backward()
        return [v.detach() for v in (h, r, lp, loss, xs.grad, ws.grad, bs.grad)]

    first = run()
    for _ in range(3):
        for i, (a, c) in enumerate(zip(first, run())):
            assert torch.equal(a, c), f"output {i} differs between runs"


# ----------------------------------------------------------------------------- big / streams

def test_cuda_big_shapes():
    """Sizes past 2^16 rows / one-block reductions; long rows."""
    x = randn(70000, 10, device=DEV, scale=3)
    t = torch.randint(0, 10, (70000,), device=DEV)
    for red in ("mean", "sum"):
        assert_close(FF.cross_entropy(x, t, reduction=red), F.cross_entropy(x, t, reduction=red),
                     torch.float32, k=70000)
        assert_close(FF.nll_loss(x, t, reduction=red), F.nll_loss(x, t, reduction=red),
                     torch.float32, k=70000)
    row = randn(3, 200003, device=DEV, scale=3)
    assert_close(FF.log_softmax(row, 1), F.log_softmax(row, 1), torch.float32, k=200003)
    assert_close(FF.log_softmax(row, 0), F.log_softmax(row, 0), torch.float32, k=3)
    a = randn(4096, 1024, device=DEV)
    w = init_weight(1024, 1024, device=DEV)
    assert_close(FF.linear(a, w), F.linear(a, w), torch.float32, k=1024)


def test_cuda_non_default_stream():
    """Kernels run on the current stream: results are right when it is a side stream."""
    x = randn(512, 256, device=DEV)
    w = init_weight(128, 256, device=DEV)
    expected = F.log_softmax(F.relu(F.linear(x, w)), 1)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        out = FF.log_softmax(FF.relu(FF.linear(x, w)), 1)
    torch.cuda.current_stream().wait_stream(s)
    assert_close(out, expected, torch.float32, k=256)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_cuda_second_device():
    x = randn(16, 32, device="cuda:1")
    w = init_weight(8, 32, device="cuda:1")
    y = FF.linear(x, w)
    assert y.device == x.device
    assert_close(y, F.linear(x, w), torch.float32, k=32)
