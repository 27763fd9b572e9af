#!/usr/bin/env python
"""Correctness + speed check of fastnn's CUDA Linear (csrc/cuda/linear.cu) on a GPU.

    python scripts/gemm_check.py              # after building/installing fastnn
    python scripts/gemm_check.py --lib X.so   # or load a dev build of the ops directly
    python scripts/gemm_check.py --no-bench   # correctness only

Checks torch.ops.fastnn.linear_forward / linear_backward for every dtype
(float32, float32 with TF32 allowed, float64, float16, bfloat16), all three GEMM
layouts (forward x.W^T, backward dy.W and dy^T.x) plus grad_bias, on awkward
shapes, against a float64 reference computed from the same (rounded) inputs:
    err = max |out - ref| / (|A|.|B| + tiny)     (elementwise, so cancellation is fine)
Outputs are allocated in memory poisoned with NaN first (to catch unwritten
elements); results must be bitwise identical run to run, and a CUDA-graph
replay must match eager. Then times fastnn against native (F.linear / torch.mm):
the MNIST layers by their kernels' device time (torch.profiler), also under each
split-K cap (FASTNN_GEMM_MAX_SPLITS = 1, 2, 4 and unset, for tuning the split
policy), the rest with CUDA events (warm-up, median of >= 20 samples). Exits 1 on
any correctness failure.
"""
import argparse
import os
import statistics
import sys

import torch
import torch.nn.functional as F

TOL = {"float32": 1e-5, "tf32": 5e-3, "float64": 1e-12, "float16": 1e-2, "bfloat16": 1e-2}
DTYPE = {"float32": torch.float32, "tf32": torch.float32, "float64": torch.float64,
         "float16": torch.float16, "bfloat16": torch.bfloat16}
FAILURES = []


def fail(msg):
    FAILURES.append(msg)
    print("FAIL:", msg, flush=True)


def set_tf32(on):
    # the setting fastnn reads through at::globalContext().allowTF32CuBLAS()
    torch.backends.cuda.matmul.allow_tf32 = on


def poison(*shapes_dtypes):
    """Leave NaN-filled (all bits 1) blocks in the caching allocator for outputs
    of these shapes, so unwritten output elements show up as NaN."""
    ts = [torch.empty(s, dtype=d, device="cuda").view(torch.uint8).fill_(0xFF)
          for s, d in shapes_dtypes if 0 not in s]
    del ts


def rel_err(out, ref, scale):
    if out.numel() == 0:
        return 0.0
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out.double() - ref).abs() / (scale + 1e-30)).max().item()


def fwd(x, w, b):
    return torch.ops.fastnn.linear_forward(x, w, b)


def bwd(dy, x, w, mask=(True, True, True)):
    return torch.ops.fastnn.linear_backward(dy, x, w, list(mask))


def bits(t):
    if t is None:
        return None
    return t.contiguous().view(torch.uint8).clone()


def check_case(mode, M, K, N, lead=None, noncontig=False, offset=False, bias=True, seed=0):
    """One Linear problem: x (lead..., K) with prod(lead) = M, W (N, K), b (N)."""
    dt = DTYPE[mode]
    set_tf32(mode == "tf32")
    g = torch.Generator(device="cuda").manual_seed(seed)
    lead = (M,) if lead is None else lead
    name = f"{mode} x{tuple(lead) + (K,)} W({N},{K}){' nc' if noncontig else ''}{' off' if offset else ''}{'' if bias else ' nobias'}"

    def rnd(*s):
        return torch.randn(*s, device="cuda", generator=g, dtype=torch.float32).to(dt)

    if noncontig:
        x = rnd(*lead[:-1], K, lead[-1]).transpose(-1, -2) if len(lead) else rnd(K)
        w = rnd(K, N).t()
    else:
        x = rnd(*lead, K)
        w = rnd(N, K)
    if offset:  # misaligned base pointers (storage offset 1)
        x = rnd(x.numel() + 1)[1:].view(x.shape)
        w = rnd(w.numel() + 1)[1:].view(w.shape)
    b = rnd(N) if bias else None
    dy = rnd(*lead, N)

    out_shape = tuple(lead) + (N,)
    poison((out_shape, dt))
    y = fwd(x, w, b)
    Mr = 1
    for d in lead:
        Mr *= d
    xd, wd, dyd = x.double().reshape(Mr, K), w.double(), dy.double().reshape(Mr, N)
    ref = xd @ wd.t() + (b.double() if bias else 0)
    scale = xd.abs() @ wd.abs().t() + (b.double().abs() if bias else 0)
    if tuple(y.shape) != out_shape or y.dtype != dt or not y.is_contiguous():
        fail(f"{name}: forward shape/dtype {tuple(y.shape)} {y.dtype}")
        return
    e_y = rel_err(y.reshape(Mr, N), ref, scale)

    poison((tuple(lead) + (K,), dt), ((N, K), dt), ((N,), dt))
    dx, dw, db = bwd(dy, x, w, (True, True, bias))
    e_dx = rel_err(dx.reshape(Mr, K), dyd @ wd, dyd.abs() @ wd.abs())
    e_dw = rel_err(dw, dyd.t() @ xd, dyd.abs().t() @ xd.abs())
    e_db = rel_err(db, dyd.sum(0), dyd.abs().sum(0)) if bias else 0.0
    if bias == (db is None):
        fail(f"{name}: grad_bias presence wrong")
    if tuple(dx.shape) != tuple(x.shape) or tuple(dw.shape) != (N, K):
        fail(f"{name}: backward shapes {tuple(dx.shape)} {tuple(dw.shape)}")
    tol = TOL[mode]
    worst = max(e_y, e_dx, e_dw, e_db)
    status = "ok" if worst <= tol else "FAIL"
    print(f"  {status:4s} {name:42s} y {e_y:.1e}  dx {e_dx:.1e}  dW {e_dw:.1e}  db {e_db:.1e}", flush=True)
    if worst > tol:
        fail(f"{name}: rel err {worst:.2e} > {tol:.0e} (y {e_y:.1e} dx {e_dx:.1e} dW {e_dw:.1e} db {e_db:.1e})")

    # Bitwise determinism (includes the split-K shapes).
    for _ in range(2):
        y2 = fwd(x, w, b)
        dx2, dw2, db2 = bwd(dy, x, w, (True, True, bias))
        same = all(
            (a is None and c is None) or torch.equal(bits(a), bits(c))
            for a, c in ((y, y2), (dx, dx2), (dw, dw2), (db, db2)))
        if not same:
            fail(f"{name}: results differ run to run")
            break
    # Masked outputs are None.
    r = bwd(dy, x, w, (False, True, False))
    if r[0] is not None or r[2] is not None or not torch.equal(bits(r[1]), bits(dw)):
        fail(f"{name}: output_mask (False, True, False) not honoured")


def check_errors():
    x = torch.randn(4, 8, device="cuda")
    w = torch.randn(3, 8, device="cuda")
    bad = [
        ("dtype mismatch", lambda: fwd(x, w.double(), None)),
        ("int input", lambda: fwd(x.long(), w.long(), None)),
        ("K mismatch", lambda: fwd(x, torch.randn(3, 7, device="cuda"), None)),
        ("bias size", lambda: fwd(x, w, torch.randn(4, device="cuda"))),
        ("0-d input", lambda: fwd(torch.randn((), device="cuda"), w, None)),
        ("grad_output shape", lambda: bwd(torch.randn(4, 4, device="cuda"), x, w)),
        ("device mismatch", lambda: fwd(x, w.cpu(), None)),
    ]
    for what, f in bad:
        try:
            f()
            fail(f"bad input ({what}) did not raise")
        except (RuntimeError, IndexError, ValueError, TypeError):
            pass
    print("  ok   bad inputs raise", flush=True)


def check_graph():
    set_tf32(False)
    for dt, (M, K, N) in ((torch.float32, (64, 784, 256)), (torch.float16, (64, 784, 256)),
                          (torch.float32, (512, 1024, 512)), (torch.float16, (512, 1024, 512))):
        x = torch.randn(M, K, device="cuda", dtype=dt)
        w = torch.randn(N, K, device="cuda", dtype=dt)
        b = torch.randn(N, device="cuda", dtype=dt)
        dy = torch.randn(M, N, device="cuda", dtype=dt)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                fwd(x, w, b), bwd(dy, x, w)
        torch.cuda.current_stream().wait_stream(s)
        gr = torch.cuda.CUDAGraph()
        with torch.cuda.graph(gr):
            yg = fwd(x, w, b)
            dxg, dwg, dbg = bwd(dy, x, w)
        gr.replay()
        torch.cuda.synchronize()
        ye = fwd(x, w, b)
        dxe, dwe, dbe = bwd(dy, x, w)
        if not all(torch.equal(bits(a), bits(c)) for a, c in ((yg, ye), (dxg, dxe), (dwg, dwe), (dbg, dbe))):
            fail(f"CUDA graph replay differs from eager ({dt}, {M}x{K}x{N})")
    print("  ok   CUDA graph capture/replay == eager", flush=True)


def time_ms(fn, samples=21, min_ms=1.0):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record(); fn(); e.record(); torch.cuda.synchronize()
    inner = max(1, min(50, int(min_ms / max(s.elapsed_time(e), 1e-3))))
    ts = []
    for _ in range(samples):
        s.record()
        for _ in range(inner):
            fn()
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e) / inner)
    return statistics.median(ts)


def bench():
    print("\nTiming (median ms per call, CUDA events); TFLOP/s = 2MNK/t; ratio = native time / fastnn time")
    print(f"  {'mode':8s} {'op':9s} {'M x K x N (GEMM)':22s} {'fastnn ms':>10s} {'TF/s':>7s} {'native ms':>10s} {'TF/s':>7s} {'ratio':>6s}")
    cases = [("float32", 4096, 4096, 4096), ("tf32", 4096, 4096, 4096), ("float16", 4096, 4096, 4096),
             ("bfloat16", 4096, 4096, 4096)]
    for mode in ("float32", "tf32", "float16", "bfloat16"):
        for M, K, N in ((64, 784, 256), (64, 256, 256), (64, 256, 10)):
            cases.append((mode, M, K, N))
    for mode, M, K, N in cases:
        dt = DTYPE[mode]
        set_tf32(mode == "tf32")
        x = torch.randn(M, K, device="cuda", dtype=dt)
        w = torch.randn(N, K, device="cuda", dtype=dt)
        b = torch.randn(N, device="cuda", dtype=dt)
        dy = torch.randn(M, N, device="cuda", dtype=dt)
        rows = [
            ("fwd x.Wt", (M, K, N), lambda: fwd(x, w, b), lambda: F.linear(x, w, b)),
            ("dx dy.W", (M, N, K), lambda: bwd(dy, x, w, (True, False, False)), lambda: torch.mm(dy, w)),
            ("dW dyt.x", (N, M, K), lambda: bwd(dy, x, w, (False, True, False)), lambda: torch.mm(dy.t(), x)),
        ]
        for op, (gm, gk, gn), ours, native in rows:
            flop = 2.0 * gm * gk * gn
            t1, t2 = time_ms(ours), time_ms(native)
            print(f"  {mode:8s} {op:9s} {f'{gm}x{gk}x{gn}':22s} {t1:10.4f} {flop / t1 / 1e9:7.1f} "
                  f"{t2:10.4f} {flop / t2 / 1e9:7.1f} {t2 / t1:6.2f}", flush=True)
    set_tf32(False)


def device_us(fn):
    """(us of kernels, kernels) per call of fn: benchmarks.common.kernel_time (torch.profiler)."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks.common import kernel_time
    t = kernel_time([fn], "cuda")
    return t["kernel_s"] * 1e6, t["kernels_per_call"]


MNIST_LAYERS = ((64, 784, 256), (64, 256, 128), (64, 128, 64), (64, 64, 10))  # (M, K, N)


def small_rows(mode, M, K, N):
    """(op, fastnn call, native call) for one MNIST layer: forward, dx and dW."""
    dt = DTYPE[mode]
    x = torch.randn(M, K, device="cuda", dtype=dt)
    w = torch.randn(N, K, device="cuda", dtype=dt)
    b = torch.randn(N, device="cuda", dtype=dt)
    dy = torch.randn(M, N, device="cuda", dtype=dt)
    return [
        ("fwd", lambda: fwd(x, w, b), lambda: F.linear(x, w, b)),
        ("dx", lambda: bwd(dy, x, w, (True, False, False)), lambda: torch.mm(dy, w)),
        ("dW", lambda: bwd(dy, x, w, (False, True, False)), lambda: torch.mm(dy.t(), x)),
    ]


SMALL_MODES = ("float32", "tf32", "float16", "bfloat16")


def bench_small():
    """The MNIST layers at batch 64 are latency-bound: what counts is the kernels' own
    device time, not the per-call time (launch overhead), so it is measured here."""
    print("\nMNIST layers, batch 64: device time per call (torch.profiler, kernels only), us (kernels)")
    print(f"  {'mode':8s} {'M x K x N':14s} {'op':4s} {'fastnn':>14s} {'native':>14s} {'ratio':>6s}")
    for mode in SMALL_MODES:
        set_tf32(mode == "tf32")
        for M, K, N in MNIST_LAYERS:
            for op, ours, native in small_rows(mode, M, K, N):
                (t1, k1), (t2, k2) = (device_us(fn) for fn in (ours, native))
                print(f"  {mode:8s} {f'{M}x{K}x{N}':14s} {op:4s} {f'{t1:.2f} ({k1:.0f})':>14s} "
                      f"{f'{t2:.2f} ({k2:.0f})':>14s} {t2 / t1:6.2f}", flush=True)
    set_tf32(False)


SPLIT_CAPS = ("1", "2", "4", "")  # FASTNN_GEMM_MAX_SPLITS; "": unset (the policy's own choice)


def small_times_json():
    """fastnn's device time per MNIST-layer product, as one JSON line (for split_sweep, which runs this in a child)."""
    import json
    out = []
    for mode in SMALL_MODES:
        set_tf32(mode == "tf32")
        for M, K, N in MNIST_LAYERS:
            for op, ours, _ in small_rows(mode, M, K, N):
                out.append([mode, f"{M}x{K}x{N}", op, *device_us(ours)])
    set_tf32(False)
    print(json.dumps(out))


def split_sweep(lib=None):
    """The MNIST layers' device time under each split-K cap (FASTNN_GEMM_MAX_SPLITS is read
    once per process, so each cap runs in a child): the data for tuning the split policy."""
    import json
    import subprocess
    runs = []
    for cap in SPLIT_CAPS:
        env = dict(os.environ, FASTNN_GEMM_MAX_SPLITS=cap)
        cmd = [sys.executable, os.path.abspath(__file__), "--small-json"] + (["--lib", lib] if lib else [])
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"split sweep child (FASTNN_GEMM_MAX_SPLITS={cap!r}) failed: {r.stderr[-2000:]}")
            return
        runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    print("\nMNIST layers, fastnn device time per call (us (kernels)) by split-K cap "
          "(FASTNN_GEMM_MAX_SPLITS)")
    print(f"  {'mode':8s} {'M x K x N':14s} {'op':4s}"
          + "".join(f"{(c or 'policy'):>14s}" for c in SPLIT_CAPS))
    for rows in zip(*runs):
        mode, shape, op = rows[0][:3]
        print(f"  {mode:8s} {shape:14s} {op:4s}"
              + "".join(f"{f'{t:.2f} ({k:.0f})':>14s}" for *_, t, k in rows), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", help="load this shared library instead of `import fastnn`")
    ap.add_argument("--no-bench", action="store_true")
    ap.add_argument("--no-big", action="store_true", help="skip the 4096^3 correctness cases")
    ap.add_argument("--small-json", action="store_true", help=argparse.SUPPRESS)  # split_sweep's child
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gemm_check.py needs a CUDA GPU")
    if args.lib:
        torch.ops.load_library(args.lib)
    else:
        import fastnn  # noqa: F401  (registers torch.ops.fastnn.*)
    if args.small_json:
        return small_times_json()
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, "
          f"FASTNN_WGMMA={os.environ.get('FASTNN_WGMMA') or 'unset (wgmma for large products)'}",
          flush=True)

    shapes = [  # (M, K, N): x (M, K), W (N, K)
        (1, 1, 1), (64, 784, 256), (64, 256, 10), (64, 64, 10), (63, 65, 67), (1000, 1, 513),
        (0, 32, 16), (7, 0, 5), (5, 9, 0), (1, 4096, 3), (3, 17, 4099), (129, 127, 131),
        (2048, 33, 1), (257, 1000, 130), (512, 1024, 512), (1000, 520, 1032), (1000, 1000, 1000),
        # K % 8 == 0 with tails everywhere: the wgmma kernel's edges under FASTNN_WGMMA=all
        (1, 8, 3), (300, 264, 301), (130, 4104, 257),
        # N and K whole chunks, M not (and M > 256: the K ring wraps): the TMA kernel's
        # in-place dW under FASTNN_WGMMA=tma-all, with a zero-filled reduction tail
        (130, 264, 200), (1037, 328, 136),
    ]
    print("Correctness (err = max |out-ref| / (|A||B|), tol: "
          + ", ".join(f"{k} {v:.0e}" for k, v in TOL.items()) + ")", flush=True)
    for mode in ("float32", "tf32", "float64", "float16", "bfloat16"):
        for i, (M, K, N) in enumerate(shapes):
            check_case(mode, M, K, N, seed=i)
        check_case(mode, 6, 12, 20, lead=(2, 3), noncontig=True)
        check_case(mode, 6, 12, 20, lead=(2, 3), offset=True, bias=False)
        check_case(mode, 1, 37, 19, lead=())  # 1-D input
        check_case(mode, 64, 784, 256, offset=True)
        if not args.no_big:
            check_case(mode, 4096, 4096, 4096)
    set_tf32(False)
    check_errors()
    check_graph()
    torch.cuda.synchronize()
    if not args.no_bench:
        bench_small()
        split_sweep(args.lib)
        bench()
    if FAILURES:
        print(f"\n{len(FAILURES)} FAILURE(S)")
        for f in FAILURES:
            print("  ", f)
        sys.exit(1)
    print("\nall correctness checks passed")


if __name__ == "__main__":
    main()
