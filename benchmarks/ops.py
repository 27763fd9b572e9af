"""Per-op benchmarks: fastnn vs native PyTorch, forward / backward / forward+backward.

Ops and shapes (``shape`` is (M, K, N) for linear -- x (M, K), W (N, K) -- else (N, C)):

    linear         MNIST layers at batch 64: 64x784x256, 64x256x128, 64x128x64, 64x64x10;
                   large: CPU 1024^3; CUDA 4096^3 and 8192x4096x4096
    relu, log_softmax, nll_loss, cross_entropy
                   (64, 256), (64, 10); large: CPU (1024, 1024); CUDA (8192, 4096)

    cross_entropy_ls   cross_entropy with label_smoothing=0.1: (64, 10) and the large shape

cross_entropy is compared with both native log_softmax + nll_loss and F.cross_entropy.
dtypes: float32, float64 and bfloat16 (CPU autocast's dtype) on CPU; float32, bfloat16, float16 on CUDA.

Modes: ``fwd`` is the forward call with autograd recording (inputs require grad, as in
training); ``bwd`` is torch.autograd.grad on a retained graph (the backward kernels
only); ``fwd+bwd`` both. On CUDA every case also records the device time of the
kernels per call (torch.profiler, see common.kernel_time): where a call's kernels are
shorter than its launch and Python overhead (the MNIST sizes, the losses' forward) the
per-call time shows the overhead, the device time the kernels' own cost. Achieved rates
use algorithmic minimum traffic / FLOPs:
linear 2MNK FLOPs forward and 4MNK backward (vs the measured torch.mm rate), the others
bytes read + written once (vs the measured copy bandwidth).
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as TF

from .common import (Budget, copy_bandwidth, gemm_rate, input_sets, kernel_time, measure,
                     random_generator)

MODES = ("fwd", "bwd", "fwd+bwd")


@dataclass
class Case:
    op: str
    shape: Tuple[int, ...]
    dtype: torch.dtype

    @property
    def label(self) -> str:
        return "x".join(map(str, self.shape))


def _fastnn_functional():
    import fastnn.functional as FF
    return FF


# ----------------------------------------------------------------------------- op table
# Each op: make(shape, dtype, device, gen) -> (tensors, leaves) where ``leaves`` are the
# tensors that receive gradients; impls: name -> fn(tensors) -> output.

def _make_linear(shape, dtype, device, g):
    m, k, n = shape
    x = torch.randn(m, k, device=device, dtype=dtype, generator=g)
    w = torch.randn(n, k, device=device, dtype=dtype, generator=g) / k ** 0.5
    b = torch.randn(n, device=device, dtype=dtype, generator=g)
    leaves = [t.requires_grad_() for t in (x, w, b)]
    return (x, w, b), leaves


def _make_act(shape, dtype, device, g):
    x = torch.randn(*shape, device=device, dtype=dtype, generator=g).requires_grad_()
    return (x,), [x]


def _make_nll(shape, dtype, device, g):
    n, c = shape
    logp = torch.log_softmax(torch.randn(n, c, device=device, dtype=torch.float32, generator=g), 1)
    logp = logp.to(dtype).requires_grad_()
    target = torch.randint(0, c, (n,), device=device, generator=g)
    return (logp, target), [logp]


def _make_ce(shape, dtype, device, g):
    n, c = shape
    x = torch.randn(n, c, device=device, dtype=dtype, generator=g).requires_grad_()
    target = torch.randint(0, c, (n,), device=device, generator=g)
    return (x, target), [x]


def _impls(op: str) -> Dict[str, Callable]:
    FF = _fastnn_functional()
    return {
        "linear": {"fastnn": lambda t: FF.linear(*t), "native": lambda t: TF.linear(*t)},
        "relu": {"fastnn": lambda t: FF.relu(t[0]), "native": lambda t: TF.relu(t[0])},
        "log_softmax": {"fastnn": lambda t: FF.log_softmax(t[0], 1),
                        "native": lambda t: TF.log_softmax(t[0], 1)},
        "nll_loss": {"fastnn": lambda t: FF.nll_loss(*t), "native": lambda t: TF.nll_loss(*t)},
        "cross_entropy": {
            "fastnn": lambda t: FF.cross_entropy(*t),
            "native": lambda t: TF.nll_loss(TF.log_softmax(t[0], 1), t[1]),
            "native F.cross_entropy": lambda t: TF.cross_entropy(*t)},
        "cross_entropy_ls": {  # label smoothing 0.1: native has no fused form of it
            "fastnn": lambda t: FF.cross_entropy(*t, label_smoothing=0.1),
            "native": lambda t: TF.cross_entropy(*t, label_smoothing=0.1)},
    }[op]


_MAKE = {"linear": _make_linear, "relu": _make_act, "log_softmax": _make_act,
         "nll_loss": _make_nll, "cross_entropy": _make_ce, "cross_entropy_ls": _make_ce}


def work(case: Case, mode: str) -> Tuple[str, float]:
    """("flop", FLOPs) for linear, else ("byte", minimum bytes moved), for one call."""
    es = torch.empty((), dtype=case.dtype).element_size()
    if case.op == "linear":
        m, k, n = case.shape
        return "flop", {"fwd": 2, "bwd": 4, "fwd+bwd": 6}[mode] * m * n * k
    n, c = case.shape
    per_mode = {
        # relu / log_softmax: fwd reads x, writes y; bwd reads dy and y, writes dx.
        "relu": (2 * n * c * es, 3 * n * c * es),
        "log_softmax": (2 * n * c * es, 3 * n * c * es),
        # nll: fwd gathers one value per row + target; bwd writes the dense dx.
        "nll_loss": (n * (es + 8), n * c * es + n * 8),
        # ce: fwd reads the logits + target; bwd reads the logits again, writes dx.
        "cross_entropy": (n * c * es + n * 8, 2 * n * c * es + n * 8),
        "cross_entropy_ls": (n * c * es + n * 8, 2 * n * c * es + n * 8),
    }[case.op]
    fwd, bwd = per_mode
    return "byte", {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]


def _working_set(tensors) -> int:
    return 3 * sum(t.numel() * t.element_size() for t in tensors)  # inputs + outputs + grads


def _calls(fn, sets, mode: str) -> List[Callable]:
    """One zero-argument call per input set for ``mode``."""
    calls = []
    for tensors, leaves in sets:
        if mode == "fwd":
            calls.append(lambda t=tensors: fn(t))
            continue
        out = fn(tensors)
        grad = torch.randn_like(out) if out.dim() else torch.ones_like(out)
        if mode == "bwd":
            calls.append(lambda o=out, lv=leaves, gr=grad: torch.autograd.grad(o, lv, gr,
                                                                               retain_graph=True))
        else:
            calls.append(lambda t=tensors, lv=leaves, gr=grad: torch.autograd.grad(fn(t), lv, gr))
    return calls


def cases(device: str, quick: bool) -> List[Case]:
    if quick:
        return [Case("linear", (64, 784, 256), torch.float32),
                Case("linear", (64, 64, 10), torch.float32),
                Case("relu", (64, 256), torch.float32),
                Case("log_softmax", (64, 10), torch.float32),
                Case("nll_loss", (64, 10), torch.float32),
                Case("cross_entropy", (64, 10), torch.float32)]
    mnist_linear = [(64, 784, 256), (64, 256, 128), (64, 128, 64), (64, 64, 10)]
    if device == "cuda":
        dtypes = (torch.float32, torch.bfloat16, torch.float16)
        big_linear, big_2d = [(4096, 4096, 4096), (8192, 4096, 4096)], [(8192, 4096)]
    else:
        dtypes = (torch.float32, torch.float64, torch.bfloat16)
        big_linear, big_2d = [(1024, 1024, 1024)], [(1024, 1024)]
    out = []
    for dtype in dtypes:
        out += [Case("linear", s, dtype) for s in mnist_linear + big_linear]
        for op in ("relu", "log_softmax", "nll_loss", "cross_entropy"):
            out += [Case(op, s, dtype) for s in [(64, 256), (64, 10)] + big_2d]
        out += [Case("cross_entropy_ls", s, dtype) for s in [(64, 10)] + big_2d]
    return out


def ceilings(device: str, dtypes, quick: bool, budget: Budget) -> Dict[str, float]:
    """Measured roofs: "copy_GBps" and "gemm_TFLOPs_<dtype>" for each dtype."""
    n = (512 if quick else 1024) if device == "cpu" else (2048 if quick else 8192)
    nbytes = (16 << 20 if quick else 256 << 20) if device == "cpu" else (64 << 20 if quick else 1 << 30)
    out = {"copy_GBps": copy_bandwidth(device, nbytes, budget) / 1e9, "copy_bytes": nbytes,
           "gemm_n": n}
    for dtype in dtypes:
        out[f"gemm_TFLOPs_{str(dtype).replace('torch.', '')}"] = gemm_rate(device, dtype, n, budget) / 1e12
    return out


def run(device: str = "cpu", quick: bool = False, budget: Budget = None, log=print) -> Dict:
    """Benchmark every case on ``device``; returns {"ceilings": ..., "cases": [...]}."""
    from .common import FULL, QUICK
    budget = budget or (QUICK if quick else FULL)
    case_list = cases(device, quick)
    dtypes = sorted({c.dtype for c in case_list}, key=str)
    ceil = ceilings(device, dtypes, quick, budget)
    log(f"ceilings: copy {ceil['copy_GBps']:.1f} GB/s, "
        + ", ".join(f"{k[12:]} GEMM {v:.2f} TFLOP/s" for k, v in ceil.items() if k.startswith("gemm_TF")))
    g = random_generator(device)
    results = []
    for case in case_list:
        dt = str(case.dtype).replace("torch.", "")
        one = _MAKE[case.op](case.shape, case.dtype, device, g)
        k = input_sets(_working_set(one[0]), quick)
        sets = [one] + [_MAKE[case.op](case.shape, case.dtype, device, g) for _ in range(k - 1)]
        for mode in MODES:
            kind, amount = work(case, mode)
            ceiling = ceil[f"gemm_TFLOPs_{dt}"] * 1e12 if kind == "flop" else ceil["copy_GBps"] * 1e9
            candidates, errors = {}, {}
            for name, fn in _impls(case.op).items():
                try:
                    candidates[name] = _calls(fn, sets, mode)
                    candidates[name][0]()  # fail here, not inside the timing loop
                except Exception as e:  # an unsupported dtype, or kernels not built
                    errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                    candidates.pop(name, None)
            stats = measure(candidates, device, budget) if candidates else {}
            row = {"op": case.op, "shape": case.label, "dtype": dt, "mode": mode,
                   "input_sets": k, "work_kind": kind, "work": amount, "impls": {}, "ratios": {}}
            for name, st in stats.items():
                rate = amount / st.median_s
                row["impls"][name] = dict(st.as_dict(), rate=rate, pct_of_ceiling=100 * rate / ceiling)
                row["impls"][name].update(kernel_time(candidates[name], device) or {})
            for name, err in errors.items():
                row["impls"][name] = {"error": err}
            if "fastnn" in stats:
                for name in stats:
                    if name != "fastnn":
                        row["ratios"][f"fastnn/{name}"] = stats["fastnn"].median_s / stats[name].median_s
            results.append(row)
            log(_line(row))
        del sets, one
        if device == "cuda":
            torch.cuda.empty_cache()
    return {"ceilings": ceil, "cases": results}


def _line(row) -> str:
    parts = []
    for name, r in row["impls"].items():
        parts.append(f"{name} ERROR" if "error" in r else f"{name} {r['median_s'] * 1e6:9.1f} us")
    ratios = " ".join(f"{k}={v:.2f}" for k, v in row["ratios"].items())
    return f"{row['op']:>13} {row['shape']:>15} {row['dtype']:>8} {row['mode']:>7}: " \
           + ", ".join(parts) + (f"  [{ratios}]" if ratios else "")
