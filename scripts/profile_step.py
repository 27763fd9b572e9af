"""Where a training step's time goes: the seed MLP's step (benchmarks/step.py's eager
variants) under torch.profiler, one variant at a time, each in isolation.

    python scripts/profile_step.py [--device cuda] [--batch 64] [--steps 50]
                                   [--variant "fastnn autocast" ...] [--rows 15]

For each variant: the wall time per step (host clock around --steps steps, synchronized),
then the profiler's table of the ops and kernels with the most self CPU time (host
overhead) and, on CUDA, the most self device time. Complements benchmarks/step.py, which
times the variants interleaved but does not say why one is slow.
"""
import argparse
import os
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.step import eager_step  # noqa: E402
from fastnn.models import Classifier  # noqa: E402

VARIANTS = {
    "native eager": ("native", False), "fastnn eager": ("fastnn", False),
    "native autocast": ("native", True), "fastnn autocast": ("fastnn", True),
}


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--rows", type=int, default=15)
    ap.add_argument("--variant", action="append", choices=sorted(VARIANTS),
                    help="repeatable; default: all four")
    args = ap.parse_args()
    torch.manual_seed(0)
    init_state = Classifier(impl="native").to(args.device).state_dict()
    x = torch.randn(args.batch, 784, device=args.device)
    y = torch.randint(0, 10, (args.batch,), device=args.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    for name in args.variant or list(VARIANTS):
        impl, autocast = VARIANTS[name]
        step = eager_step(impl, args.device, init_state, x, y, autocast=autocast)
        for _ in range(10):
            step()
        sync(args.device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync(args.device)
        wall = (time.perf_counter() - t0) / args.steps
        with profile(activities=activities) as prof:
            for _ in range(args.steps):
                step()
            sync(args.device)
        print(f"== {name}, batch {args.batch}, {args.device}: {wall * 1e6:.1f} us/step (wall, "
              f"unprofiled)", flush=True)
        ka = prof.key_averages()
        print(ka.table(sort_by="self_cpu_time_total", row_limit=args.rows))
        if args.device == "cuda":
            print(ka.table(sort_by="self_device_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
