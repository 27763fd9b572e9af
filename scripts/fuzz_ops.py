#!/usr/bin/env python
"""Randomized differential fuzz of fastnn.functional against torch.nn.functional.

    python scripts/fuzz_ops.py                                   # CPU, 60 s of random cases
    python scripts/fuzz_ops.py --device cuda --seconds 600 --out fuzz.jsonl
    python scripts/fuzz_ops.py --replay 1234 [--device cuda]     # one case, verbosely
    python scripts/fuzz_ops.py --emulate-cuda                    # the CUDA kernels, no GPU

Each case is drawn from its own seed (seed, seed + 1, ...): an op (linear, relu,
log_softmax, nll_loss, cross_entropy, or a small MLP swapped by fastnn.convert with a loss
module), a dtype (float32, float64, float16, bfloat16), shapes (empty, odd, long class
dims), memory layouts (permuted, strided, offset, expanded), special values (NaN, +-inf,
-0, huge) and the op's options (in-place; dim and dtype=; reduction, legacy size_average/
reduce, ignore_index, class weights, uint8 targets, label smoothing, class-probability
targets; invalid arguments). fastnn and native run on the same inputs on the chosen
device, forward, backward (same upstream gradient) and, for some float64 cases, double
backward:
  - fastnn must raise where native raises (the errors may differ), and only there;
  - outputs and gradients must have native's shape and dtype (relu and log_softmax
    outputs also native's strides); relu must be bitwise native's;
  - other values are compared with a float64 reference that native computes from the same
    rounded inputs: each element within c * eps * scale + 1 ulp of it (3 ulp for half
    types on CUDA, whose tensor-core sums run in another order; scale: the size of the
    terms it sums, so cancellation is fine; eps: float32's for the half types, which
    fastnn computes in float32), or at most about as far from it as native's; NaN and
    inf only where native or the reference has them.
Known, documented differences and native's own inconsistencies are not findings: see
ALLOWED_RAISES, skipped_elements, order_dependent_overflow and float32_sum_overflow. Cases with out-of-range targets are skipped on CUDA
(a device-side assert would poison the context). Prints one JSON line per finding (seed,
op, dtype, what differed, the case's parameters, the replay command), then cases and
findings per op/dtype; exits 1 if anything was found (2 on a usage error).

--emulate-cuda runs fastnn's CUDA kernels in the CPU emulator of tests/cuda_emu (built on
first use) in place of its CPU kernels, on CPU tensors, with the CUDA rules above
(out-of-range targets skipped, 3 ulp for the half types). relu's sign of zero is not
compared there: the emulator's max is the host's, not the GPU's.
"""
import argparse
import copy
import json
import math
import random
import sys
import time
import traceback
import warnings
from pathlib import Path
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Callable, Optional

import torch
import torch.nn.functional as NF

import fastnn
import fastnn.functional as FF

F64 = torch.float64
DTYPES = {"f32": torch.float32, "f64": torch.float64, "f16": torch.float16, "bf16": torch.bfloat16}
SHORT = {dtype: name for name, dtype in DTYPES.items()}
MANTISSA = {torch.float16: 10, torch.bfloat16: 7, torch.float32: 23, torch.float64: 52}
MIN_EXP = {torch.float16: -14, torch.bfloat16: -126, torch.float32: -126, torch.float64: -1022}
SIZES = ([0, 1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 24, 31, 32, 33, 63, 65, 100, 127, 129],
         [2, 6, 5, 5, 5, 5, 4, 4, 4, 4, 4, 3, 3, 3, 3, 2, 2, 2, 2, 2])
BIG_SIZES = ([255, 300, 513, 1000, 1025], [2, 2, 1, 1, 1])
CLASSES = ([1, 2, 3, 5, 7, 8, 9, 10, 16, 17, 31, 32, 33, 100, 1000, 5000],
           [3, 3, 3, 3, 3, 3, 2, 5, 3, 3, 3, 3, 3, 3, 1, 1])
SPECIALS = [math.nan, math.inf, -math.inf, 7e4, -7e4, 1e-6, -0.0, 0.0, 3e38]
PERIODIC = -1.0  # Draw.floats' `special`: one special value at a periodic set of elements
# Sums of products of 3e38 overflow in an order-dependent way (inf - inf = NaN in one
# summation order, inf in another): native's GEMMs disagree among themselves there.
GEMM_SPECIALS = SPECIALS[:-1]
STAGES = ["forward", "backward", "double backward"]
LEGACY = {"none": (None, False), "mean": (True, True), "sum": (False, True)}  # size_average, reduce
GRADGRAD_C = 2.0 ** 20  # double backward (float64): fastnn vs native, relative to native's max


# ---------------------------------------------------------------------------------------
# What is not a finding: the documented differences (README.md, "Known limitations") and
# native's own inconsistencies. Everything the fuzz lets through is here.

# (the side that raises where the other returns, part of its message, when: case -> bool)
ALLOWED_RAISES = [
    # "Differences from native found by a differential fuzz and kept": losses need at least
    # one class; a (C) input takes a 0-d target only (native also (1,)); linear takes "any
    # bias that expands to the output's shape" (native also broadcasts the output up to a
    # bias of more dims, e.g. (1, O) with a 1-D input).
    ("fastnn", "has no classes (C = 0)", None),
    ("fastnn", "(no batch dim) `target` must be 0-d", None),
    ("fastnn", "does not broadcast to the output's shape", None),
    # "cross_entropy with class-probability targets": a negative label_smoothing raises
    # (native ignores it); fastnn refuses it with class indices too.
    ("fastnn", "`label_smoothing` must be between 0.0 and 1.0, got -", None),
    # "float16 losses with reduction 'mean' over more than 65504 counted targets": the CPU
    # backward raises (native returns a zero gradient).
    ("fastnn", "overflows float16", None),
    # Native's own inconsistencies: it takes these in some cases and refuses them in others;
    # fastnn takes (or refuses) them always. uint8 class indices: taken with (N, C) inputs,
    # not with (N, C, d1, ...) ones, nor with class weights and label smoothing (a gather).
    ("native", "expected scalar type Long but found Byte", None),
    ("native", "gather(): Expected dtype int32/int64 for index", None),
    # nll_loss's backward refuses a non-contiguous (N, C, d1, ...) input its forward took.
    ("native", "grad_input must be contiguous", None),
    # A bias of 2+ dims broadcast over the leading dims: added after the product for some
    # input layouts, folded into addmm (and refused) for others.
    ("native", "The expanded size of the tensor", lambda c: len(c.desc.get("bias") or []) >= 2),
    # A bias of another dtype: taken with some input dtypes, shapes and layouts (bfloat16
    # (N, K, ...)), refused with others (float32 (N, K)); any dtype when an operand is empty.
    ("fastnn", "`bias` has dtype", None),
    ("fastnn", "has dtype", lambda c: c.op == "linear" and 0 in c.desc["x"] + c.desc["w"]),
    # A 1-D weight with a 0-d bias: taken with 1-D and 3-D+ inputs, refused with 2-D ones.
    ("fastnn", "`weight` must be 2-D", lambda c: len(c.desc.get("w", [])) == 1),
    # A (1, C) class weight: taken with (N, C, d1, ...) inputs, refused with (N, C) ones.
    ("fastnn", "`weight` must be 1-D", lambda c: c.desc.get("bad") == "w_2d"),
    # Native CUDA skips the losses' target and weight dtype checks for an empty input
    # (pytorch/pytorch#171931); native CPU and fastnn check them always.
    ("fastnn", "must hold class indices as int64", lambda c: _empty_loss(c)),
    ("fastnn", "`weight` has dtype", lambda c: _empty_loss(c)),
]


def _empty_loss(case):
    return case.op in ("nll_loss", "cross_entropy") and 0 in case.desc["shape"]


def allowed_raise(case, side, exc):
    return any(side == s and part in str(exc) and (when is None or when(case))
               for s, part, when in ALLOWED_RAISES)


def skipped_elements(case, args, name, device):
    """Mask of the elements of `name` whose values are not compared, or None. "Differences
    from native ... kept": cross_entropy gives ignored positions a zero gradient even when
    their logits are NaN/inf (native: NaN); so does its double backward. And losses need at
    least one class: fastnn takes C = 0 only for an empty batch, where native's label-smoothed
    loss divides 0 by C = 0 (NaN) and fastnn's is 0."""
    if case.op not in ("nll_loss", "cross_entropy"):
        return None
    x, target = args[0], args[1]
    every = torch.ones((), dtype=torch.bool, device=x.device)
    if x.dim() and x.shape[1 if x.dim() > 1 else 0] == 0:
        return every
    w = args[2] if len(args) > 2 and torch.is_tensor(args[2]) else None
    if (device == "cuda" and name == "out" and x.dim() == 1
            and case.desc["reduction"] == "mean" and "probs" not in case.desc):
        # Native CUDA's own (C) input 'mean' kernel (native CPU and (N, C) inputs on CUDA
        # agree with fastnn): an ignored target gives 0, not 0/0 = NaN; and it returns
        # -x[t] without weighing, where w[t] * x[t] / w[t] overflows for w[t] > 1.
        t = int(target) if target.numel() == 1 else None
        if t is None or t == case.desc["ignore_index"]:
            return every
        acc_max = torch.finfo(x.dtype if x.dtype == F64 else torch.float32).max
        if w is not None and 0 <= t < w.numel() and float(w[t]) > 1 and \
                abs(float(x[t])) * float(w[t]) >= acc_max / 2:
            return every
    if case.op != "cross_entropy" or "probs" in case.desc or name not in ("grad0", "gradgrad0"):
        return None
    ignored = target == case.desc["ignore_index"]
    return (ignored if x.dim() == 1 else ignored.unsqueeze(1)).expand(x.shape)


def order_dependent_overflow(case, args, f, r):
    """A reduced loss whose float32 sum overflows in an order-dependent way: one term is
    +-inf (the float64 reference `r` is that inf), and the finite terms of the other sign
    add up beyond float32's range, so a summation order that reaches that partial sum first
    gives inf - inf = NaN (`f`), another the reference's inf. Native's reductions and
    fastnn's add in different orders."""
    if case.op not in ("nll_loss", "cross_entropy") or case.desc["reduction"] == "none" or \
            "probs" in case.desc or args[0].dtype == F64 or not (bool(f.isnan().all()) and bool(r.isinf().all())):
        return False
    try:
        x, target = args[0].detach().double(), args[1].long()
        w = args[2] if len(args) > 2 and torch.is_tensor(args[2]) else None
        cd = 1 if x.dim() > 1 else 0
        t = target.clamp(0, x.shape[cd] - 1)
        xt = x.gather(cd, t.unsqueeze(cd)).squeeze(cd)
        value = torch.logsumexp(x, cd) - xt if case.op == "cross_entropy" else -xt
        wt = w.detach().double()[t] if w is not None else torch.ones_like(value)
        terms = (wt * value)[(target != case.desc["ignore_index"]) & (wt != 0)]
    except (RuntimeError, IndexError):
        return False
    big = torch.finfo(torch.float32).max
    finite = terms[terms.isfinite()]
    return bool((terms == math.inf).any() and -finite[finite < 0].sum() > big) or \
        bool((terms == -math.inf).any() and finite[finite > 0].sum() > big)


def float32_sum_overflow(case, args, f, n, r, device):
    """CUDA rules only: a mean loss (class-index targets) whose sum lies beyond float32's
    range though the mean itself (the float64 reference `r`) does not: the CUDA kernels'
    float32 accumulator overflows to inf with the sum's sign (`f`), native's gives inf or
    NaN (another order). Neither can return r. (fastnn's CPU kernels sum in float64 and
    must return it; the probability-target path is native ops in native's order.)"""
    if not cuda_rules(device) or case.op not in ("nll_loss", "cross_entropy") or \
            case.desc["reduction"] != "mean" or "probs" in case.desc or args[0].dtype == F64 or \
            not (bool(f.isinf().all()) and not bool(n.isfinite().all())
                 and bool(r.isfinite().all()) and bool((f.double().sign() == r.sign()).all())):
        return False
    try:
        x, t = args[0].detach(), args[1].long()
        w = args[2] if len(args) > 2 and torch.is_tensor(args[2]) else None
        cd = 1 if x.dim() > 1 else 0
        keep = t != case.desc["ignore_index"]
        t = t.clamp(0, max(x.shape[cd] - 1, 0))
        wt = w.detach().double()[t] if w is not None else torch.ones(t.shape, dtype=F64,
                                                                       device=t.device)
        total = float(wt[keep].sum())
    except (RuntimeError, IndexError):
        return False
    return abs(float(r)) * total > torch.finfo(torch.float32).max


# ---------------------------------------------------------------------------------------
# Drawing cases

@dataclass
class Build:
    """How to build a case's inputs: fastnn's and native's (in `dtype`), or the float64
    reference's (values rounded to `round_to` first, the upstream gradient to `go_round`;
    `magnitude`: absolute values, for the sizes of the terms each output sums)."""
    dtype: torch.dtype
    device: str
    round_to: Optional[torch.dtype] = None
    go_round: Optional[torch.dtype] = None
    magnitude: bool = False


class Recipe:
    """A tensor: the values of a base tensor (float64 or integer) and a view of it with the
    wanted shape and memory layout."""

    def __init__(self, base, view, layout):
        self.base, self.view, self.layout = base, view, layout

    def make(self, b, grad=False, sign=1.0):
        v = self.base
        if v.is_floating_point():
            v = v.to(b.round_to or b.dtype).to(b.dtype)
            if b.magnitude:
                v = v.abs() * sign
        t = self.view(v.to(b.device))
        return t.detach().requires_grad_() if grad else t


@dataclass
class Case:
    seed: int
    op: str
    dtype: torch.dtype
    desc: dict                   # the case's parameters, as a finding reports them
    make: Callable               # make(Build) -> (args, the tensors to differentiate)
    call: Callable               # call(lib, args) -> output; lib: NF or FF
    scales: object = "exact"     # how values are judged: "exact" (bitwise native's); None
    #   (shapes and dtypes only: invalid arguments); "magnitude" (the sizes come from native
    #   float64 on the inputs' absolute values); or scales(reference) -> [output's, grads']
    c: object = 32.0             # tolerance: c * eps * scale + ulp, or 2 * native's error
    #                              (a c per output where a list)
    tol_dtype: Optional[torch.dtype] = None  # eps and ulp of this type if coarser than the output's
    double: bool = False         # also double backward (float64 only)
    strides: bool = False        # the output must have native's strides
    cuda_safe: bool = True       # False: an out-of-range target (a device-side assert)


class Draw:
    """All random choices of one case, from its seed."""

    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.gen = torch.Generator().manual_seed(seed)

    def pick(self, items, weights=None):
        return self.rng.choices(items, weights)[0]

    def chance(self, p):
        return self.rng.random() < p

    def size(self, big=False):
        items, weights = SIZES
        if big:
            items, weights = items + BIG_SIZES[0], weights + BIG_SIZES[1]
        return self.pick(items, weights)

    def shape(self, nd, big, limit):
        shape = [self.size(big) for _ in range(nd)]
        while math.prod(shape) > limit:
            shape = [max(1, s // 2) for s in shape]
        return shape

    def layout(self, shape, expand=True):
        """(base shape, view: base -> tensor of `shape`, description)."""
        nd = len(shape)
        kinds = ["contig", "contig", "perm", "step", "perm+step", "offset"] + ["expand"] * expand
        kind = self.pick(kinds) if nd else "contig"
        if kind == "offset":
            return [math.prod(shape) + 3], lambda b: b[3:].view(shape), "offset3"
        if kind == "expand":
            dims = [d for d in range(nd) if shape[d] > 1]
            if dims:
                dims = self.rng.sample(dims, self.rng.randint(1, len(dims)))
                return ([1 if d in dims else s for d, s in enumerate(shape)],
                        lambda b: b.expand(shape), f"expand{sorted(dims)}")
        perm = list(range(nd))
        if "perm" in kind:
            perm = [0, 2, 3, 1] if nd == 4 and self.chance(0.3) else self.rng.sample(perm, nd)
        inv = [perm.index(d) for d in range(nd)]
        base = [shape[p] for p in perm]
        desc = f"perm{inv}" if perm != sorted(perm) else "contig"
        if "step" in kind:
            d, k = self.rng.randrange(nd), self.pick([2, 3])
            off = self.rng.randrange(k)
            if base[d]:
                base[d] = (base[d] - 1) * k + 1 + off
                index = (slice(None),) * d + (slice(off, None, k),)
                return base, lambda b: b[index].permute(inv), f"{desc}+step(d{d},k{k},off{off})"
        return base, lambda b: b.permute(inv), desc

    def floats(self, shape, special=0.0, scale=None, pool=SPECIALS, expand=True):
        """Normal values times a random scale, a fraction `special` of them from `pool`.
        special=PERIODIC puts one value of `pool` at the flat indices i with
        (i // g) % p == r instead (g: 1-8, a vector's elements; p: 32-256): in the CUDA
        block-per-row kernels, where thread t takes the vectors t, t + threads, ..., some
        threads then see only that value and the others none."""
        base_shape, view, desc = self.layout(shape, expand)
        scale = scale or self.pick([1.0, 1.0, 1.0, 3.0, 10.0, 100.0, 1e-3, 1000.0])
        v = torch.randn(base_shape, generator=self.gen, dtype=F64) * scale
        if v.numel() and special == PERIODIC:
            g, p = self.pick([1, 2, 4, 8]), self.pick([32, 64, 128, 256])
            r = self.rng.randrange(p)
            v.view(-1)[(torch.arange(v.numel()) // g) % p == r] = self.pick(pool)
        elif v.numel() and special:
            k = max(1, int(v.numel() * special * self.rng.random()))
            at = torch.randint(0, v.numel(), (k,), generator=self.gen)
            v.view(-1)[at] = torch.tensor([self.pick(pool) for _ in range(k)], dtype=F64)
        return Recipe(v, view, desc)

    def place(self, values, expand=True):
        """`values` (of the wanted shape) behind a random layout; an expanded layout repeats
        their first entries along the expanded dims."""
        base_shape, view, desc = self.layout(list(values.shape), expand)
        base = torch.zeros(base_shape, dtype=values.dtype)
        if desc.startswith("expand"):
            base.copy_(values[tuple(slice(0, s) for s in base_shape)])
        else:
            view(base).copy_(values)
        return Recipe(base, view, desc)


def relu_case(d, seed, dtype):
    nd = d.pick([0, 1, 2, 3, 4, 5], [1, 4, 5, 3, 3, 1])
    shape = d.shape(nd, big=nd <= 2, limit=300_000)
    if d.chance(0.05):
        shape = d.pick([[70000], [300, 257]])  # above the kernels' parallel grain
    x = d.floats(shape, special=d.pick([0, 0, 0.05, 0.3]))
    # in-place on a leaf that requires grad, or on elements sharing memory: both must raise
    mode = d.pick(["out", "inplace", "inplace_view", "inplace_overlap", "inplace_leaf"],
                  [8, 3, 3, 1, 1])

    def make(b):
        t = x.make(b, grad=True)
        return [t], [t]

    def call(lib, args):
        if mode == "out":
            return lib.relu(args[0])
        if mode == "inplace_leaf":
            return lib.relu(args[0], inplace=True)
        base = args[0] * 2.0
        y = base
        if mode == "inplace_view" and base.dim():
            y = base.transpose(0, 1)[::2] if base.dim() >= 2 else base[1::2]
        elif mode == "inplace_overlap" and base.dim() and base.shape[0] > 1:
            y = base.sum(0, keepdim=True).expand(base.shape)
        out = lib.relu(y, inplace=True)
        assert out is y, "in-place relu did not return its input"
        return base if mode == "inplace_view" else y

    desc = dict(shape=shape, layout=x.layout, mode=mode)
    return Case(seed, "relu", dtype, desc, make, call, strides=mode == "out")


def log_softmax_case(d, seed, dtype):
    nd = d.pick([0, 1, 2, 3, 4], [1, 4, 6, 3, 2])
    shape = d.shape(nd, big=nd <= 2, limit=200_000)
    if nd and d.chance(0.08):  # a long softmax dim
        k = d.rng.randrange(nd)
        shape[k] = d.pick([1000, 5000])
        while math.prod(shape) > 400_000:
            i = max((i for i in range(nd) if i != k), key=lambda i: shape[i])
            shape[i] = max(1, shape[i] // 2)
    dim = d.rng.randrange(-max(nd, 1), max(nd, 1))
    if d.chance(0.04):
        dim = max(nd, 1) + d.rng.randrange(3)  # out of range: both raise
    implicit = d.chance(0.05)  # native's deprecated implicit dim
    dim_used = (0 if nd in (0, 1, 3) else 1) if implicit else dim
    dtype_arg = d.pick([torch.float32, F64]) if d.chance(0.1) else None
    # with dtype=, the input is cast first: the reference rounds it to the coarser type
    coarse = dtype if dtype_arg is None or MANTISSA[dtype] <= MANTISSA[dtype_arg] else dtype_arg
    x = d.floats(shape, special=d.pick([0, 0, 0, 0.02, 0.2, PERIODIC]))

    def make(b):
        t = x.make(replace(b, round_to=b.round_to and coarse), grad=True)
        return [t, None if b.round_to else dtype_arg], [t]

    def call(lib, args):
        if implicit:
            return lib.log_softmax(args[0], dtype=args[1])
        return lib.log_softmax(args[0], dim, dtype=args[1])

    def scales(ref):
        x, out, go = fin(ref.args[0]), ref.out, ref.go
        if x.dim() == 0:
            return [x.abs() + 1, go.abs()]
        k = dim_used % x.dim()
        lse = fin(torch.logsumexp(x, k, keepdim=True))
        p = out.exp().nan_to_num(0.0, 0.0, 0.0)
        # the backward takes exp of the saved output, rounded to its type: a relative error
        # of |out| times that type's eps (not c times float32's)
        rounded = 1 + fin(out).abs() * 2.0 ** (MANTISSA[compute] - MANTISSA[out_dtype]) / c
        return [x.abs() + lse.abs() + 1, go.abs() + p * go.abs().sum(k, keepdim=True) * rounded]

    n = shape[dim_used % nd] if nd and -nd <= dim_used < nd else 1
    c = 32 + 2 * math.sqrt(n)
    out_dtype = dtype_arg or dtype
    compute = F64 if out_dtype == F64 else torch.float32
    desc = dict(shape=shape, layout=x.layout, dim=None if implicit else dim,
                dtype_arg=dtype_arg and SHORT[dtype_arg])
    return Case(seed, "log_softmax", dtype, desc, make, call, scales, c=c,
                tol_dtype=dtype_arg if coarse != dtype else None,
                double=dtype == F64 and d.chance(0.15), strides=True)


def loss_case(d, seed, dtype, op):
    """nll_loss or cross_entropy: input (C), (N, C) or (N, C, d1, ...), class-index targets
    (cross_entropy: or class probabilities), options and, rarely, invalid arguments."""
    ce = op == "cross_entropy"
    C = 0 if d.chance(0.02) else d.pick(*CLASSES)
    form = d.pick(["C", "NC", "NCd"], [2, 6, 3])
    if form == "C":
        shape = [C]
    elif form == "NC":
        shape = [d.size(), C]
    else:
        extra = [d.pick([0, 1, 2, 3, 4, 5, 7, 8, 9, 16, 17], [1] + [10] * 10)
                 for _ in range(d.pick([1, 2, 3]))]
        shape = [d.pick([0, 1, 2, 3, 4]), C] + extra
    while math.prod(shape) > 300_000 and shape[0] > 1:
        shape[0] //= 2
    tshape = shape[:1] + shape[2:] if len(shape) > 1 else []
    reduction = d.pick(["none", "mean", "sum"])
    legacy = d.chance(0.05)
    ignore_index = d.pick([-100, d.rng.randrange(max(C, 1)), -1, C + 7], [4, 3, 1, 1])
    p_ignored = d.pick([0.0, 0.1, 0.5, 1.0], [4, 3, 1, 1])
    n = math.prod(tshape)
    t = torch.randint(0, max(C, 1), (n,), generator=d.gen) if C else torch.zeros(n, dtype=torch.long)
    if n and p_ignored:
        t[torch.rand(n, generator=d.gen) < p_ignored] = ignore_index
    out_of_range = n > 0 and d.chance(0.05)
    if out_of_range:
        t[d.rng.randrange(n)] = d.pick([C, C + 3, -1, -5, 10 ** 6] if ignore_index != -1 else [C, -2])
    tdtype = d.pick([torch.long, torch.uint8, torch.int32], [8, 2, 0.5])
    if tdtype == torch.uint8 and not bool(((t >= 0) & (t <= 255)).all()):
        tdtype = torch.long
    target = d.place(t.reshape(tshape).to(tdtype))
    wkind = d.pick(["none", "positive", "some zero"], [4, 3, 2])
    weight = None
    if wkind != "none":
        w = torch.rand(C, generator=d.gen, dtype=F64) * d.pick([1.0, 3.0, 0.01])
        if wkind == "some zero":
            w[torch.rand(C, generator=d.gen) < 0.4] = 0.0
        weight = d.place(w, expand=False)
    x = d.floats(shape, special=d.pick([0, 0, 0, 0.02, 0.2, PERIODIC]))
    bad = d.pick(["w_len", "w_dtype", "w_2d", "t_shape", "t_batch", "t_float", "x0d", "x1d_t1d"]) \
        if d.chance(0.06) else None
    smoothing, probs, target_grad = 0.0, None, False
    if ce:
        smoothing = d.pick([0.0, 0.0, 0.1, 0.3, 0.5, 1.0])
        if d.chance(0.03):
            smoothing = d.pick([-0.1, 1.5])
        if C and d.chance(0.2):
            probs = d.pick(["softmax", "raw", "one-hot"])
            cd = 0 if len(shape) == 1 else 1
            if probs == "softmax":
                v = torch.softmax(torch.randn(shape, generator=d.gen, dtype=F64) * 2, cd)
            elif probs == "raw":
                v = torch.randn(shape, generator=d.gen, dtype=F64)
            else:
                v = NF.one_hot(torch.randint(0, C, tshape, generator=d.gen), C).to(F64).movedim(-1, cd)
            target = d.place(v.contiguous())
            target_grad = d.chance(0.3)
            if d.chance(0.7):
                ignore_index = -100  # else >= 0 may be drawn: both raise

    def make(b):
        xt = x.make(b, grad=True, sign=1.0 if ce else -1.0)
        tt = target.make(b, grad=target_grad)
        wt = weight.make(b) if weight is not None else None
        diff = [xt, tt] if target_grad else [xt]
        if bad in ("w_len", "w_dtype", "w_2d"):
            wshape = {"w_len": [C + 1], "w_dtype": [C], "w_2d": [1, C]}[bad]
            wdtype = (torch.float32 if xt.dtype == F64 else F64) if bad == "w_dtype" else xt.dtype
            wt = torch.ones(wshape, dtype=wdtype, device=b.device)
        elif bad == "t_shape":
            tt = torch.zeros(list(tt.shape) + [2], dtype=torch.long, device=b.device)
        elif bad == "t_batch":
            tt = torch.zeros([tt.shape[0] + 1] + list(tt.shape[1:]) if tt.dim() else [2],
                             dtype=torch.long, device=b.device)
        elif bad == "t_float":
            tt = tt.float()
        elif bad in ("x0d", "x1d_t1d"):
            xt = xt.sum() if bad == "x0d" else xt.reshape(-1)
            tt = torch.zeros([] if bad == "x0d" else [1], dtype=torch.long, device=b.device)
        return [xt, tt, wt], diff

    def call(lib, args):
        fn = lib.cross_entropy if ce else lib.nll_loss
        kw = dict(label_smoothing=smoothing) if ce else {}
        if legacy:
            size_average, reduce = LEGACY[reduction]
            return fn(*args, size_average, ignore_index, reduce, **kw)
        return fn(*args, ignore_index=ignore_index, reduction=reduction, **kw)

    def ce_scales(ref):
        x, t, go = fin(ref.args[0]), ref.args[1], ref.go
        cd = 0 if x.dim() == 1 else 1
        lse = fin(torch.logsumexp(x, cd, keepdim=True))
        size = x.abs() + lse.abs() + 1  # of the terms of each log-probability
        w = ref.args[2].abs() if ref.args[2] is not None else torch.ones(C, dtype=F64, device=x.device)
        wv, wmax = w.view([C if i == cd else 1 for i in range(x.dim())]), w.max() if C else 0.0
        if probs:
            tp = fin(t).abs() * (1 - smoothing) + smoothing / max(C, 1)
            per = (size * tp * wv).sum(cd)
            npos = max(1, x.numel() // max(C, 1))
            g = go.abs() / (npos if reduction == "mean" else 1)
            g = g.unsqueeze(cd) if reduction == "none" and x.dim() > 1 else g
            return [reduce(per, reduction, npos),
                    g * wmax * (tp + tp.sum(cd, keepdim=True)) * (1 + size), g * wv * size]
        t = t.long()
        keep = t != ignore_index
        ts = t.masked_fill(~keep, 0).unsqueeze(cd)
        wt = w[ts.squeeze(cd)] * keep
        total = wt.sum().clamp_min(1e-300)
        per = wt * size.gather(cd, ts).squeeze(cd) + keep * smoothing / max(C, 1) * (size * wv).sum(cd)
        g = go.abs() / (total if reduction == "mean" else 1)
        g = g.unsqueeze(cd) if reduction == "none" and x.dim() > 1 else g
        return [reduce(per, reduction, total), g * (2 * wmax + w.sum() / max(C, 1)) * (1 + size)]

    scales = None if bad else ce_scales if ce else "magnitude"
    desc = dict(shape=shape, layout=x.layout, reduction=reduction, legacy=legacy,
                ignore_index=ignore_index, target=SHORT.get(tdtype, str(tdtype)[6:]),
                target_layout=target.layout, p_ignored=p_ignored, out_of_range=out_of_range,
                weight=wkind, weight_layout=weight and weight.layout, bad=bad)
    if ce:
        desc.update(label_smoothing=smoothing)
        if probs:
            desc.update(probs=probs, target=SHORT[dtype], target_grad=target_grad)
    # sums over C classes, and over n positions (the total weight, the reduction), where
    # identical terms (expanded inputs) can add up their rounding errors (~ n / 4 eps)
    c = 32 + 2 * math.sqrt(C) + n / 4
    if probs and dtype in (torch.float16, torch.bfloat16):
        # composed of native ops in the half type, as natively: a few of its eps, not float32's
        c = 4.0 * 2.0 ** (MANTISSA[torch.float32] - MANTISSA[dtype])
    return Case(seed, op, dtype, desc, make, call, scales, c=c,
                double=dtype == F64 and d.chance(0.15),
                cuda_safe=not out_of_range and (C > 0 or n == 0) and not (bad == "x1d_t1d" and not math.prod(shape)))


def reduce(per, reduction, total):
    if reduction == "none":
        return per
    return per.sum() / (total if reduction == "mean" else 1)


def linear_case(d, seed, dtype):
    K, O = d.size(big=True), d.size(big=True)
    lead = [d.size() for _ in range(d.pick([1, 2, 2, 2, 3, 4]) - 1)]
    while math.prod(lead) * max(K, O) > 300_000:
        lead = [max(1, s // 2) for s in lead]
    while K * O > 400_000:
        K = max(1, K // 2)
    weight_1d = d.chance(0.05)  # (in_features,): maps (*, in_features) to (*)
    bias = d.pick(["none", "vec", "bcast"], [3, 6, 1]) if not weight_1d else d.pick(["none", "vec"], [2, 1])
    bshape = [] if weight_1d else [O]
    if bias == "bcast":  # a bias that only broadcasts to the output
        bshape = d.pick([[], [1], lead[-1:] + [O], [1, O]])
    x = d.floats(lead + [K], special=d.pick([0, 0, 0, 0.01, 0.2]), pool=GEMM_SPECIALS)
    w = d.floats([K] if weight_1d else [O, K], special=d.pick([0, 0, 0, 0.01]), pool=GEMM_SPECIALS,
                 scale=d.pick([1.0, 1.0 / math.sqrt(max(K, 1)), 0.1]))
    b = d.floats(bshape, pool=GEMM_SPECIALS) if bias != "none" else None
    grads = [True, d.chance(0.85), d.chance(0.85)]
    bad = d.pick(["K", "w3d", "bias_len", "dtype", "bias_dtype", "x0d"]) if d.chance(0.05) else None

    def make(bd):
        args = [x.make(bd, grad=True), w.make(bd, grad=grads[1]),
                b.make(bd, grad=grads[2]) if b is not None else None]
        diff = [a for a, g in zip(args, grads) if a is not None and g]
        other = torch.float32 if bd.dtype == F64 else F64
        if bad == "K":
            args[1] = torch.ones(O, K + 1, dtype=bd.dtype, device=bd.device)
        elif bad == "w3d":
            args[1] = torch.ones(1, O, K, dtype=bd.dtype, device=bd.device)
        elif bad == "bias_len":
            args[2] = torch.ones(O + 2, dtype=bd.dtype, device=bd.device)
        elif bad == "dtype":
            args[1] = args[1].detach().to(other)
        elif bad == "bias_dtype":
            args[2] = torch.ones(bshape, dtype=other, device=bd.device)
        elif bad == "x0d":
            args[0] = args[0].sum()
        return args, diff

    def call(lib, args):
        return lib.linear(*args)

    M = math.prod(lead)
    # per output (out, dx, dw, db), for the length of its sums: identical terms (expanded inputs) can add up
    # their rounding errors, up to about n / 4 eps in a sequential sum of n
    c = [32 + n / 4 for n, g in zip([K, O, M, M], [True, True, grads[1], grads[2] and b is not None]) if g]
    desc = dict(x=lead + [K], x_layout=x.layout, w=[K] if weight_1d else [O, K], w_layout=w.layout,
                bias=bshape if b is not None else None, bias_layout=b and b.layout, grads=grads, bad=bad)
    return Case(seed, "linear", dtype, desc, make, call, None if bad else "magnitude", c=c,
                double=dtype == F64 and d.chance(0.15))


def mlp_case(d, seed, dtype):
    """Linear/ReLU layers and LogSoftmax, then a loss module; fastnn's side converts both."""
    sizes = [d.pick([1, 3, 8, 17, 64]) for _ in range(d.pick([2, 3, 4]))]
    layers = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [torch.nn.utils.skip_init(torch.nn.Linear, a, b, bias=d.chance(0.8), dtype=F64),
                   torch.nn.ReLU(inplace=d.chance(0.5))]
    model = torch.nn.Sequential(*layers, torch.nn.LogSoftmax(dim=1))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=d.gen, dtype=F64) / math.sqrt(p.shape[-1]))
    N = d.pick([0, 1, 5, 16])
    x = d.floats([N, sizes[0]])
    target = torch.randint(0, sizes[-1], (N,), generator=d.gen)
    loss, smoothing = d.pick(["nll", "ce", "none"]), d.pick([0.0, 0.2])

    def make(b):
        m = copy.deepcopy(model).to(b.round_to or b.dtype).to(b.dtype).to(b.device)
        lossmod = {"nll": torch.nn.NLLLoss(), "none": None,
                   "ce": torch.nn.CrossEntropyLoss(label_smoothing=smoothing)}[loss]
        xt = x.make(b, grad=True)
        return [m, lossmod, xt, target.to(b.device)], [xt] + list(m.parameters())

    def call(lib, args):
        m, lossmod, xt, t = args
        if lib is FF:
            fastnn.convert(m)
            assert isinstance(m[0], fastnn.Linear), "fastnn.convert did not swap the Linear"
            lossmod = lossmod and fastnn.convert(lossmod)
        out = m(xt)
        return lossmod(out, t) if lossmod is not None else out

    def scales(ref):  # loose: the size of each result, at least 1
        return [1 + (fin(t).abs().max() if t is not None and t.numel() else 0) for t in [ref.out] + ref.grads]

    desc = dict(sizes=sizes, N=N, x_layout=x.layout, loss=loss, label_smoothing=smoothing)
    return Case(seed, "mlp", dtype, desc, make, call, scales, c=256.0)


# op: (make a case, its dtypes, weight)
OPS = {
    "relu": (relu_case, list(DTYPES.values()), 2),
    "log_softmax": (log_softmax_case, list(DTYPES.values()), 3),
    "nll_loss": (lambda d, s, dt: loss_case(d, s, dt, "nll_loss"), list(DTYPES.values()), 3),
    "cross_entropy": (lambda d, s, dt: loss_case(d, s, dt, "cross_entropy"), list(DTYPES.values()), 4),
    "linear": (linear_case, list(DTYPES.values()), 3),
    "mlp": (mlp_case, [torch.float32, F64], 0.3),  # half types: per-layer roundings differ
}


def draw_case(seed):
    d = Draw(seed)
    op = d.pick(list(OPS), [w for _, _, w in OPS.values()])
    make_case, dtypes, _ = OPS[op]
    return make_case(d, seed, d.pick(dtypes))


# ---------------------------------------------------------------------------------------
# Running and comparing

def fin(t):
    return t.detach().double().nan_to_num(0.0, 0.0, 0.0)


def ulp(r, dtype):
    e = torch.floor(torch.log2(r.abs().clamp_min(2.0 ** MIN_EXP[dtype])))
    return torch.exp2(e - MANTISSA[dtype])


def upstream(seed, shape, dtype, b):
    """The upstream gradient drawn from `seed`, in `dtype` (or rounded to b.go_round)."""
    v = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    v = v.to(b.go_round or dtype).to(dtype).to(b.device)
    return v.abs() if b.magnitude else v


def run_side(lib, case, b):
    """Forward, backward and (case.double) double backward; records where it raised."""
    r = SimpleNamespace(exc=None, stage=None, args=None, out=None, go=None, grads=None, gg=None, vs=[])
    stage = "forward"
    try:
        r.args, diff = case.make(b)
        r.out = case.call(lib, r.args)
        sync(b.device)
        if diff and r.out.requires_grad:
            stage = "backward"
            r.go = upstream(case.seed + 1, r.out.shape, r.out.dtype, b)
            double = case.double and not b.round_to
            gs = torch.autograd.grad(r.out, diff, r.go, allow_unused=True, create_graph=double)
            r.grads = [None if g is None else g.detach() for g in gs]
            sync(b.device)
            if double:
                stage = "double backward"
                r.vs = [upstream(case.seed + 2 + k, t.shape, t.dtype, b) for k, t in enumerate(diff)]
                s = sum((g * v).sum() for g, v in zip(gs, r.vs) if g is not None and g.requires_grad)
                if torch.is_tensor(s):
                    r.gg = [None if g is None else g.detach()
                            for g in torch.autograd.grad(s, diff, allow_unused=True)]
                sync(b.device)
    except Exception as e:  # noqa: BLE001  (a raise is a result)
        r.exc, r.stage = e, stage
    return r


# --emulate-cuda: CPU tensors, CUDA kernels (tests/cuda_emu), CUDA rules.
EMULATED_CUDA = False


def cuda_rules(device):
    return device == "cuda" or EMULATED_CUDA


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def structure(name, f, n, strides=False):
    if f.shape != n.shape or f.dtype != n.dtype or f.device != n.device:
        return (f"{name}: fastnn gives {list(f.shape)} {f.dtype} on {f.device}, "
                f"native {list(n.shape)} {n.dtype} on {n.device}")
    if strides and [s for s, z in zip(f.stride(), f.shape) if z > 1] != \
            [s for s, z in zip(n.stride(), n.shape) if z > 1]:
        return f"{name}: strides {f.stride()}, native's {n.stride()} (shape {list(f.shape)})"
    return None


def check_exact(name, f, n):
    f, n = f.detach().double(), n.detach().double()
    same = ((f == n) & ((f.signbit() == n.signbit()) | EMULATED_CUDA)) | (f.isnan() & n.isnan())
    if bool(same.all()):
        return None
    i = tuple(int(k) for k in (~same).nonzero()[0])
    return (f"{name}: {int((~same).sum())}/{f.numel()} elements differ, e.g. at {list(i)}: "
            f"fastnn {f[i].item()!r}, native {n[i].item()!r}")


def check_values(name, f, n, r, scale, case, device, skip=None):
    """fastnn's f against the float64 reference r, native's n as the bar."""
    if f.numel() == 0:
        return None
    dtype = f.dtype
    if case.tol_dtype is not None and MANTISSA[case.tol_dtype] < MANTISSA[dtype]:
        dtype = case.tol_dtype
    f, n, r = f.detach().double(), n.detach().double(), r.detach().double().expand(f.shape)
    rd = r.to(dtype).double()  # the reference rounded to the output's type
    ok_f, ok_n, ok_r = f.isfinite(), n.isfinite(), r.isfinite()
    scale = fin(torch.as_tensor(scale, dtype=F64, device=f.device)).expand(f.shape)
    u = ulp(r.nan_to_num(0.0, 0.0, 0.0), dtype)
    eps = 2.0 ** -52 if dtype == F64 else 2.0 ** -23
    half_on_cuda = cuda_rules(device) and dtype in (torch.float16, torch.bfloat16)
    tol = case.c * eps * scale + (3.0 if half_on_cuda else 1.0) * u
    err = (f - r).abs()
    err_n = torch.where(ok_n, (n - r).abs(), torch.zeros_like(n))
    bad = torch.where(ok_f & ok_r, (err > tol) & (err > 2 * err_n + u),
                      torch.where(f.isnan(), ~(n.isnan() | r.isnan()),
                                  torch.where(f.isinf(), (f != n) & (f != rd), ~ok_n)))
    if skip is not None:
        bad &= ~skip.expand(bad.shape)
    if not bool(bad.any()):
        return None
    worst = torch.where(bad, (err / tol).nan_to_num(math.inf, math.inf), -1.0).argmax()
    i = tuple(int(k) for k in torch.unravel_index(worst, f.shape))
    return (f"{name}: {int(bad.sum())}/{f.numel()} elements off, e.g. at {list(i)}: fastnn "
            f"{f[i].item():.9g}, native {n[i].item():.9g}, float64 reference {r[i].item():.9g} "
            f"(tolerance {tol[i].item():.3g})")


def raise_findings(case, nat, fast):
    """Findings where one side raised and the other did not; the first stage either raised."""
    stages = [STAGES.index(s.stage) if s.exc else len(STAGES) for s in (nat, fast)]
    first = min(stages)
    found = []
    if stages[0] != stages[1]:
        side, other, r = ("native", "fastnn", nat) if stages[0] < stages[1] else ("fastnn", "native", fast)
        if not allowed_raise(case, side, r.exc):
            found.append(f"{STAGES[first]}: {side} raises {type(r.exc).__name__}: "
                         f"{str(r.exc)[:300]} -- {other} does not")
    return first, found


def compare(case, nat, fast, first, device, log):
    """Findings among the results of the stages both sides completed (before `first`)."""
    found = []
    outs = [("out", fast.out, nat.out)]
    if first >= 2 and (fast.grads is None) != (nat.grads is None):
        found.append(f"gradients: fastnn {'none' if fast.grads is None else 'some'}, native "
                     f"{'none' if nat.grads is None else 'some'}")
    elif first >= 2 and fast.grads is not None:
        outs += [(f"grad{k}", g, h) for k, (g, h) in enumerate(zip(fast.grads, nat.grads))]
    if first >= 3 and fast.gg is not None and nat.gg is not None:
        outs += [(f"gradgrad{k}", g, h) for k, (g, h) in enumerate(zip(fast.gg, nat.gg))]
    ref = scales = None
    if case.scales not in ("exact", None):
        b = Build(F64, device, round_to=case.dtype, go_round=fast.out.dtype)
        ref = run_side(NF, case, b)
        mag = run_side(NF, case, replace(b, magnitude=True)) if case.scales == "magnitude" else None
        for r in (ref, mag):  # it runs as far as both sides did
            if r is not None and r.exc is not None and STAGES.index(r.stage) < first:
                return found + [f"harness: the float64 reference raised {r.exc!r}"]
        if mag:
            scales = [mag.out.abs()] + [g if g is None else g.abs() for g in mag.grads or []]
        else:
            scales = case.scales(ref)
    for k, (name, f, n) in enumerate(outs):
        if f is None or n is None:
            if (f is None) != (n is None) and bool(((f if n is None else n) != 0).any()):
                found.append(f"{name}: fastnn gives {'None' if f is None else 'a tensor'}, native "
                             f"{'None' if n is None else 'a nonzero tensor'}")
            continue
        msg = structure(name, f, n, case.strides and name == "out")
        if msg is None and case.scales == "exact":
            msg = check_exact(name, f, n)
        elif msg is None and name.startswith("gradgrad"):
            # relative to native's largest, or to |upstream| * |v| where that is all rounding
            scale = max([fin(t).abs().max().item() for t in [n, nat.go] + nat.vs if t.numel()] or [0])
            msg = check_values(name, f, n, n, scale, replace(case, c=GRADGRAD_C), device,
                               skipped_elements(case, fast.args, name, device))
        elif msg is None and ref is not None:
            r = ref.out if k == 0 else ref.grads[k - 1] if ref.grads else None
            c = case.c[k] if isinstance(case.c, list) else case.c
            r = torch.zeros_like(n, dtype=F64) if r is None else r
            skip = skipped_elements(case, fast.args, name, device)
            if name == "out" and (order_dependent_overflow(case, fast.args, f, r)
                                  or float32_sum_overflow(case, fast.args, f, n, r, device)):
                skip = torch.ones((), dtype=torch.bool, device=f.device)
            msg = check_values(name, f, n, r, scales[k] if scales[k] is not None else 0.0,
                               replace(case, c=c), device, skip)
        log(f"  {msg or name + ': ok'}")
        if msg:
            found.append(msg)
    return found


def run_case(seed, device, log=lambda *_: None):
    """Runs the case of `seed`: (case, findings, "skipped" | "raised" (both, at once) | "ran")."""
    case = draw_case(seed)
    log(f"case {seed}: {case.op} {SHORT[case.dtype]} on {device}\n  {json.dumps(case.desc, default=str)}")
    if cuda_rules(device) and not case.cuda_safe:
        log("  skipped: an out-of-range target would trip a CUDA device-side assert")
        return case, [], "skipped"
    b = Build(case.dtype, device)
    nat, fast = run_side(NF, case, b), run_side(FF, case, b)
    for name, r in (("native", nat), ("fastnn", fast)):
        if r.out is not None:
            log(f"  {name} out: {list(r.out.shape)} {r.out.dtype} strides {r.out.stride()}")
        if r.exc is not None:
            log(f"  {name} raises in {r.stage}: {type(r.exc).__name__}: {str(r.exc)[:300]}")
    first, found = raise_findings(case, nat, fast)
    for r in (nat, fast):
        if r.exc is not None and any(k in str(r.exc) for k in ("CUDA error", "device-side assert")):
            found.append(f"CUDA error (the context is lost; the run stops): {str(r.exc)[:300]}")
    if first == 0:
        return case, found, "raised"
    try:
        found += compare(case, nat, fast, first, device, log)
    except Exception:  # noqa: BLE001  (a bug of the fuzz: report it, go on)
        found.append("harness: the comparison raised " + traceback.format_exc(limit=-3)[-600:])
    return case, found, "ran"


def finding(case, device, what):
    return json.dumps(dict(seed=case.seed, op=case.op, dtype=SHORT[case.dtype], device=device,
                           what=what, case=case.desc,
                           replay=f"python scripts/fuzz_ops.py --device {device} --replay {case.seed}"
                           + (" --emulate-cuda" if EMULATED_CUDA else "")),
                      separators=(",", ":"), default=str)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--seconds", type=float, default=60.0, help="time budget (default 60)")
    ap.add_argument("--seed", type=int, help="the first case's seed (default: random)")
    ap.add_argument("--out", metavar="FILE.jsonl", help="append the findings to this file")
    ap.add_argument("--replay", type=int, metavar="SEED", help="run the case of SEED, verbosely")
    ap.add_argument("--emulate-cuda", action="store_true",
                    help="fastnn's CUDA kernels in the CPU emulator (tests/cuda_emu) on CPU tensors")
    args = ap.parse_args()
    if args.emulate_cuda:
        if args.device != "cpu":
            ap.error("--emulate-cuda runs on CPU tensors: leave --device at cpu")
        global EMULATED_CUDA
        EMULATED_CUDA = True
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "cuda_emu"))
        import build as cuda_emu_build
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cuda_emu_build.load(replace_cpu=True)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda needs a CUDA GPU; torch.cuda.is_available() is False here")
    if args.device == "cuda" and not fastnn.WITH_CUDA:
        ap.error("--device cuda: this fastnn build has no CUDA kernels (build with FASTNN_CUDA=1)")
    warnings.filterwarnings("ignore")  # native's deprecation warnings (legacy arguments, dim)
    if args.replay is not None:
        case, found, _ = run_case(args.replay, args.device, log=print)
        for what in found:
            print(finding(case, args.device, what))
        sys.exit(1 if found else 0)

    seed = random.SystemRandom().randrange(2 ** 31) if args.seed is None else args.seed
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    if EMULATED_CUDA:
        device = "cpu, CUDA kernels emulated"
    print(f"fuzz_ops: {device}, torch {torch.__version__}, {args.seconds:g} s from seed {seed}",
          flush=True)
    out = open(args.out, "a") if args.out else None
    stats = {}  # (op, dtype) -> {"cases", "skipped", "raised", "findings", "s"}
    start = time.monotonic()
    fatal = False
    while time.monotonic() - start < args.seconds and not fatal:
        t0 = time.monotonic()
        case, found, status = run_case(seed, args.device)
        row = stats.setdefault((case.op, SHORT[case.dtype]), dict.fromkeys(
            ["cases", "skipped", "raised", "findings", "s"], 0))
        row["cases"] += 1
        row[status] = row.get(status, 0) + 1
        row["findings"] += bool(found)
        row["s"] += time.monotonic() - t0
        for what in found:
            line = finding(case, args.device, what)
            print(line, flush=True)
            if out:
                out.write(line + "\n")
                out.flush()
            fatal |= what.startswith("CUDA error")
        seed += 1
    if out:
        out.close()
    total = sum(r["cases"] for r in stats.values())
    n_found = sum(r["findings"] for r in stats.values())
    print(f"\n{'op':14s} {'dtype':5s} {'cases':>6s} {'skipped':>8s} {'raised':>7s} {'findings':>9s}"
          f" {'ms/case':>8s}   (raised: both sides at once; skipped: out-of-range targets on CUDA)")
    for (op, dt), r in sorted(stats.items()):
        print(f"{op:14s} {dt:5s} {r['cases']:6d} {r['skipped']:8d} {r['raised']:7d} "
              f"{r['findings']:9d} {1000 * r['s'] / r['cases']:8.1f}")
    print(f"{total} cases (seeds up to {seed - 1}) in {time.monotonic() - start:.0f} s: "
          f"{n_found} with findings")
    sys.exit(1 if n_found else 0)


if __name__ == "__main__":
    main()
