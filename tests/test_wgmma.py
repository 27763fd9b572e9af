"""The Hopper wgmma GEMMs (csrc/cuda/gemm_sm90.cuh): the cp.async kernel, the default for
large float16 / bfloat16 / TF32 products on compute-capability 9.0 GPUs, and the TMA
kernel (FASTNN_WGMMA: unset or 1 large products, all every product the cp.async kernel
can take, tma / tma-all the same on the TMA kernel, 0 none).

float16, bfloat16, and float32 with TF32 allowed (torch.backends.cuda.matmul.allow_tf32).

The switch is read once per process, so the products run in a child process started
with FASTNN_WGMMA=all or tma-all (every product the kernel can take, small ones
included, to reach its edge handling). Each case checks forward, dx and dW against a
float64 reference and bitwise run-to-run equality, and that the wgmma kernel really ran
for the products it can take (reduction lengths in whole 16-byte chunks: 8 half
elements, 4 floats): the forward when K is, dx (via W^T, or W in place on the TMA
kernel) when N is, dW (via dy^T and x^T) when M is, or on the TMA kernel, for the 16-bit
types, also when N and K are (dy and x read in place).
"""
import json
import os
import subprocess
import sys

import pytest
import torch

import fastnn
from support import CUDA_OK, CUDA_SKIP_REASON

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not CUDA_OK, reason=CUDA_SKIP_REASON),
    pytest.mark.skipif(not getattr(fastnn._C, "WITH_SM90A", 0),
                       reason="fastnn was built without sm_90a (TORCH_CUDA_ARCH_LIST lacks 9.0a)"),
    pytest.mark.skipif(CUDA_OK and torch.cuda.get_device_capability() != (9, 0),
                       reason="the wgmma kernel needs a compute-capability 9.0 GPU"),
]

# (M, K, N): x (M, K), W (N, K). Tails in every dimension, K not a multiple of the
# 64-element K tile, odd N (scalar stores), tiny and one-wave-sized problems.
SHAPES = [(1, 8, 3), (8, 16, 8), (64, 784, 256), (300, 264, 301), (130, 4104, 257),
          (257, 1000, 130), (1000, 1000, 1000), (2048, 512, 4096), (36, 20, 12)]
# max |out - ref| / (|A| . |B|), elementwise; float32 sums of half-type / TF32 products
TOL = {"torch.float16": 1e-2, "torch.bfloat16": 1e-2, "torch.float32": 5e-3}

CHILD = r"""
import json, sys
import torch
import fastnn  # noqa: F401
from torch.profiler import ProfilerActivity, profile

device = sys.argv[1]
shapes = json.loads(sys.argv[2])


def err(out, ref, scale):
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out.double() - ref).abs() / (scale + 1e-30)).max().item()


torch.backends.cuda.matmul.allow_tf32 = True  # float32 products may use TF32
results = []
for dt in (torch.float16, torch.bfloat16, torch.float32):
    for M, K, N in shapes:
        g = torch.Generator(device=device).manual_seed(M * 10007 + K * 101 + N)
        rnd = lambda *s: torch.randn(*s, device=device, generator=g).to(dt)
        x, w, b, dy = rnd(M, K), rnd(N, K), rnd(N), rnd(M, N)
        runs = []
        for _ in range(2):
            with profile(activities=[ProfilerActivity.CUDA] if device == "cuda" else []) as prof:
                y = torch.ops.fastnn.linear_forward(x, w, b)
                dx, dw, db = torch.ops.fastnn.linear_backward(dy, x, w, [True, True, True])
                if device == "cuda":
                    torch.cuda.synchronize()
            runs.append((y, dx, dw, db))
        names = [e.name for e in prof.events()]
        xd, wd, dyd = x.double(), w.double(), dy.double()
        y, dx, dw, db = runs[0]
        results.append(dict(
            dtype=str(dt), shape=[M, K, N],
            y=err(y, xd @ wd.t() + b.double(), xd.abs() @ wd.abs().t() + b.double().abs()),
            dx=err(dx, dyd @ wd, dyd.abs() @ wd.abs()),
            dw=err(dw, dyd.t() @ xd, dyd.abs().t() @ xd.abs()),
            same=all(torch.equal(p, q) for p, q in zip(runs[0], runs[1])),
            wgmma_launches=sum("wgmma_gemm_" in n for n in names),
            tma_launches=sum("wgmma_gemm_tma_kernel" in n for n in names),
            kernels_seen=sum("fastnn::" in n and "kernel" in n for n in names),  # 0: none profiled
        ))
print(json.dumps(results))
"""


def run_child(device: str, shapes, mode="all") -> list:
    env = dict(os.environ, FASTNN_WGMMA=mode)
    if mode is None:
        env.pop("FASTNN_WGMMA", None)
    proc = subprocess.run([sys.executable, "-c", CHILD, device, json.dumps(shapes)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def expected_launches(dtype: str, M: int, K: int, N: int, tma: bool = False) -> int:
    """wgmma launches of forward + dx + dW of x (M, K), W (N, K) with FASTNN_WGMMA=all, or
    tma-all (tma): each product whose reduction length is whole 16-byte chunks, and with
    the TMA kernel also the 16-bit dW whose N and K are (it reads dy and x in place)."""
    chunk = 4 if dtype == "torch.float32" else 8
    dw_in_place = tma and chunk == 8 and N % chunk == 0 and K % chunk == 0
    return int(K % chunk == 0) + int(N % chunk == 0) + int(M % chunk == 0 or dw_in_place)


@pytest.mark.parametrize("mode", ["all", "tma-all"])
def test_wgmma_gemm_matches_reference(mode):
    results = run_child("cuda", SHAPES, mode)
    assert len(results) == 3 * len(SHAPES)
    # Which kernels ran is read from torch.profiler (CUPTI); without it no kernel shows up.
    profiled = any(r["kernels_seen"] for r in results)
    bad = []
    for r in results:
        M, K, N = r["shape"]
        worst = max(r["y"], r["dx"], r["dw"])
        expected = expected_launches(r["dtype"], M, K, N, tma=mode == "tma-all")
        launches_ok = not profiled or (r["wgmma_launches"] == expected and
                                       r["tma_launches"] == (expected if mode == "tma-all" else 0))
        if worst > TOL[r["dtype"]] or not r["same"] or not launches_ok:
            bad.append(r)
    assert not bad, json.dumps(bad, indent=1)
    if not profiled:
        pytest.skip("values checked, but torch.profiler recorded no CUDA kernels (no CUPTI), "
                    "so the use of the wgmma kernel could not be confirmed")


@pytest.mark.parametrize("mode", [None, "1", "0", "tma"])
def test_wgmma_default_takes_large_products(mode):
    # By default (unset or 1) the wgmma kernel takes the products whose output fills a wave
    # of 128 x 256 tiles (here every product of (4096, 2048, 4096), none of (1000, 1000,
    # 1000)); FASTNN_WGMMA=0 turns it off, =tma takes the same products on the TMA kernel.
    # Values are checked as above either way.
    results = run_child("cuda", [(4096, 2048, 4096), (1000, 1000, 1000)], mode)
    if not any(r["kernels_seen"] for r in results):
        pytest.skip("torch.profiler recorded no CUDA kernels (no CUPTI)")
    for r in results:
        assert max(r["y"], r["dx"], r["dw"]) <= TOL[r["dtype"]] and r["same"], r
        large = r["shape"][0] == 4096
        assert r["wgmma_launches"] == (3 if large and mode != "0" else 0), r
        assert r["tma_launches"] == (3 if large and mode == "tma" else 0), r
