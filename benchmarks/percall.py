"""Per-call cost of the small ops (MNIST's 64 x 10 and its last Linear) on the CPU: native
vs fastnn called through the torch.ops OpOverloads (what Dynamo traces) vs fastnn through
fastnn._C's direct entry points (what eager calls use), without and with autograd recording.

    python -m benchmarks.percall [--threads 1] [--number 20000] [--repeat 7]

Prints best-of-repeat microseconds per call; all three measured in the same process.
"""
import argparse
import timeit

import torch
import torch.nn.functional as F

import fastnn.functional as FF
from fastnn import _ops


def cases():
    x = torch.randn(64, 10)
    logp = torch.randn(64, 10).log_softmax(1)
    t = torch.randint(0, 10, (64,))
    h, w, b = torch.randn(64, 64), torch.randn(10, 64), torch.randn(10)
    return {
        "relu 64x10": (lambda L, a: L.relu(a), x),
        "log_softmax 64x10": (lambda L, a: L.log_softmax(a, 1), x),
        "nll_loss 64x10": (lambda L, a: L.nll_loss(a, t), logp),
        "cross_entropy 64x10": (lambda L, a: L.cross_entropy(a, t), x),
        "linear 64x64x10": (lambda L, a: L.linear(a, w, b), h),
    }


def best_us(call, number: int, repeat: int) -> float:
    return min(timeit.repeat(call, number=number, repeat=repeat)) / number * 1e6


def through_torch_ops(call):
    """Runs call with fastnn's wrappers taking their torch.compile branch: the OpOverloads."""
    real = _ops._compiling
    _ops._compiling = lambda: True
    try:
        return call()
    finally:
        _ops._compiling = real


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--number", type=int, default=20000)
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"us per call, {args.threads} thread(s), best of {args.repeat} x {args.number}")
    print(f"{'call':22s} {'mode':10s} {'native':>7s} {'torch.ops':>9s} {'fastnn._C':>9s}")
    for name, (fn, x) in cases().items():
        for mode, arg in (("no grad", x), ("grad", x.clone().requires_grad_())):
            native = best_us(lambda: fn(F, arg), args.number, args.repeat)
            boxed = through_torch_ops(lambda: best_us(lambda: fn(FF, arg), args.number,
                                                      args.repeat))
            direct = best_us(lambda: fn(FF, arg), args.number, args.repeat)
            print(f"{name:22s} {mode:10s} {native:7.2f} {boxed:9.2f} {direct:9.2f}")


if __name__ == "__main__":
    main()
