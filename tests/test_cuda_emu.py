"""fastnn's CUDA kernels run by the CPU emulator in tests/cuda_emu (no GPU needed), against
fastnn's CPU kernels.

The emulator compiles csrc/cuda/{relu,log_softmax,nll_loss,cross_entropy,linear}.cu with the
host compiler (kernels and host code as written; tests/cuda_emu/build.py lists the few
CUDA-only constructs it rewrites) and
runs every thread of every block, with real barriers, warp shuffles, queued cp.async copies
and WMMA tiles, so each kernel path (warp / block / strided / column kernels, vector and
scalar tails, multi-block reductions and their finalize kernel, label smoothing, the half
types, the SIMT and tensor-core GEMMs, split-K, grad_bias) is checked here on every run.
It does not replace a GPU: it cannot see timing, memory ordering beyond the barriers, or
the device's own exp/log and tensor-core rounding (see tests/cuda_emu/include/cuda_runtime.h);
tests/test_cuda.py and the device-parametrised tests do that on a GPU. The Hopper
wgmma GEMM runs against the emulator's model of wgmma (the last tests).
"""
import os
import sys
from pathlib import Path

import pytest
import torch

from support import assert_close, make_layout, nan_in_one_thread, randn

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"),
                       reason="the CUDA emulator needs Linux (fibers on ucontext or x86-64)"),
    # FASTNN_EMULATE_CUDA=1 makes fastnn's CPU kernels the emulated ones: nothing to compare
    pytest.mark.skipif(os.environ.get("FASTNN_EMULATE_CUDA") == "1",
                       reason="the reference (fastnn's CPU kernels) is itself emulated CUDA here"),
]

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
F = torch.ops.fastnn


@pytest.fixture(scope="module")
def E():
    sys.path.insert(0, str(Path(__file__).parent / "cuda_emu"))
    try:
        import build
    finally:
        sys.path.pop(0)
    return build.load()


def _ids(dts):
    return [str(d)[6:] for d in dts]


# ----------------------------------------------------------------------------------------
# The launch rewrite itself.

def test_rewrite_launches():
    sys.path.insert(0, str(Path(__file__).parent / "cuda_emu"))
    try:
        import build
    finally:
        sys.path.pop(0)
    src = ("k<T, 1><<<grid, 256, 0, stream>>>(a, f(b, c));\n"
           "  ns::kern\n      <<<dim3(g, 2), t>>>();\n"
           "extern __shared__ __align__(16) unsigned char buf[];\n"
           "TORCH_LIBRARY_IMPL(fastnn, CUDA, m) {}")
    out = build.rewrite(src)
    assert "::emu::launch(k<T, 1>, ::emu::config(grid, 256, 0, stream), a, f(b, c));" in out
    assert "::emu::launch(ns::kern, ::emu::config(dim3(g, 2), t));" in out
    assert "unsigned char* buf = static_cast<unsigned char*>(::emu::dynamic_smem());" in out
    assert "TORCH_LIBRARY_IMPL(fastnn_emu, CPU, m)" in out


# ----------------------------------------------------------------------------------------
# ReLU: bitwise equal (no arithmetic: the value or a zero passes through).

@pytest.mark.parametrize("dtype", DTYPES, ids=_ids(DTYPES))
@pytest.mark.parametrize("n", [0, 1, 7, 1000, 4099, 70001])
@pytest.mark.parametrize("layout", ["contiguous", "sliced", "strided"])
def test_relu(E, dtype, n, layout):
    x = randn(n, dtype=dtype)
    if n >= 4:
        x[:4] = torch.tensor([float("nan"), -0.0, 0.0, float("-inf")], dtype=dtype)
    x = make_layout(x, layout)
    y = E.relu_forward(x)
    ref = F.relu_forward(x)
    # NaN payloads included; the sign of relu(-0.0) is the device's max (native CUDA's
    # formula) and the host libm's here, so zeros compare by value
    assert _bits(y) == _bits(ref)
    dy = make_layout(randn(n, dtype=dtype), layout)
    assert _bits(E.relu_backward(dy, ref)) == _bits(F.relu_backward(dy, ref))
    z = x.clone()
    E.relu_forward_(z)
    assert _bits(z) == _bits(ref)


def _bits(t):
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return torch.where(t == 0, torch.zeros_like(t), t).contiguous().view(ints).tolist()


# ----------------------------------------------------------------------------------------
# LogSoftmax: every kernel path, forward and backward.

LSM_CASES = [
    ((64, 10), 1),      # MNIST: warp kernel, two rows per warp
    ((5, 1), 1),        # C = 1
    ((33, 17), 1),      # warp per row, ELEMS 1
    ((9, 100), -1),     # ELEMS 4
    ((3, 1024), 1),     # largest warp row
    ((4000, 10), 1),    # many blocks (grid-stride over rows)
    ((2, 1025), 1),     # block kernel, scalar loads (C not a multiple of the vector)
    ((3, 4096), 1),     # block kernel, vector loads, row cached in shared memory
    ((2, 13000), 1),    # row too long for the cache: pass 2 re-reads x
    ((4, 10, 7), 1),    # strided kernel (inner > 1)
    ((6, 5, 3), 0),
    ((), 0),            # 0-d
]


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids(DTYPES))
@pytest.mark.parametrize("shape,dim", LSM_CASES, ids=[f"{s}-{d}" for s, d in LSM_CASES])
def test_log_softmax(E, dtype, shape, dim):
    x = randn(*shape, dtype=dtype, scale=3.0)
    k = x.shape[dim] if x.dim() else 1
    y = E.log_softmax_forward(x, dim)
    ref = F.log_softmax_forward(x, dim)
    assert_close(y, ref, k=k)
    dy = randn(*shape, dtype=dtype)
    assert_close(E.log_softmax_backward(dy, ref, dim), F.log_softmax_backward(dy, ref, dim), k=k)


@pytest.mark.parametrize("C", [10, 300, 2048])
def test_log_softmax_special_values(E, C):
    x = randn(7, C)
    x[0] = float("-inf")                  # all -inf: NaN row, as natively
    x[1, 3] = float("inf")                # +inf: NaN row
    x[2, 5] = float("nan")
    x[3, : C // 2] = float("-inf")        # some -inf: those get -inf
    x[4] = 1e30                           # huge but equal
    nan_in_one_thread(x[5])               # NaN row, also when some threads see only NaN
    x[6] = float("nan")
    x[6, 0] = 0.0
    y, ref = E.log_softmax_forward(x, 1), F.log_softmax_forward(x, 1)
    assert_close(y, ref, k=C, equal_nan=True)


def test_log_softmax_noncontiguous(E):
    x = make_layout(randn(50, 40), "transposed")
    assert_close(E.log_softmax_forward(x, 1), F.log_softmax_forward(x, 1), k=40)
    assert_close(E.log_softmax_forward(x, 0), F.log_softmax_forward(x, 0), k=50)


# ----------------------------------------------------------------------------------------
# NLLLoss and the fused cross-entropy: reductions, weights, ignore_index, spatial inputs.

def _loss_inputs(shape, dtype, weighted, ignore, seed=0):
    g = torch.Generator().manual_seed(seed)
    C = shape[1] if len(shape) > 1 else shape[0]
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2).to(dtype)
    tshape = (shape[0],) + tuple(shape[2:]) if len(shape) > 1 else ()
    t = torch.randint(0, C, tshape, generator=g)
    if ignore and t.numel():
        t.view(-1)[::3] = -100
    w = (torch.rand(C, generator=g, dtype=torch.float64) + 0.5).to(dtype) if weighted else None
    return x, t, w, C


LOSS_SHAPES = [(64, 10), (1, 5), (10,), (0, 4), (5000, 10), (17000, 3), (300, 40), (3, 2000),
               (2, 5000), (4, 3, 5, 6), (2, 7, 300)]  # (17000, 3): several blocks + finalize
REDUCTIONS = [0, 1, 2]  # none, mean, sum


def _close_loss(a, b, dtype, k):
    # totals of many terms: compare with the length of the reduction
    assert_close(a, b, k=k)


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids(DTYPES))
@pytest.mark.parametrize("shape", LOSS_SHAPES, ids=[str(s) for s in LOSS_SHAPES])
@pytest.mark.parametrize("weighted", [False, True], ids=["", "weight"])
@pytest.mark.parametrize("ignore", [False, True], ids=["", "ignore"])
def test_nll_loss(E, dtype, shape, weighted, ignore):
    x, t, w, C = _loss_inputs(shape, dtype, weighted, ignore)
    P = max(t.numel(), 1)
    for red in REDUCTIONS:
        loss, tw = E.nll_loss_forward(x, t, w, red, -100)
        rloss, rtw = F.nll_loss_forward(x, t, w, red, -100)
        assert tw.dtype == rtw.dtype
        assert_close(loss, rloss, k=P, equal_nan=True)
        assert_close(tw, rtw, k=P)
        go = randn(*loss.shape, dtype=dtype)
        assert torch.equal(E.nll_loss_backward(go, x, t, w, red, -100, rtw),
                           F.nll_loss_backward(go, x, t, w, red, -100, rtw))


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids(DTYPES))
@pytest.mark.parametrize("shape", LOSS_SHAPES, ids=[str(s) for s in LOSS_SHAPES])
@pytest.mark.parametrize("weighted", [False, True], ids=["", "weight"])
@pytest.mark.parametrize("ignore", [False, True], ids=["", "ignore"])
@pytest.mark.parametrize("eps", [0.0, 0.1], ids=["", "ls0.1"])
def test_cross_entropy(E, dtype, shape, weighted, ignore, eps):
    x, t, w, C = _loss_inputs(shape, dtype, weighted, ignore)
    P = max(t.numel(), 1)
    for red in REDUCTIONS:
        loss, lse, tw = E.cross_entropy_forward(x, t, w, red, -100, eps)
        rloss, rlse, rtw = F.cross_entropy_forward(x, t, w, red, -100, eps)
        assert lse.dtype == rlse.dtype and tw.dtype == rtw.dtype
        assert_close(lse, rlse, k=C)
        assert_close(loss, rloss, k=P * C, equal_nan=True)
        assert_close(tw, rtw, k=P)
        go = randn(*loss.shape, dtype=dtype)
        dx = E.cross_entropy_backward(go, x, t, w, red, -100, rlse, rtw, eps)
        rdx = F.cross_entropy_backward(go, x, t, w, red, -100, rlse, rtw, eps)
        assert_close(dx, rdx, k=C)


@pytest.mark.parametrize("C", [10, 3000])
def test_cross_entropy_special_values(E, C):
    x = randn(6, C)
    x[0, 1] = float("inf")
    x[1, 2] = float("nan")
    x[2] = float("-inf")
    x[2, 0] = 0.0
    x[3] = 50.0
    nan_in_one_thread(x[5])
    t = torch.tensor([1, 3, 0, 4, 2, 0])
    for red in REDUCTIONS:
        a = E.cross_entropy_forward(x, t, None, red, -100, 0.0)
        b = F.cross_entropy_forward(x, t, None, red, -100, 0.0)
        for u, v in zip(a, b):
            assert_close(u, v, k=C, equal_nan=True)


def test_bad_target_fails_the_launch(E):
    x = randn(8, 10)
    t = torch.tensor([0, 1, 2, 3, 4, 5, 6, 10])
    with pytest.raises(RuntimeError, match="device-side assertion"):
        E.nll_loss_forward(x, t, None, 1, -100)
    with pytest.raises(RuntimeError, match="device-side assertion"):
        E.cross_entropy_forward(x, t, None, 1, -100, 0.0)


# ----------------------------------------------------------------------------------------
# Linear: the SIMT GEMMs (float32, float64: register-staged for many tiles, a cp.async ring
# of element copies for few), the WMMA tensor-core GEMMs (float16, bfloat16, TF32: a
# cp.async ring for aligned operands, register-staged otherwise), split-K with its
# fixed-order reduction, the bias epilogue and the grad_bias column sums.

LINEAR_SHAPES = [
    (64, 784, 256),   # MNIST layer 1 (split-K: fewer output tiles than SMs)
    (64, 64, 10),     # MNIST layer 4
    (7, 13, 5),       # tails everywhere, K not a multiple of the vector width
    (3, 1000, 3),
    (130, 72, 96),
    (520, 40, 520),   # the large-tile kernels (cp.async pipeline for the tensor cores)
    (2, 5, 24),       # 3-D input (2, 5, 24) -> M = 10
]


def _linear_inputs(shape, dtype, seed=0):
    M, K, N = shape
    g = torch.Generator().manual_seed(seed)
    xs = (2, 5, K) if shape == (2, 5, 24) else (M, K)
    x = torch.randn(xs, generator=g, dtype=torch.float64).to(dtype)
    w = (torch.randn(N, K, generator=g, dtype=torch.float64) / K ** 0.5).to(dtype)
    b = torch.randn(N, generator=g, dtype=torch.float64).to(dtype)
    dy = torch.randn(*xs[:-1], N, generator=g, dtype=torch.float64).to(dtype)
    return x, w, b, dy


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids(DTYPES))
@pytest.mark.parametrize("shape", LINEAR_SHAPES, ids=[str(s) for s in LINEAR_SHAPES])
def test_linear(E, dtype, shape):
    x, w, b, dy = _linear_inputs(shape, dtype)
    M, K, N = x.numel() // x.shape[-1], x.shape[-1], w.shape[0]
    for bias in (b, None):
        assert_close(E.linear_forward(x, w, bias), F.linear_forward(x, w, bias), k=K)
    got = E.linear_backward(dy, x, w, [True, True, True])
    ref = F.linear_backward(dy, x, w, [True, True, True])
    for a, r, k in zip(got, ref, (N, M, M)):
        assert_close(a, r, k=k)


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids(DTYPES))
@pytest.mark.parametrize("mask", [[True, False, False], [False, True, True], [False, False, True],
                                  [True, True, False]], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "sliced"])
def test_linear_backward_masks_and_layouts(E, dtype, mask, layout):
    # an offset x takes the WMMA GEMM's register-staged loads (no 16-byte cp.async), and
    # an operand whose gradient is not asked for is only a stand-in for its shape
    x, w, b, dy = _linear_inputs((48, 40, 24), dtype)
    x, w = make_layout(x, layout), make_layout(w, layout)
    got = E.linear_backward(dy, x, w, mask)
    ref = F.linear_backward(dy, x, w, mask)
    for a, r, k in zip(got, ref, (24, 48, 48)):
        assert (a is None) == (r is None)
        if a is not None:
            assert_close(a, r, k=k)
    assert_close(E.linear_forward(x, w, b), F.linear_forward(x, w, b), k=40)


@pytest.mark.parametrize("shape", [(64, 784, 256), (130, 72, 96), (520, 40, 520)], ids=str)
def test_linear_tf32(E, shape):
    # allow_tf32: float32 on the tensor cores with TF32 inputs (10 mantissa bits, as
    # native matmul). Each product then errs by at most ~2 * 2^-11 relative, so the
    # result is within 2e-3 * sum_k |x||w| of the exact one, and not equal to the
    # float32 result (the TF32 path was taken).
    x, w, b, _ = _linear_inputs(shape, torch.float32)
    exact = x.double() @ w.double().t() + b.double()
    bound = 2e-3 * (x.double().abs() @ w.double().abs().t()) + 1e-6
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        y = E.linear_forward(x, w, b)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    assert ((y.double() - exact).abs() <= bound).all()
    assert not torch.equal(y, E.linear_forward(x, w, b))


_SPLIT_CHILD = r"""
import hashlib, sys, torch
sys.path.insert(0, sys.argv[1])
import build
E = build.load()
g = torch.Generator().manual_seed(0)
x, w, b = torch.randn(64, 784, generator=g), torch.randn(64, 784, generator=g), torch.randn(64, generator=g)
before = torch.ops.fastnn_emu_rt.launches("splitk_reduce_kernel")
y = E.linear_forward(x, w, b)
reduces = torch.ops.fastnn_emu_rt.launches("splitk_reduce_kernel") - before
err = ((y.double() - (x.double() @ w.double().t() + b.double())).abs()
       / (x.double().abs() @ w.double().abs().t())).max().item()
print(reduces, err, hashlib.sha256(y.numpy().tobytes()).hexdigest())
"""


def _run_split_child(cap):
    import subprocess
    env = dict(os.environ)
    env.pop("FASTNN_GEMM_MAX_SPLITS", None)
    if cap is not None:
        env["FASTNN_GEMM_MAX_SPLITS"] = cap
    return subprocess.run([sys.executable, "-c", _SPLIT_CHILD, str(Path(__file__).parent / "cuda_emu")],
                          env=env, capture_output=True, text=True, timeout=900)


def test_linear_split_cap(E):
    # FASTNN_GEMM_MAX_SPLITS caps split-K (to tune the policy on a GPU), read once per
    # process, so each setting runs in a child. 64 x 784 x 64 float32: 4 output tiles of
    # 32 x 32 and 49 K tiles of 16, so the policy splits K 6 ways (>= 8 tiles each) and
    # reduces once. Capped at 2 it still reduces once, but over 2 partial sums (other
    # rounding, so other bits); capped at 1 it does not split. Every result is within
    # float32 rounding of the exact product.
    runs = {}
    for cap in (None, "2", "1"):
        r = _run_split_child(cap)
        assert r.returncode == 0, r.stderr[-3000:]
        reduces, err, digest = r.stdout.split()
        assert float(err) < 1e-5, (cap, err)
        runs[cap] = int(reduces), digest
    assert [runs[c][0] for c in (None, "2", "1")] == [1, 1, 0], runs
    assert len({digest for _, digest in runs.values()}) == 3, runs
    for bad in ("0", "33", "two"):
        r = _run_split_child(bad)
        assert r.returncode != 0 and "FASTNN_GEMM_MAX_SPLITS must be an integer from 1 to 32" in r.stderr, \
            r.stderr[-2000:]


# ----------------------------------------------------------------------------------------
# The Hopper wgmma GEMMs (gemm_sm90.cuh; FASTNN_WGMMA=all / tma-all sends every product
# to the cp.async / TMA kernel): the 128-byte-swizzled stages, the matrix descriptors
# (K-major, and MN-major for the TMA kernel's in-place backward), the wgmma group
# pipeline, the TMA kernel's mbarriers and the epilogue, against the emulator's models
# (cuda_runtime.h: wgmma operands read through the descriptors when issued and again at
# the wait, which must agree; TMA boxes that land only when their barrier is waited on).
# FASTNN_WGMMA is read once per process, so the products run in a child process.

_WGMMA_CHILD = r"""
import sys, torch
sys.path.insert(0, sys.argv[1])
import build
E, F = build.load(), torch.ops.fastnn
torch.backends.cuda.matmul.allow_tf32 = True  # float32 takes wgmma as TF32
launches = lambda: [torch.ops.fastnn_emu_rt.launches(name) for name in
                    ("wgmma_gemm_", "wgmma_gemm_tma_kernel", "transpose_kernel")]
worst, took = {}, []
for dt in (torch.float16, torch.bfloat16, torch.float32):
    for M, K, N in [(130, 264, 200), (128, 64, 256), (1, 8, 1), (300, 72, 260), (64, 0, 16),
                    (520, 328, 136)]:
        g = torch.Generator().manual_seed(M * K + N)
        x = torch.randn(M, K, generator=g).to(dt)
        w = (torch.randn(N, K, generator=g) / max(K, 1) ** 0.5).to(dt)
        b = torch.randn(N, generator=g).to(dt)
        dy = torch.randn(M, N, generator=g).to(dt)
        X, W, B, DY = (t.double() for t in (x, w, b, dy))
        got = []
        for product in (lambda: E.linear_forward(x, w, b),
                        lambda: E.linear_backward(dy, x, w, [True, False, False])[0],
                        lambda: E.linear_backward(dy, x, w, [False, True, False])[1]):
            before = launches()
            got.append(product())
            took.append((str(dt), M, K, N, len(got) - 1,
                         [a - b for a, b in zip(launches(), before)]))
        got.append(E.linear_backward(dy, x, w, [False, False, True])[2])
        exact = [X @ W.t() + B, DY @ W, DY.t() @ X, DY.sum(0)]
        # per element: output rounding plus TF32's input rounding, relative to sum |terms|
        bound = [X.abs() @ W.abs().t() + B.abs(), DY.abs() @ W.abs(), DY.abs().t() @ X.abs(),
                 DY.abs().sum(0)]
        eps = {torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7, torch.float32: 2.0 ** -9}[dt]
        for i, (a, e, s) in enumerate(zip(got, exact, bound)):
            if a.numel():
                r = ((a.double() - e).abs() / (eps * s + 1e-30)).max().item()
                worst[(str(dt), M, K, N, i)] = r
print(max(worst.values()))
print(sorted(worst.items(), key=lambda kv: -kv[1])[:3])
print(took)
"""


def _run_wgmma_child(mode):
    import os
    import subprocess
    env = dict(os.environ, FASTNN_WGMMA=mode)
    return subprocess.run([sys.executable, "-c", _WGMMA_CHILD, str(Path(__file__).parent / "cuda_emu")],
                          env=env, capture_output=True, text=True, timeout=900)


def _wgmma_products(r):
    """(dtype, M, K, N, product name, chunk, outputs, [wgmma, TMA-kernel, transpose launches])
    per product of a child run, after checking its values: every element within 2
    rounding units of its own scale (sum of |terms|)."""
    import ast
    assert r.returncode == 0, r.stderr[-3000:]
    assert float(r.stdout.splitlines()[0]) <= 2.0, r.stdout
    for dt, M, K, N, i, n in ast.literal_eval(r.stdout.splitlines()[2]):
        q = 4 if dt == "torch.float32" else 8  # elements per 16-byte chunk
        yield dt, M, K, N, ("fwd", "dx", "dW")[i], q, (M * N, M * K, N * K)[i], n


def test_wgmma_gemm(E):
    # FASTNN_WGMMA=all: each product takes the cp.async wgmma kernel exactly when it can:
    # its contraction length (K forward, N for dx, M for dW) whole 16-byte chunks (K = 0
    # included: the kernel then writes the bias) and its output not empty; dx and dW
    # through transposed copies (one for dx, two for dW).
    for dt, M, K, N, name, q, outputs, (n, n_tma, n_copy) in _wgmma_products(_run_wgmma_child("all")):
        inner = {"fwd": K, "dx": N, "dW": M}[name]
        took = int(inner % q == 0 and outputs > 0)
        copies = {"fwd": 0, "dx": 1, "dW": 2}[name] * took
        assert (n, n_tma, n_copy) == (took, 0, copies), (dt, M, K, N, name, n, n_tma, n_copy)


def test_wgmma_tma_gemm(E):
    # FASTNN_WGMMA=tma-all: the TMA kernel takes every product with a non-empty output
    # and reduction whose operands' contiguous lengths are whole 16-byte chunks. For the
    # 16-bit types dx (A = dy K-major, B = W MN-major) and dW (both MN-major) read their
    # operands in place: dx needs N and K whole chunks, dW N and K (M, its reduction, is
    # free: the TMA fills its tail with zeros). Otherwise (TF32, or those lengths not
    # whole chunks) the products go through transposed copies as before, which need
    # their reduction length in whole chunks; K = 0 takes the cp.async kernel.
    seen_in_place = set()
    for dt, M, K, N, name, q, outputs, (n, n_tma, n_copy) in _wgmma_products(_run_wgmma_child("tma-all")):
        half = q == 8
        inner = {"fwd": K, "dx": N, "dW": M}[name]
        if name == "fwd":
            in_place = outputs > 0 and K % q == 0
        elif name == "dx":
            in_place = half and outputs > 0 and N > 0 and N % q == 0 and K % q == 0
        else:
            in_place = half and outputs > 0 and M > 0 and N % q == 0 and K % q == 0
        via_copies = not in_place and outputs > 0 and inner % q == 0 and name != "fwd"
        took = in_place or via_copies or (name == "fwd" and outputs > 0 and K % q == 0)
        tma = took and inner > 0
        copies = {"fwd": 0, "dx": 1, "dW": 2}[name] * via_copies
        assert (n, n_tma, n_copy) == (int(took), int(tma), copies), (dt, M, K, N, name, n, n_tma, n_copy)
        if in_place and name != "fwd":
            seen_in_place.add((name, M % q != 0))
    # dx and dW read in place, dW also with a batch that is not whole chunks (M = 130)
    assert {("dx", False), ("dW", False), ("dW", True)} <= seen_in_place, seen_in_place


_WGMMA_DEFAULT_CHILD = r"""
import sys, torch
sys.path.insert(0, sys.argv[1])
import build
E = build.load()
launches = lambda: torch.ops.fastnn_emu_rt.launches(sys.argv[2])
# 12 x 11 = 132 output tiles of 128 x 256 (one wave on the emulated 132-SM H100), and 120
for M, N in ((1536, 2816), (1536, 2560)):
    g = torch.Generator().manual_seed(N)
    x, w = torch.randn(M, 8, generator=g).half(), torch.randn(N, 8, generator=g).half()
    before = launches()
    y = E.linear_forward(x, w, None)
    ref = x.double() @ w.double().t()
    err = ((y.double() - ref).abs() / (x.double().abs() @ w.double().abs().t() + 1e-30)).max().item()
    print(M, N, launches() - before, err)
"""


@pytest.mark.parametrize("mode", [None, "0", "tma"])
def test_wgmma_by_default_for_a_wave_of_tiles(E, mode):
    # By default (FASTNN_WGMMA unset) a half-type product whose output fills a wave of
    # 128 x 256 tiles takes the (cp.async) wgmma kernel, one a tile short does not; =0:
    # neither; =tma: the TMA kernel, for the same products.
    import os
    import subprocess
    env = dict(os.environ)
    env.pop("FASTNN_WGMMA", None)
    if mode is not None:
        env["FASTNN_WGMMA"] = mode
    kernel = "wgmma_gemm_tma_kernel" if mode == "tma" else "wgmma_gemm_nt_kernel"
    r = subprocess.run([sys.executable, "-c", _WGMMA_DEFAULT_CHILD, str(Path(__file__).parent / "cuda_emu"),
                        kernel], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [line.split() for line in r.stdout.splitlines()]
    assert [int(n) for _, _, n, _ in rows] == ([0, 0] if mode == "0" else [1, 0]), r.stdout
    assert all(float(e) <= 2.0 ** -10 for *_, e in rows), r.stdout  # one float16 rounding


def test_wgmma_mode_is_read_in_the_emulated_build(E):
    # the selection logic is live in this build: a bad FASTNN_WGMMA is refused by name
    r = _run_wgmma_child("bogus")
    assert r.returncode != 0 and "FASTNN_WGMMA must be 0, 1, all, tma or tma-all" in r.stderr, r.stderr[-2000:]
