"""Render a benchmark JSON (from benchmarks/run.py) as Markdown tables and PNG bar charts.

    python -m benchmarks.render benchmarks/results/cpu.json [more.json ...]

Writes next to the JSON: <device>.md, <device>_step.png and <device>_ops_<dtype>.png
(speed-up = native time / fastnn time: above 1 means fastnn is faster). The charts are
skipped, with a note, when matplotlib is missing.
"""
import json
import os
import sys
from collections import OrderedDict
from typing import Dict, List

from .common import where


def _us(s) -> str:
    if s is None:
        return "-"
    return f"{s * 1e6:,.1f}" if s < 1e-2 else f"{s * 1e3:,.2f} ms"


def _rate(kind: str, v) -> str:
    if v is None:
        return "-"
    return f"{v / 1e12:.3f} TFLOP/s" if kind == "flop" else f"{v / 1e9:.1f} GB/s"


def _cell(r: Dict) -> str:
    if r is None:
        return "-"
    if "error" in r:
        return "error"
    return _us(r["median_s"])


def markdown(result: Dict) -> str:
    info = result["machine"]
    lines = [f"# fastnn benchmarks: {info['device']}", "",
             f"Measured on {where(info)}" + (" -- QUICK mode (smoke test, not for numbers)"
                                             if info.get("quick") else "") + ".", "",
             "Times are medians over interleaved timed blocks (p20-p80 in the JSON/CSV), "
             "per call, after warm-up; CPU with time.perf_counter, CUDA with CUDA events. "
             "speed-up = native time / fastnn time (> 1: fastnn faster).", ""]
    machine = ", ".join(f"{k}={v}" for k, v in info.items() if k not in ("timestamp",))
    lines += [f"<details><summary>machine</summary>\n\n{machine}\n\n</details>", ""]

    step = result.get("step", {}).get("rows", [])
    if step:
        lines += ["## Training step (forward, loss, backward, Adam)", "",
                  "| batch | variant | time/step (us) | p20-p80 (us) | samples/s | vs native eager |",
                  "| ---: | --- | ---: | ---: | ---: | ---: |"]
        for r in step:
            if "error" in r:
                lines.append(f"| {r['batch']} | {r['variant']} | error: {r['error']} | | | |")
                continue
            ratio = r.get("ratio_to_native_eager")
            lines.append(f"| {r['batch']} | {r['variant']} | {_us(r['median_s'])} | "
                         f"{_us(r['p20_s'])}-{_us(r['p80_s'])} | {r['samples_per_s']:,.0f} | "
                         + (f"{ratio:.2f}x time ({1 / ratio:.2f}x speed)" if ratio else "-") + " |")
        lines.append("")

    ops = result.get("ops")
    if ops:
        c = ops["ceilings"]
        gemm = ", ".join(f"{k[len('gemm_TFLOPs_'):]} {v:.3f} TFLOP/s" for k, v in c.items()
                         if k.startswith("gemm_TFLOPs_"))
        lines += ["## Ops", "",
                  f"Ceilings measured in the same run: copy bandwidth {c['copy_GBps']:.1f} GB/s "
                  f"(read+write, {c['copy_bytes'] >> 20} MiB copy_); torch.mm at "
                  f"{c['gemm_n']}^3: {gemm}. Linear rates are FLOP/s against the GEMM ceiling, "
                  f"the other ops minimum bytes moved against the copy bandwidth.", ""]
        by_op: Dict[str, List[Dict]] = OrderedDict()
        for case in ops["cases"]:
            by_op.setdefault(case["op"], []).append(case)
        for op, rows in by_op.items():
            others = [n for n in rows[0]["impls"] if n != "fastnn"]
            head = ["shape", "dtype", "mode", "fastnn (us)"] + [f"{n} (us)" for n in others] \
                + [f"speed-up vs {n}" for n in others] + ["fastnn rate", "% of ceiling", "native rate"]
            lines += [f"### {op}", "", "| " + " | ".join(head) + " |",
                      "| " + " | ".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + " |"]
            for case in rows:
                f, nat = case["impls"].get("fastnn"), case["impls"].get("native")
                cells = [case["shape"], case["dtype"], case["mode"], _cell(f)]
                cells += [_cell(case["impls"].get(n)) for n in others]
                cells += [f"{1 / case['ratios'][f'fastnn/{n}']:.2f}x"
                          if f"fastnn/{n}" in case["ratios"] else "-" for n in others]
                ok_f = f is not None and "error" not in f
                ok_n = nat is not None and "error" not in nat
                cells += [_rate(case["work_kind"], f["rate"]) if ok_f else "-",
                          f"{f['pct_of_ceiling']:.1f}%" if ok_f else "-",
                          _rate(case["work_kind"], nat["rate"]) if ok_n else "-"]
                lines.append("| " + " | ".join(cells) + " |")
            errors = {f"{n}: {r['error']}" for case in rows for n, r in case["impls"].items()
                      if "error" in r}
            if errors:
                lines += ["", "Errors: " + "; ".join(sorted(errors))]
            lines.append("")
        lines += kernel_table(ops["cases"])
    return "\n".join(lines)


def kernel_table(cases: List[Dict]) -> List[str]:
    """The device time of the kernels per call (CUDA), when it was measured."""
    rows = [c for c in cases if any("kernel_s" in r for r in c["impls"].values())]
    if not rows:
        return []
    names = list(OrderedDict.fromkeys(n for c in rows for n, r in c["impls"].items()
                                      if "kernel_s" in r))
    head = ["op", "shape", "dtype", "mode"] + [f"{n}: kernel us (kernels)" for n in names]
    lines = ["## Device time per call (kernels only)", "",
             "GPU time of the kernels one call launches (torch.profiler/CUPTI: sum of kernel, "
             "memset and copy durations, averaged over 60 calls), without launch or Python "
             "overhead.", "",
             "| " + " | ".join(head) + " |", "| " + " | ".join(["---"] * 4 + ["---:"] * len(names)) + " |"]
    for c in rows:
        cells = [c["op"], c["shape"], c["dtype"], c["mode"]]
        for n in names:
            r = c["impls"].get(n, {})
            cells.append(f"{r['kernel_s'] * 1e6:.2f} ({r['kernels_per_call']:g})"
                         if "kernel_s" in r else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def charts(result: Dict, base: str) -> List[str]:
    """Bar charts of speed-ups; returns the PNG paths written."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no charts", file=sys.stderr)
        return []
    written = []
    where_line = where(result["machine"])

    step = [r for r in result.get("step", {}).get("rows", []) if r.get("ratio_to_native_eager")]
    if step:
        batches = sorted({r["batch"] for r in step})
        variants = list(OrderedDict.fromkeys(r["variant"] for r in step))
        fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(batches) + 2), 4))
        width = 0.8 / len(variants)
        for i, v in enumerate(variants):
            xs, ys = [], []
            for j, b in enumerate(batches):
                r = next((r for r in step if r["batch"] == b and r["variant"] == v), None)
                if r:
                    xs.append(j + i * width)
                    ys.append(1 / r["ratio_to_native_eager"])
            bars = ax.bar(xs, ys, width, label=v)
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(batches))],
                      [f"batch {b}" for b in batches])
        ax.set_ylabel("speed-up vs native eager")
        ax.set_title(f"training step, {where_line}", fontsize=8)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = f"{base}_step.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    cases = [c for c in result.get("ops", {}).get("cases", []) if "fastnn/native" in c["ratios"]]
    for dtype in OrderedDict.fromkeys(c["dtype"] for c in cases):
        sub = [c for c in cases if c["dtype"] == dtype]
        groups = list(OrderedDict.fromkeys((c["op"], c["shape"]) for c in sub))
        modes = list(OrderedDict.fromkeys(c["mode"] for c in sub))
        fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(groups) * len(modes) / 2 + 2), 4.5))
        width = 0.8 / len(modes)
        for i, m in enumerate(modes):
            xs, ys = [], []
            for j, gkey in enumerate(groups):
                c = next((c for c in sub if (c["op"], c["shape"]) == gkey and c["mode"] == m), None)
                if c:
                    xs.append(j + i * width)
                    ys.append(1 / c["ratios"]["fastnn/native"])
            ax.bar(xs, ys, width, label=m)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))],
                      [f"{op}\n{shape}" for op, shape in groups], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("speed-up vs native (log)")
        ax.set_title(f"ops, {dtype}, {where_line}", fontsize=8)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = f"{base}_ops_{dtype}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def render(json_path: str) -> List[str]:
    """Write <base>.md and the charts next to ``json_path``; returns the paths written."""
    with open(json_path) as f:
        result = json.load(f)
    base = os.path.splitext(json_path)[0]
    with open(base + ".md", "w") as f:
        f.write(markdown(result))
    return [base + ".md"] + charts(result, base)


def main(argv=None):
    paths = (argv if argv is not None else sys.argv[1:])
    if not paths:
        sys.exit("usage: python -m benchmarks.render RESULT.json [...]")
    for p in paths:
        print("wrote " + ", ".join(render(p)))


if __name__ == "__main__":
    main()
