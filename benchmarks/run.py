"""Run the op and training-step benchmarks; write JSON, CSV, Markdown and PNG charts.

    python -m benchmarks.run                      # full run on every available device
    python -m benchmarks.run --quick --device cpu --out /tmp/bench

Writes, per device (cpu / cuda), into --out (default benchmarks/results/):
    <device>.json   machine info, ceilings, every measurement
    <device>.csv    one row per measurement (op or step) and implementation
    <device>.md     Markdown tables (benchmarks/render.py)
    <device>_*.png  bar charts (when matplotlib is installed)
"""
import argparse
import csv
import json
import os
import sys
import time

import torch

from . import ops, render, step
from .common import FULL, QUICK, REPO, machine_info, where


def _csv_rows(result):
    for case in result.get("ops", {}).get("cases", []):
        for impl, r in case["impls"].items():
            yield {"section": "ops", "name": case["op"], "shape": case["shape"],
                   "dtype": case["dtype"], "mode": case["mode"], "impl": impl,
                   "median_us": _us(r.get("median_s")), "p20_us": _us(r.get("p20_s")),
                   "p80_us": _us(r.get("p80_s")), "n": r.get("n"),
                   "rate": _rate(case["work_kind"], r.get("rate")),
                   "pct_of_ceiling": _round(r.get("pct_of_ceiling")),
                   "ratio_fastnn_to_this": _round(case["ratios"].get(f"fastnn/{impl}")),
                   "error": r.get("error", "")}
    for r in result.get("step", {}).get("rows", []):
        yield {"section": "step", "name": "train_step", "shape": f"batch {r['batch']}",
               "dtype": "float32", "mode": "fwd+bwd+adam", "impl": r["variant"],
               "median_us": _us(r.get("median_s")), "p20_us": _us(r.get("p20_s")),
               "p80_us": _us(r.get("p80_s")), "n": r.get("n"),
               "rate": f"{r['samples_per_s']:.0f} samples/s" if "samples_per_s" in r else "",
               "pct_of_ceiling": "", "ratio_fastnn_to_this": "",
               "error": r.get("error", "")}


def _us(s):
    return "" if s is None else f"{s * 1e6:.2f}"


def _round(v):
    return "" if v is None else f"{v:.3f}"


def _rate(kind, v):
    if v is None:
        return ""
    return f"{v / 1e12:.4f} TFLOP/s" if kind == "flop" else f"{v / 1e9:.2f} GB/s"


def write_csv(path: str, result) -> None:
    rows = list(_csv_rows(result))
    fields = ["section", "name", "shape", "dtype", "mode", "impl", "median_us", "p20_us",
              "p80_us", "n", "rate", "pct_of_ceiling", "ratio_fastnn_to_this", "error"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def run_device(device: str, args) -> dict:
    budget = QUICK if args.quick else FULL
    info = machine_info(device)
    info["quick"] = args.quick
    print(f"== benchmarks on {where(info)}{' (quick)' if args.quick else ''}", flush=True)
    result = {"machine": info}
    t0 = time.perf_counter()
    if args.only in (None, "ops"):
        result["ops"] = ops.run(device, args.quick, budget)
    if args.only in (None, "step"):
        result["step"] = step.run(device, args.quick, budget, compile_cpu=args.compile_cpu)
    info["duration_s"] = round(time.perf_counter() - t0, 1)
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, device)
    with open(base + ".json", "w") as f:
        json.dump(result, f, indent=1)
    write_csv(base + ".csv", result)
    written = render.render(base + ".json")
    print(f"wrote {base}.json, {base}.csv, " + ", ".join(written), flush=True)
    return result


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="a tiny subset with few repetitions (smoke test, not for numbers)")
    p.add_argument("--device", choices=("cpu", "cuda", "all"), default="all",
                   help="all: cpu, plus cuda when available")
    p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"))
    p.add_argument("--only", choices=("ops", "step"), default=None)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--compile-cpu", action="store_true",
                   help="also time torch.compile on CPU in the step benchmark (slow to compile)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available")
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        print("no CUDA device: benchmarking the CPU only")
        devices.remove("cuda")
    return {d: run_device(d, args) for d in devices}


if __name__ == "__main__":
    main()
