#!/usr/bin/env python
"""GPU check of fastnn's CUDA ops against native CUDA torch (run ON the GPU machine).

    python scripts/ops_check.py            # correctness + timings
    python scripts/ops_check.py --no-bench # correctness only
    FASTNN_LIB=/path/to/_C.so python scripts/ops_check.py   # load a library directly

For every op x dtype (float32, float64, float16, bfloat16) x a list of shapes /
dims / options it calls torch.ops.fastnn.* directly and compares with native CUDA
torch (references computed in float64 from the same inputs, so fastnn must be at
least about as accurate as native), with the CPU fastnn kernel where one is
registered, checks output shapes/dtypes/contiguity, poisons the caching allocator
with NaN before each call (so unwritten output elements show up), checks bitwise
determinism across two runs, CUDA-graph capture + replay, input validation, and
the device-side assert for out-of-range targets (in a subprocess). Then times
fastnn vs native (CUDA events, warm-up, median of 100 runs) at (64, 10) and
(8192, 4096) in float32 and bfloat16 and prints GB/s and the ratio to native.
Exits non-zero on any correctness failure.
"""
import argparse
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

if os.environ.get("FASTNN_LIB"):
    torch.ops.load_library(os.environ["FASTNN_LIB"])
else:
    import fastnn  # noqa: F401  (registers torch.ops.fastnn.*)

OPS = torch.ops.fastnn
DEV = "cuda"
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# (atol, rtol) against a float64 reference of the same (rounded) inputs.
TOL = {
    torch.float64: (1e-10, 1e-9),
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}
FAILS = []
NCHECK = [0]


def short(dt):
    return str(dt).replace("torch.", "")


def fail(msg):
    FAILS.append(msg)
    print("FAIL:", msg, flush=True)


_POISON_SIZES = [2 ** k for k in range(9, 21)] * 4 + [64 << 20, 256 << 20]


def poison():
    """Fill free blocks of the caching allocator with NaN bytes (0xFF)."""
    torch.cuda.synchronize()
    bufs = []
    for nbytes in _POISON_SIZES:
        try:
            bufs.append(torch.full((nbytes,), 255, dtype=torch.uint8, device=DEV))
        except RuntimeError:
            break
    del bufs


def bits(t):
    t = t.detach().contiguous().reshape(-1)
    return t.view(torch.uint8) if t.numel() else t


def same_bits(a, b):
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return torch.equal(bits(a), bits(b))


def dense_strides(t):
    return [st for st, n in zip(t.stride(), t.shape) if n > 1]


def close(name, got, ref, dtype, native=None, shape=None, out_dtype=None, strides_of=None):
    """got vs float64 reference; passes if within TOL or within 2x native's error. The
    output must be contiguous, or have the strides of `strides_of` (native's output)."""
    NCHECK[0] += 1
    if shape is not None and tuple(got.shape) != tuple(shape):
        return fail(f"{name}: shape {tuple(got.shape)} != {tuple(shape)}")
    if out_dtype is not None and got.dtype != out_dtype:
        return fail(f"{name}: dtype {got.dtype} != {out_dtype}")
    if strides_of is not None and dense_strides(got) != dense_strides(strides_of):
        return fail(f"{name}: strides {got.stride()}, native's {strides_of.stride()}")
    if strides_of is None and not got.is_contiguous():
        return fail(f"{name}: output is not contiguous")
    if got.device.type != "cuda":
        return fail(f"{name}: output on {got.device}")
    g = got.double()
    r = ref.double().to(g.device)
    if g.numel() == 0:
        return
    gn, rn = torch.isnan(g), torch.isnan(r)
    if not torch.equal(gn, rn):
        return fail(f"{name}: NaN pattern differs (got {int(gn.sum())} NaN, ref {int(rn.sum())})")
    mask = ~rn
    g, r = g[mask], r[mask]
    inf = torch.isinf(r)
    if inf.any():
        if not torch.equal(g[inf], r[inf]):
            return fail(f"{name}: inf mismatch")
        g, r = g[~inf], r[~inf]
    if g.numel() == 0:
        return
    if not torch.isfinite(g).all():
        return fail(f"{name}: non-finite values where the reference is finite")
    atol, rtol = TOL[dtype]
    err = (g - r).abs()
    bad = err > atol + rtol * r.abs()
    if bad.any():
        extra = ""
        if native is not None:
            n = native.double().to(g.device)[mask]
            if inf.any():
                n = n[~inf]
            nerr = (n - r).abs()
            if (err <= 2 * nerr + atol).all():
                return  # as accurate as native
            extra = f", native max err {float(nerr.max()):.3g}"
        fail(f"{name}: max abs err {float(err.max()):.3g} (at ref {float(r[err.argmax()]):.6g})"
             f" > tol {atol}/{rtol}{extra}")


def call_twice(fn, name):
    """Runs fn on poisoned memory twice; checks bitwise determinism; returns result 1."""
    poison()
    out1 = fn()
    torch.cuda.synchronize()
    poison()
    out2 = fn()
    torch.cuda.synchronize()
    o1 = out1 if isinstance(out1, (tuple, list)) else (out1,)
    o2 = out2 if isinstance(out2, (tuple, list)) else (out2,)
    for i, (a, b) in enumerate(zip(o1, o2)):
        if not same_bits(a, b):
            fail(f"{name}: output {i} not bitwise deterministic across runs")
    return out1


def cpu_op(opname, *args):
    """Runs the fastnn CPU kernel if one is registered (float32/float64), else None."""
    def to_cpu(a):
        return a.cpu() if isinstance(a, torch.Tensor) else a
    try:
        return getattr(OPS, opname)(*[to_cpu(a) for a in args])
    except (NotImplementedError, RuntimeError) as e:
        if "fastnn" in str(e) and "CPU" not in str(e) and "backend" not in str(e):
            raise
        return None


def check_cpu(name, opname, args, got, dtype):
    if dtype not in (torch.float32, torch.float64):
        return
    try:
        res = cpu_op(opname, *args)
    except Exception as e:  # noqa: BLE001
        return fail(f"{name}: CPU fastnn raised {e!r}")
    if res is None:
        return
    res = res if isinstance(res, (tuple, list)) else (res,)
    got = got if isinstance(got, (tuple, list)) else (got,)
    for i, (c, g) in enumerate(zip(res, got)):
        if c is None or g is None:
            continue
        close(f"{name} [vs CPU fastnn, out {i}]", g, c.double().cuda(), dtype)


def rand(shape, dtype, scale=3.0, g=None):
    return (torch.randn(shape, dtype=torch.float64, device=DEV, generator=g) * scale).to(dtype)


# ---------------------------------------------------------------------------
def check_relu():
    for dtype in DTYPES:
        for shape in [(), (0,), (7,), (64, 10), (1000003,), (33, 17), (4, 5, 6)]:
            x = rand(shape, dtype)
            if x.numel() > 3:
                x.view(-1)[3] = float("nan")
            name = f"relu_forward {short(dtype)} {shape}"
            y = call_twice(lambda: OPS.relu_forward(x), name)
            close(name, y, torch.relu(x.double()), dtype, shape=shape, out_dtype=dtype)
            check_cpu(name, "relu_forward", (x,), y, dtype)
            # in place, contiguous
            xi = x.clone()
            OPS.relu_forward_(xi)
            close(name + " [inplace]", xi, torch.relu(x.double()), dtype)
            # backward
            dy = rand(shape, dtype)
            yn = torch.relu(x)
            name = f"relu_backward {short(dtype)} {shape}"
            dx = call_twice(lambda: OPS.relu_backward(dy, yn), name)
            ref = torch.ops.aten.threshold_backward(dy.double(), yn.double(), 0)
            close(name, dx, ref, dtype, shape=shape, out_dtype=dtype)
            check_cpu(name, "relu_backward", (dy, yn), dx, dtype)
        # non-contiguous / unaligned inputs
        base = rand((40, 66), dtype)
        for tag, view in [("transposed", lambda b: b.t()), ("strided", lambda b: b[:, ::2]),
                          ("offset", lambda b: b.view(-1)[1:2001])]:
            xv = view(base)
            y = OPS.relu_forward(xv)
            close(f"relu_forward {short(dtype)} {tag}", y, torch.relu(xv.double()), dtype,
                  shape=xv.shape, strides_of=torch.relu(xv))
            b2 = base.clone()
            v2 = view(b2)
            OPS.relu_forward_(v2)
            ref = base.clone()
            rv = view(ref)
            rv.copy_(torch.relu(rv))
            if not same_bits(b2, ref):
                fail(f"relu_forward_ {short(dtype)} {tag}: wrong in-place result on a view")
            dy = rand(xv.shape, dtype)
            yv = torch.relu(xv)
            dyv = dy.t().contiguous().t() if dy.dim() == 2 else dy
            dx = OPS.relu_backward(dyv, yv)
            close(f"relu_backward {short(dtype)} {tag}", dx,
                  torch.ops.aten.threshold_backward(dy.double(), yv.double(), 0), dtype,
                  strides_of=torch.ops.aten.threshold_backward(dyv, yv, 0))


LSM_CASES = [((64, 10), 1), ((64, 10), -1), ((64, 10), 0), ((3,), 0), ((), 0), ((), -1),
             ((0, 10), 1), ((5, 0), 1), ((200, 1), 1), ((77, 2), 1), ((50, 16), 1), ((50, 17), 1),
             ((40, 33), 1), ((40, 64), -1), ((30, 100), 1), ((30, 255), 1), ((20, 500), 1),
             ((20, 1024), 1), ((9, 1025), 1), ((16, 4096), 1), ((4, 4099), 1), ((3, 20000), 1),
             ((2, 3, 5, 7), 1), ((2, 3, 5, 7), 2), ((2, 3, 5, 7), 0), ((8, 16, 33), -1),
             ((1000, 3), 0)]


def check_log_softmax():
    for dtype in DTYPES:
        for shape, dim in LSM_CASES:
            x = rand(shape, dtype)
            name = f"log_softmax_forward {short(dtype)} {shape} dim={dim}"
            y = call_twice(lambda: OPS.log_softmax_forward(x, dim), name)
            ref = torch.log_softmax(x.double(), dim)
            close(name, y, ref, dtype, native=torch.log_softmax(x, dim), shape=shape,
                  out_dtype=dtype)
            check_cpu(name, "log_softmax_forward", (x, dim), y, dtype)
            dy = rand(shape, dtype, 1.0)
            yn = torch.log_softmax(x, dim)
            name = f"log_softmax_backward {short(dtype)} {shape} dim={dim}"
            dx = call_twice(lambda: OPS.log_softmax_backward(dy, yn, dim), name)
            ref = torch._log_softmax_backward_data(dy.double(), yn.double(), dim, torch.float64)
            nat = torch._log_softmax_backward_data(dy, yn, dim, dtype)
            close(name, dx, ref, dtype, native=nat, shape=shape, out_dtype=dtype)
            check_cpu(name, "log_softmax_backward", (dy, yn, dim), dx, dtype)
        # non-contiguous input, large logits (half must stay finite), NaN row
        x = rand((37, 50), dtype).t()
        close(f"log_softmax_forward {short(dtype)} transposed", OPS.log_softmax_forward(x, 1),
              torch.log_softmax(x.double(), 1), dtype)
        for C in (10, 3000):
            # logits of magnitude <= 1e4: every log-probability (>= -2e4) fits in float16
            x = ((torch.rand((8, C), dtype=torch.float64, device=DEV) * 2 - 1) * 1e4).to(dtype)
            y = OPS.log_softmax_forward(x, 1)
            if not torch.isfinite(y).all():
                fail(f"log_softmax_forward {short(dtype)} logits 1e4 C={C}: non-finite output")
            close(f"log_softmax_forward {short(dtype)} logits 1e4 C={C}", y,
                  torch.log_softmax(x.double(), 1), dtype, native=torch.log_softmax(x, 1))
            x[2, 5] = float("nan")
            close(f"log_softmax_forward {short(dtype)} NaN row C={C}", OPS.log_softmax_forward(x, 1),
                  torch.log_softmax(x.double(), 1), dtype)


def loss_cases():
    # (input shape, target shape)
    return [((64, 10), (64,)), ((10,), ()), ((0, 10), (0,)), ((1, 1), (1,)), ((5000, 7), (5000,)),
            ((300, 1000), (300,)), ((33, 2048), (33,)), ((6, 3001), (6,)), ((4, 5, 3, 6), (4, 3, 6)),
            ((2, 40, 100), (2, 100)), ((3000, 12, 3), (3000, 3))]


def make_targets(tshape, C, ignore, frac_ignored=0.2):
    t = torch.randint(0, max(C, 1), tshape, device=DEV)
    if t.numel() and ignore is not None:
        m = torch.rand(tshape, device=DEV) < frac_ignored
        t = torch.where(m, torch.full_like(t, ignore), t)
    return t


def native_nll(x, t, w, red, ii):
    # aten.nll_loss_nd handles (C), (N, C), (N, C, d...).
    return F.nll_loss(x, t, weight=w, reduction=["none", "mean", "sum"][red], ignore_index=ii)


def native_ce(x, t, w, red, ii):
    return F.cross_entropy(x, t, weight=w, reduction=["none", "mean", "sum"][red], ignore_index=ii)


def ref_total_weight(t, w, ii, C):
    keep = t != ii
    tw = torch.ones(t.shape, dtype=torch.float64, device=DEV) if w is None else \
        w.double()[torch.where(keep, t, torch.zeros_like(t)).clamp(0, max(C - 1, 0))]
    return (tw * keep).sum()


def check_losses():
    for kind in ("nll", "ce"):
        fwd = OPS.nll_loss_forward if kind == "nll" else OPS.cross_entropy_forward
        for dtype in DTYPES:
            for xs, ts in loss_cases():
                C = xs[1] if len(xs) > 1 else xs[0]
                for red in (0, 1, 2):
                    for use_w, ii in ((False, -100), (True, -100), (True, 3), (False, 1)):
                        if red != 1 and (use_w, ii) == (False, 1) and xs != (64, 10):
                            continue
                        x = rand(xs, dtype, 2.0)
                        if kind == "nll":
                            x = torch.log_softmax(x.float(), 1 if len(xs) > 1 else 0).to(dtype)
                        w = (torch.rand(C, device=DEV, dtype=torch.float64) + 0.5).to(dtype) \
                            if use_w else None
                        t = make_targets(ts, C, ii)
                        name = f"{kind}_forward {short(dtype)} {xs} red={red} w={use_w} ii={ii}"
                        out = call_twice(lambda: fwd(x, t, w, red, ii), name)
                        loss, tw = out[0], out[-1]
                        ref_fn = native_nll if kind == "nll" else native_ce
                        # Reference on the CPU: native CUDA returns 0 instead of NaN for a mean over an
                        # all-ignored (C)-shaped input, native CPU (and fastnn on both) NaN.
                        ref = ref_fn(x.double().cpu(), t.cpu(), None if w is None else w.double().cpu(),
                                     red, ii).to(DEV)
                        close(name + " loss", loss, ref, dtype, native=ref_fn(x, t, w, red, ii),
                              shape=ts if red == 0 else (), out_dtype=dtype)
                        # total_weight and lse in the accumulation dtype (float32 for halves)
                        adt = torch.float64 if dtype == torch.float64 else torch.float32
                        close(name + " total_weight", tw, ref_total_weight(t, w, ii, C), adt,
                              shape=(), out_dtype=adt)
                        if kind == "ce":
                            lse = out[1]  # (max, log-sum) pairs
                            lref = torch.logsumexp(x.double(), 1 if len(xs) > 1 else 0)
                            if tuple(lse.shape) != (*ts, 2):
                                fail(f"{name} lse: shape {tuple(lse.shape)} != {(*ts, 2)}")
                            else:
                                close(name + " lse", lse.sum(-1), lref, adt, shape=ts, out_dtype=adt)
                        check_cpu(name, "nll_loss_forward" if kind == "nll" else
                                  "cross_entropy_forward", (x, t, w, red, ii), out, dtype)
                        # backward
                        g = rand(ts, dtype, 1.0) if red == 0 else rand((), dtype, 1.0)
                        xr = x.detach().double().clone().requires_grad_(True)  # a leaf of its own, also for float64
                        ref_fn(xr, t, None if w is None else w.double(), red, ii).backward(
                            g.double())
                        xn = x.clone().requires_grad_(True)
                        ref_fn(xn, t, w, red, ii).backward(g)
                        bname = name.replace("_forward", "_backward")
                        if kind == "nll":
                            args = (g, x, t, w, red, ii, tw)
                            gx = call_twice(lambda: OPS.nll_loss_backward(*args), bname)
                            check_cpu(bname, "nll_loss_backward", args, gx, dtype)
                        else:
                            args = (g, x, t, w, red, ii, out[1], tw)
                            gx = call_twice(lambda: OPS.cross_entropy_backward(*args), bname)
                            check_cpu(bname, "cross_entropy_backward", args, gx, dtype)
                        close(bname, gx, xr.grad, dtype, native=xn.grad, shape=xs, out_dtype=dtype)
            # all-ignored batch: mean is NaN, total_weight 0
            x = rand((8, 5), dtype)
            t = torch.full((8,), -100, device=DEV)
            loss, tw = (lambda o: (o[0], o[-1]))(fwd(x, t, None, 1, -100))
            if not torch.isnan(loss).item() or tw.item() != 0:
                fail(f"{kind}_forward {short(dtype)} all-ignored: loss {loss.item()}, tw {tw.item()}")
            # non-contiguous input
            x = rand((10, 64), dtype).t()
            t = make_targets((64,), 10, -100)
            ref_fn = native_nll if kind == "nll" else native_ce
            close(f"{kind}_forward {short(dtype)} transposed input", fwd(x, t, None, 1, -100)[0],
                  ref_fn(x.double(), t, None, 1, -100), dtype)
        # half logits of 1e4 must stay finite
        if kind == "ce":
            for dtype in (torch.float16, torch.bfloat16):
                for C in (10, 3000):
                    x = rand((16, C), dtype, 1e4)
                    t = make_targets((16,), C, None)
                    loss, lse, tw = OPS.cross_entropy_forward(x, t, None, 1, -100)
                    close(f"ce_forward {short(dtype)} logits 1e4 C={C}", loss,
                          native_ce(x.double(), t, None, 1, -100), dtype,
                          native=native_ce(x, t, None, 1, -100))
                    gx = OPS.cross_entropy_backward(torch.ones((), dtype=dtype, device=DEV), x, t,
                                                    None, 1, -100, lse, tw)
                    xr = x.detach().double().clone().requires_grad_(True)  # a leaf of its own, also for float64
                    native_ce(xr, t, None, 1, -100).backward()
                    close(f"ce_backward {short(dtype)} logits 1e4 C={C}", gx, xr.grad, dtype)


def check_graphs():
    """Every op captured in one CUDA graph, replayed, compared with eager."""
    x = rand((64, 10), torch.float32)
    t = make_targets((64,), 10, -100)
    g1 = torch.ones((), device=DEV)

    def step():
        y = OPS.relu_forward(x)
        OPS.relu_forward_(y)
        dr = OPS.relu_backward(x, y)
        ls = OPS.log_softmax_forward(y, 1)
        dl = OPS.log_softmax_backward(dr, ls, 1)
        nl, ntw = OPS.nll_loss_forward(ls, t, None, 1, -100)
        dn = OPS.nll_loss_backward(g1, ls, t, None, 1, -100, ntw)
        cl, lse, ctw = OPS.cross_entropy_forward(x, t, None, 1, -100)
        dc = OPS.cross_entropy_backward(g1, x, t, None, 1, -100, lse, ctw)
        return [y, dr, ls, dl, nl, ntw, dn, cl, lse, ctw, dc]

    eager = step()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step()  # warm-up on a side stream, as torch.cuda.graphs recommends
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            captured = step()
        graph.replay()
        torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001
        return fail(f"CUDA graph capture failed: {e!r}")
    for i, (a, b) in enumerate(zip(eager, captured)):
        if not same_bits(a, b):
            fail(f"CUDA graph replay: output {i} differs from eager")
    NCHECK[0] += 1


def check_errors():
    x = rand((4, 3), torch.float32)
    t = torch.tensor([0, 1, 2, 1], device=DEV)
    bad = [
        ("int input", lambda: OPS.relu_forward(torch.ones(3, dtype=torch.int32, device=DEV))),
        ("dim out of range", lambda: OPS.log_softmax_forward(x, 2)),
        ("shape mismatch", lambda: OPS.relu_backward(x, x[:2])),
        ("dtype mismatch", lambda: OPS.log_softmax_backward(x, x.double(), 1)),
        ("int32 target", lambda: OPS.nll_loss_forward(x, t.int(), None, 1, -100)),
        ("target shape", lambda: OPS.cross_entropy_forward(x, t[:3], None, 1, -100)),
        ("weight shape", lambda: OPS.nll_loss_forward(x, t, torch.ones(4, device=DEV), 1, -100)),
        ("reduction", lambda: OPS.cross_entropy_forward(x, t, None, 3, -100)),
    ]
    for what, fn in bad:
        NCHECK[0] += 1
        try:
            fn()
        except (RuntimeError, IndexError, ValueError, TypeError) as e:
            if "fastnn" not in str(e):
                fail(f"error check '{what}': message does not name fastnn: {e}")
            continue
        fail(f"error check '{what}': no error raised")
    torch.cuda.synchronize()


ASSERT_SNIPPET = r"""
import os, torch
if os.environ.get("FASTNN_LIB"):
    torch.ops.load_library(os.environ["FASTNN_LIB"])
else:
    import fastnn
x = torch.randn(4, 3, device="cuda")
t = torch.tensor([0, 1, 7, 1], device="cuda")
out = getattr(torch.ops.fastnn, "{op}")(x, t, None, 1, -100)
torch.cuda.synchronize()
print("NO ASSERT")
"""


def check_device_assert():
    for op in ("nll_loss_forward", "cross_entropy_forward"):
        NCHECK[0] += 1
        try:
            r = subprocess.run([sys.executable, "-c", ASSERT_SNIPPET.replace("{op}", op)],
                               capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            fail(f"{op}: out-of-range target subprocess timed out")
            continue
        txt = r.stdout + r.stderr
        if r.returncode == 0 or "NO ASSERT" in txt or "assert" not in txt.lower():
            fail(f"{op}: out-of-range target did not trigger a device-side assert "
                 f"(rc={r.returncode}): {txt[-300:]}")


# ---------------------------------------------------------------------------
def bench(fn, iters=100, warmup=10):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for i in range(iters):
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    ts = sorted(s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends))
    return ts[len(ts) // 2]  # median, microseconds


def run_bench():
    print("\n%-22s %-14s %10s %10s %9s %9s %6s" % ("op", "shape/dtype", "fastnn us", "native us",
                                                    "fn GB/s", "nat GB/s", "ratio"))
    for dtype in (torch.float32, torch.bfloat16):
        for N, C in ((64, 10), (8192, 4096)):
            es = torch.tensor([], dtype=dtype).element_size()
            n = N * C
            x = torch.randn(N, C, device=DEV).to(dtype)
            dy = torch.randn(N, C, device=DEV).to(dtype)
            t = torch.randint(0, C, (N,), device=DEV)
            g1 = torch.ones((), device=DEV, dtype=dtype)
            y = torch.relu(x)
            ls = torch.log_softmax(x, 1)
            # each side's own total weight: fastnn keeps it in float32 for float16/bfloat16
            ntw = torch.ops.aten.nll_loss_forward(ls, t, None, 1, -100)[1]
            ftw = OPS.nll_loss_forward(ls, t, None, 1, -100)[1]
            cl, lse, ctw = OPS.cross_entropy_forward(x, t, None, 1, -100)
            out = torch.empty_like(x)
            rows = [
                ("copy (reference)", lambda: out.copy_(x), lambda: out.copy_(x), 2 * n * es),
                ("relu_forward", lambda: OPS.relu_forward(x), lambda: torch.relu(x), 2 * n * es),
                ("relu_backward", lambda: OPS.relu_backward(dy, y),
                 lambda: torch.ops.aten.threshold_backward(dy, y, 0), 3 * n * es),
                ("log_softmax_forward", lambda: OPS.log_softmax_forward(x, 1),
                 lambda: torch.log_softmax(x, 1), 2 * n * es),
                ("log_softmax_backward", lambda: OPS.log_softmax_backward(dy, ls, 1),
                 lambda: torch._log_softmax_backward_data(dy, ls, 1, dtype), 3 * n * es),
                ("nll_forward(mean)", lambda: OPS.nll_loss_forward(ls, t, None, 1, -100),
                 lambda: torch.ops.aten.nll_loss_forward(ls, t, None, 1, -100), N * (8 + es)),
                ("nll_backward(mean)", lambda: OPS.nll_loss_backward(g1, ls, t, None, 1, -100, ftw),
                 lambda: torch.ops.aten.nll_loss_backward(g1, ls, t, None, 1, -100, ntw),
                 n * es),
                ("ce_forward(mean)", lambda: OPS.cross_entropy_forward(x, t, None, 1, -100),
                 lambda: F.cross_entropy(x, t), n * es),
                ("ce_backward(mean)",
                 lambda: OPS.cross_entropy_backward(g1, x, t, None, 1, -100, lse, ctw),
                 lambda: torch._log_softmax_backward_data(
                     torch.ops.aten.nll_loss_backward(g1, ls, t, None, 1, -100, ntw), ls, 1, dtype),
                 2 * n * es),
            ]
            for name, ffn, nfn, nbytes in rows:
                tf, tn = bench(ffn), bench(nfn)
                print("%-22s %-14s %10.2f %10.2f %9.0f %9.0f %6.2f" % (
                    name, f"{N}x{C} {short(dtype)[:4]}", tf, tn, nbytes / tf / 1e3,
                    nbytes / tn / 1e3, tn / tf))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-bench", action="store_true")
    ap.add_argument("--no-assert", action="store_true", help="skip the device-assert subprocess")
    args = ap.parse_args()
    assert torch.cuda.is_available(), "needs a GPU"
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}", flush=True)
    t0 = time.time()
    for part in (check_relu, check_log_softmax, check_losses, check_graphs, check_errors):
        t = time.time()
        try:
            part()
        except Exception as e:  # noqa: BLE001
            import traceback
            traceback.print_exc()
            fail(f"{part.__name__} raised {e!r}")
        print(f"{part.__name__}: done in {time.time() - t:.1f}s ({len(FAILS)} failures so far)",
              flush=True)
    if not args.no_assert:
        check_device_assert()
    print(f"correctness: {NCHECK[0]} checks, {len(FAILS)} failures, {time.time() - t0:.1f}s",
          flush=True)
    if not args.no_bench:
        run_bench()
    if FAILS:
        print(f"\n{len(FAILS)} FAILURES")
        for f in FAILS[:50]:
            print("  ", f)
        sys.exit(1)
    print("\nALL OK")


if __name__ == "__main__":
    main()
