"""Shared benchmark machinery: interleaved timing, statistics, ceilings, machine info.

Timing model. Each candidate ("fastnn", "native", ...) is a list of zero-argument
callables, one per input set; calls rotate through the list so that small working sets
do not stay hot in cache. After warm-up, a calibration pass picks ``inner`` (calls per
timed block, so one block lasts >= ``block_s``) and the number of blocks; the blocks of
all candidates are then timed INTERLEAVED (the order rotates every round), so drifts in
clock speed or machine load hit every candidate alike. One sample = block time / inner.
We report the median and the 20th/80th percentiles of the samples.

* CPU: time.perf_counter around the block (the ops are synchronous).
* CUDA: CUDA events recorded on the current stream around the block, read after a
  synchronize; never host clocks around asynchronous launches.
"""
import datetime
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from fastnn.train import cpu_name

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

Call = Callable[[], object]


@dataclass
class Budget:
    """How long to measure each candidate.

    warmup: un-timed calls per input set; block_s: minimum duration of a timed block;
    target_s: total timed duration per candidate; min_reps / max_reps: bounds on the
    number of blocks (samples).
    """
    warmup: int = 3
    block_s: float = 2e-3
    target_s: float = 0.3
    min_reps: int = 10
    max_reps: int = 200


FULL = Budget()
QUICK = Budget(warmup=1, block_s=5e-4, target_s=0.01, min_reps=3, max_reps=10)


@dataclass
class Stats:
    """Per-call seconds: median, 20th and 80th percentile over ``n`` samples of ``inner`` calls."""
    median_s: float
    p20_s: float
    p80_s: float
    n: int
    inner: int

    def as_dict(self) -> Dict[str, float]:
        return dict(median_s=self.median_s, p20_s=self.p20_s, p80_s=self.p80_s, n=self.n,
                    inner=self.inner)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class _Rotor:
    """Cycles through the callables of one candidate (one per input set)."""

    def __init__(self, calls: Sequence[Call]):
        self.calls, self.i = list(calls), 0

    def __call__(self):
        call = self.calls[self.i]
        self.i = (self.i + 1) % len(self.calls)
        return call()


def _block_cpu(rotor: _Rotor, inner: int) -> float:
    t0 = time.perf_counter()
    for _ in range(inner):
        rotor()
    return time.perf_counter() - t0


def _block_cuda_events(rotor: _Rotor, inner: int):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(inner):
        rotor()
    end.record()
    return start, end


def measure(candidates: Dict[str, Sequence[Call]], device, budget: Budget = FULL) -> Dict[str, Stats]:
    """Time every candidate interleaved; see the module docstring. Returns per-call Stats."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    rotors = {name: _Rotor(calls) for name, calls in candidates.items()}
    # Warm-up, then calibrate: one timed pass over every input set, doubled until it is long
    # enough to trust, gives the per-call time.
    per_call: Dict[str, float] = {}
    for name, rotor in rotors.items():
        for _ in range(budget.warmup * len(rotor.calls)):
            rotor()
        sync(device)
        inner = len(rotor.calls)
        while True:
            if cuda:
                s, e = _block_cuda_events(rotor, inner)
                e.synchronize()
                elapsed = s.elapsed_time(e) / 1e3
            else:
                elapsed = _block_cpu(rotor, inner)
            if elapsed >= budget.block_s / 4 or inner >= 1 << 16:
                break
            inner *= 2
        per_call[name] = max(elapsed / inner, 1e-9)
    inners = {n: max(1, int(np.ceil(budget.block_s / t))) for n, t in per_call.items()}
    reps = max(int(np.clip(np.ceil(budget.target_s / max(inners[n] * per_call[n], 1e-9)),
                           budget.min_reps, budget.max_reps)) for n in rotors)
    samples: Dict[str, List[float]] = {n: [] for n in rotors}
    names = list(rotors)
    for rep in range(reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        if cuda:
            events = {n: _block_cuda_events(rotors[n], inners[n]) for n in order}
            torch.cuda.synchronize(device)
            for n, (s, e) in events.items():
                samples[n].append(s.elapsed_time(e) / 1e3 / inners[n])
        else:
            for n in order:
                samples[n].append(_block_cpu(rotors[n], inners[n]) / inners[n])
    out = {}
    for n, xs in samples.items():
        p20, p50, p80 = np.percentile(xs, [20, 50, 80])
        out[n] = Stats(float(p50), float(p20), float(p80), len(xs), inners[n])
    return out


def kernel_time(calls: Sequence[Call], device, iters: int = 60) -> Optional[Dict[str, float]]:
    """GPU time of the kernels one call launches, from torch.profiler (CUPTI): the sum of
    the durations of every device activity (kernels, memsets, copies) over ``iters``
    calls, divided by ``iters``. Unlike the per-call times of ``measure`` this excludes
    launch and Python overhead: it is what the GPU spends per call. Returns
    {"kernel_s", "kernels_per_call"}, or None on the CPU or when the profiler records
    no device activity."""
    if torch.device(device).type != "cuda":
        return None
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    rotor = _Rotor(calls)
    for _ in range(5):
        rotor()
    sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            rotor()
        sync(device)
    device_events = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    if not device_events:
        return None
    total_us = sum(e.time_range.elapsed_us() for e in device_events)
    return {"kernel_s": total_us * 1e-6 / iters, "kernels_per_call": len(device_events) / iters}


def input_sets(working_set_bytes: int, quick: bool, cache_bytes: int = 64 << 20) -> int:
    """How many input sets to rotate through: enough that they together exceed the
    last-level cache (approximated by ``cache_bytes``), at most 8 (2 in quick mode)."""
    k = int(np.ceil(cache_bytes / max(working_set_bytes, 1)))
    return int(np.clip(k, 1, 2 if quick else 8))


def random_generator(device, seed: int = 0) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


# ----------------------------------------------------------------------------- ceilings

def gemm_rate(device, dtype: torch.dtype, n: int, budget: Budget) -> float:
    """Measured torch.mm FLOP/s at n x n x n (MKL/oneDNN on CPU, cuBLAS on CUDA)."""
    g = random_generator(device)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    stats = measure({"mm": [lambda: torch.mm(a, b)]}, device, budget)["mm"]
    return 2.0 * n ** 3 / stats.median_s


def copy_bandwidth(device, nbytes: int, budget: Budget) -> float:
    """Measured bytes/s of dst.copy_(src) on ``device`` (read + write counted)."""
    src = torch.empty(nbytes // 4, device=device, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    stats = measure({"copy": [lambda: dst.copy_(src)]}, device, budget)["copy"]
    return 2.0 * src.numel() * 4 / stats.median_s


# ----------------------------------------------------------------------------- machine info

def git_revision() -> Optional[str]:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (rev + ("+dirty" if dirty else "")) if rev else None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(device) -> Dict[str, object]:
    """Where the numbers were measured: hardware, software, threads, time."""
    device = torch.device(device)
    info = {
        "device": device.type,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_revision": git_revision(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    try:
        import fastnn
        info["fastnn"] = fastnn.__version__
        info["fastnn_with_cuda"] = fastnn.WITH_CUDA
    except ImportError as e:
        info["fastnn"] = f"unavailable: {e}"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                    gpu_sm_count=props.multi_processor_count,
                    gpu_capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


def where(info: Dict[str, object]) -> str:
    """One line naming the machine the numbers come from."""
    hw = info.get("gpu") if info["device"] == "cuda" else info["cpu"]
    rev = str(info.get("git_revision"))
    rev = rev[:12] + ("+dirty" if rev.endswith("+dirty") else "")
    return (f"{info['device']}: {hw}, {info['threads']} CPU threads, torch {info['torch']}, "
            f"git {rev}, {info['timestamp']}")
