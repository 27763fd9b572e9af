"""Builds fastnn's CUDA kernels for the CPU emulator (see include/cuda_runtime.h).

``load()`` rewrites csrc/cuda/{relu,log_softmax,nll_loss,cross_entropy,linear}.cu (and the
.cuh headers beside them) into C++ the host compiler takes, compiles them with torch.utils.cpp_extension against the emulator's
headers, and returns the namespace ``torch.ops.fastnn_emu``: the same schemas as
``torch.ops.fastnn``, whose CPU kernels are the CUDA kernels run by the emulator. The
rewrite changes only what a host compiler cannot read:

* ``kernel<<<grid, block[, smem[, stream]]>>>(args)`` becomes
  ``::emu::launch(kernel, ::emu::config(grid, block, ...), args)``;
* ``extern __shared__ ... name[];`` becomes a pointer to the launch's dynamic shared memory,
  and ``__shared__ T name[...];`` a function static registered with the emulator (which
  poisons it at every block's start);
* ``CUDA_KERNEL_ASSERT`` becomes the emulator's (an exception that fails the launch);
* ``__launch_bounds__(n, ...)`` becomes a check, at the top of the kernel, that the block
  has at most n threads;
* ``.is_cuda()`` becomes ``.is_cpu()`` (the emulated device's tensors live on the CPU);
* ``TORCH_LIBRARY_IMPL(fastnn, CUDA, m)`` becomes ``TORCH_LIBRARY_IMPL(fastnn_emu, CPU, m)``.

The kernel code itself, and every host line around it, compiles as written.
"""
import importlib
import os
import re
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
KERNELS = ("relu", "log_softmax", "nll_loss", "cross_entropy", "linear")
LIBRARY = "fastnn_emu"

_IDENT = re.compile(r"[A-Za-z0-9_:]")


def _callee_start(src: str, end: int) -> int:
    """Index where the kernel expression ending just before ``end`` starts: an
    identifier (possibly qualified) with an optional template argument list."""
    i = end
    while i > 0 and src[i - 1].isspace():
        i -= 1
    if src[i - 1] == ">":  # template arguments: walk back to the matching '<'
        depth = 0
        while True:
            i -= 1
            if src[i] == ">":
                depth += 1
            elif src[i] == "<":
                depth -= 1
                if depth == 0:
                    break
        while i > 0 and src[i - 1].isspace():
            i -= 1
    while i > 0 and _IDENT.match(src[i - 1]):
        i -= 1
    return i


def _matching_paren(src: str, open_idx: int) -> int:
    depth = 0
    for i in range(open_idx, len(src)):
        if src[i] == "(":
            depth += 1
        elif src[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    raise ValueError("unbalanced parentheses in a kernel launch")


def rewrite_launches(src: str) -> str:
    out = src
    while True:
        lt = out.find("<<<")
        if lt < 0:
            return out
        gt = out.find(">>>", lt)
        start = _callee_start(out, lt)
        callee = out[start:lt].strip()
        cfg = out[lt + 3:gt]
        op = gt + 3
        while out[op].isspace():
            op += 1
        if out[op] != "(":
            raise ValueError(f"kernel launch without arguments after {callee}")
        close = _matching_paren(out, op)
        args = out[op + 1:close].strip()
        call = f"::emu::launch({callee}, ::emu::config({cfg})" + (f", {args})" if args else ")")
        out = out[:start] + call + out[close + 1:]


_STATIC_SMEM = re.compile(r"__shared__\s+([^;]*?)\s+(\w+)\s*((?:\[[^\]]+\])+)\s*;")
_DYN_SMEM = re.compile(r"extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([\w:][\w:\s]*?)\s+(\w+)\s*\[\s*\]\s*;")


def _top_level_args(text: str):
    """Split a macro argument list at its top-level commas."""
    depth, start, out = 0, 0, []
    for i, ch in enumerate(text):
        if ch in "([<":
            depth += 1
        elif ch in ")]>":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(text[start:i])
            start = i + 1
    return out + [text[start:]]


def rewrite_launch_bounds(src: str) -> str:
    """``__launch_bounds__(n, ...) kernel(...) {`` -> ``kernel(...) { EMU_CHECK_BOUNDS((n));``:
    a launch with more threads than the bound fails, as on the hardware."""
    pos = 0
    while True:
        i = src.find("__launch_bounds__(", pos)
        if i < 0:
            return src
        open_ = i + len("__launch_bounds__")
        close = _matching_paren(src, open_)
        first = _top_level_args(src[open_ + 1:close])[0].strip()
        brace = src.find("{", close)
        if brace < 0 or ";" in src[close:brace]:  # a declaration without a body
            src = src[:i] + src[close + 1:]
        else:
            src = (src[:i] + src[close + 1:brace + 1] + f" EMU_CHECK_BOUNDS(({first}));"
                   + src[brace + 1:])
        pos = i


def rewrite(src: str, library: str = LIBRARY) -> str:
    src = rewrite_launches(src)
    src = rewrite_launch_bounds(src)
    src = _DYN_SMEM.sub(r"\1* \2 = static_cast<\1*>(::emu::dynamic_smem());", src)
    src = _STATIC_SMEM.sub(r"static \1 \2\3; ::emu::shared_array(\2, sizeof(\2));", src)
    src = src.replace("CUDA_KERNEL_ASSERT(", "EMU_KERNEL_ASSERT(")
    src = src.replace(".is_cuda()", ".is_cpu()")  # the emulated device's tensors live on the CPU
    src = re.sub(r"TORCH_LIBRARY_IMPL\(\s*fastnn\s*,\s*CUDA\s*,", f"TORCH_LIBRARY_IMPL({library}, CPU,", src)
    if "<<<" in src or "TORCH_LIBRARY_IMPL(fastnn, CUDA" in src:
        raise ValueError("rewrite left CUDA-only syntax behind")
    return src


def _define_schemas():
    """fastnn_emu gets fastnn's schemas (defined once per process)."""
    if hasattr(torch.ops, LIBRARY) and hasattr(getattr(torch.ops, LIBRARY), "relu_forward"):
        return
    importlib.import_module("fastnn")  # registers torch.ops.fastnn
    lib = torch.library.Library(LIBRARY, "DEF")
    for name in dir(torch.ops.fastnn):
        packet = getattr(torch.ops.fastnn, name)
        if not hasattr(packet, "default"):
            continue
        lib.define(str(packet.default._schema).split("::", 1)[1])
    _define_schemas.lib = lib  # keep the registrations alive


def load(verbose: bool = False, replace_cpu: bool = False):
    """Build (if needed) and load the emulated kernels; returns torch.ops.fastnn_emu.

    replace_cpu=True registers them as fastnn's own CPU kernels instead (overriding the
    real ones in this process, with PyTorch's "overriding a previously registered kernel"
    warning), so that any test of fastnn on the CPU runs the CUDA kernels' code: set
    FASTNN_EMULATE_CUDA=1 for the test suite (tests/conftest.py)."""
    from torch.utils import cpp_extension

    # ninja may be installed only in this interpreter's environment
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])

    # FASTNN_EMU_ASAN=1: build with AddressSanitizer (run python with libasan preloaded,
    # see tests/cuda_emu/asan.sh): out-of-bounds global accesses of the kernels then stop
    # the test, as compute-sanitizer's memcheck does on a GPU.
    asan = os.environ.get("FASTNN_EMU_ASAN", "0") == "1"
    variant = "cuda_emu" + ("_as_cpu" if replace_cpu else "") + ("_asan" if asan else "")
    default_dir = ROOT / "build" / variant
    build_dir = Path(os.environ.get("FASTNN_EMU_BUILD", default_dir))
    src_dir = build_dir / "src"
    src_dir.mkdir(parents=True, exist_ok=True)

    def emit(src: Path, dst: Path):
        text = rewrite(src.read_text(), "fastnn" if replace_cpu else LIBRARY)
        if not dst.exists() or dst.read_text() != text:  # keep ninja's timestamps when unchanged
            dst.write_text(text)

    for header in (ROOT / "csrc" / "cuda").glob("*.cuh"):  # found first: beside the sources
        emit(header, src_dir / header.name)
    (src_dir / "include" / "fastnn").mkdir(parents=True, exist_ok=True)
    for header in (ROOT / "csrc" / "include" / "fastnn").glob("*.cuh"):  # ahead of csrc/include
        emit(header, src_dir / "include" / "fastnn" / header.name)
    sources = []
    for name in KERNELS:
        emit(ROOT / "csrc" / "cuda" / f"{name}.cu", src_dir / f"{name}.cpp")
        sources.append(str(src_dir / f"{name}.cpp"))
    sources.append(str(HERE / "emu_ops.cpp"))
    if replace_cpu:
        importlib.import_module("fastnn")  # its CPU kernels first, so the emulated ones override them
    else:
        _define_schemas()
    cpp_extension.load(
        name="fastnn_" + variant, sources=sources, build_directory=str(build_dir),
        extra_include_paths=[str(HERE / "include"), str(src_dir / "include"),
                             str(ROOT / "csrc" / "include")],
        extra_cflags=["-O2", "-std=c++20", "-Wno-unknown-pragmas", "-DFASTNN_CUDA_EMULATOR",
                      "-DFASTNN_SM90A"]
        + (["-fsanitize=address", "-fno-omit-frame-pointer"] if asan else []),
        extra_ldflags=["-fsanitize=address"] if asan else [],
        is_python_module=False, verbose=verbose)
    return torch.ops.fastnn if replace_cpu else getattr(torch.ops, LIBRARY)


if __name__ == "__main__":
    ops = load(verbose=True)
    print("built", ops)
