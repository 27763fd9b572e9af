"""Helpers shared by the fastnn tests: device availability, the tolerance table,
comparison helpers and makers of non-contiguous / transposed inputs."""
import math

import torch

import fastnn

CUDA_OK = bool(torch.cuda.is_available() and fastnn.WITH_CUDA)
if not torch.cuda.is_available():
    CUDA_SKIP_REASON = "no CUDA device (torch.cuda.is_available() is False)"
elif not fastnn.WITH_CUDA:
    CUDA_SKIP_REASON = "fastnn was built without CUDA kernels (fastnn.WITH_CUDA is False)"
else:
    CUDA_SKIP_REASON = ""

HALF_DTYPES = (torch.float16, torch.bfloat16)


def dtypes_for(device):
    """The dtypes fastnn has kernels for on `device` (the same four on cpu and cuda)."""
    return [torch.float32, torch.float64, torch.float16, torch.bfloat16]


# ---------------------------------------------------------------------------------------
# Tolerance table: fastnn vs native PyTorch, per dtype.
#
# rtol is relative to the reference value; atol is for O(1)-magnitude quantities that come
# out of a reduction of length k and is scaled by sqrt(k) (see `tol`): fastnn and native
# sum in different orders, so their rounding errors differ by a random walk of ~sqrt(k)
# steps of ~eps each. `assert_close` also scales atol by the reference's RMS magnitude
# when that is above 1: a reduction whose partial sums are ~R has rounding errors ~eps*R
# even where the final value cancels to ~0 (e.g. dW = dy^T x over 300 rows, R ~ 17).
#   float64: "tight": both results are within a few ulp (1.1e-16) of exact, so 1e-10
#            relative leaves 6 orders of magnitude of slack and still catches any
#            float32 round trip (1e-7) in a float64 path.
#   float32: eps 6e-8; 1e-5 relative covers different summation orders and exp/log
#            implementations (vectorised polynomials, ~2 ulp).
#   float16/bfloat16: one output rounding is 2^-11 / 2^-8 relative; native
#            and fastnn may round a value near a rounding boundary in opposite directions
#            (1 ulp = 9.8e-4 / 7.8e-3), and cuBLAS may reduce in reduced precision.
TOLERANCES = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float16: dict(rtol=5e-3, atol=1e-3),
    torch.bfloat16: dict(rtol=4e-2, atol=8e-3),
}


def tol(dtype, k=1):
    """rtol/atol for `dtype` and a reduction of length k."""
    t = TOLERANCES[dtype]
    return dict(rtol=t["rtol"], atol=t["atol"] * math.sqrt(max(k, 1)))


def assert_close(actual, expected, dtype=None, k=1, equal_nan=False, msg=None):
    """assert_close with the table's tolerance for `dtype` (default: expected's dtype).
    Also checks that fastnn returns the native dtype and shape and a dense output."""
    dtype = dtype or expected.dtype
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != {expected.dtype}"
    assert actual.device == expected.device, f"device {actual.device} != {expected.device}"
    t = tol(dtype, k)
    finite = expected[torch.isfinite(expected)]
    if finite.numel():
        t["atol"] *= max(1.0, finite.double().pow(2).mean().sqrt().item())
    torch.testing.assert_close(actual, expected, equal_nan=equal_nan, msg=msg, **t)


def assert_dense(t):
    assert t.is_contiguous(), f"output is not contiguous: shape {tuple(t.shape)} strides {t.stride()}"


# ---------------------------------------------------------------------------------------
# Input makers

def randn(*shape, dtype=torch.float32, device="cpu", scale=1.0):
    return (torch.randn(shape, dtype=torch.float64) * scale).to(dtype=dtype, device=device)


def init_weight(out_f, in_f, dtype=torch.float32, device="cpu"):
    """Weight with nn.Linear's scale (uniform +-1/sqrt(in)), so outputs are O(1)."""
    bound = 1.0 / math.sqrt(max(in_f, 1))  # noqa
    w = (torch.rand(out_f, in_f, dtype=torch.float64) * 2 - 1) * bound
    return w.to(dtype=dtype, device=device)


def make_layout(t, layout):
    """Return a tensor equal to `t` (same values and shape) with another memory layout.

    layout: "contiguous"; "transposed" (stored as the transpose of its last two dims, i.e.
    column-major; 1-D tensors are returned as a stride-2 view instead); "strided" (every
    other element of a larger buffer along the last dim); "sliced" (a slice along dim 0 of
    a bigger buffer, non-zero storage offset)."""
    t = t.detach()
    if layout == "contiguous":
        out = t.contiguous()
    elif layout == "transposed":
        if t.dim() < 2:
            return make_layout(t, "strided")
        out = t.transpose(-1, -2).contiguous().transpose(-1, -2)
    elif layout == "strided":
        big = torch.empty(*t.shape[:-1], t.shape[-1] * 2, dtype=t.dtype, device=t.device) if t.dim() else None
        if big is None:
            return t.clone()
        big.fill_(float("nan")) if t.is_floating_point() else big.fill_(-12345)
        big[..., ::2] = t
        out = big[..., ::2]
    elif layout == "sliced":
        if t.dim() == 0:
            return t.clone()
        big = torch.empty(t.shape[0] + 3, *t.shape[1:], dtype=t.dtype, device=t.device)
        big.fill_(float("nan")) if t.is_floating_point() else big.fill_(-12345)
        big[2:2 + t.shape[0]] = t
        out = big[2:2 + t.shape[0]]
    else:
        raise ValueError(layout)
    assert torch.equal(out, t) or (t.is_floating_point() and torch.equal(out.nan_to_num(), t.nan_to_num()))
    return out


NONCONTIG_LAYOUTS = ("transposed", "strided", "sliced")


def nan_in_one_thread(row):
    """Sets NaN in every 16-byte vector of the contiguous 1-D `row` whose index is 1 mod 32.
    In the CUDA block-per-row kernels (a multiple of 32 threads per row, thread t taking the
    vectors t, t + threads, ...) some threads then see only NaN and the others none: the
    NaN must still reach the whole row, as it does natively."""
    per_vec = 16 // row.element_size()
    vec = torch.arange(row.numel(), device=row.device) // per_vec
    row[vec % 32 == 1] = float("nan")


def leaf(t):
    """A leaf that requires grad with t's values AND t's memory layout (strides, offset).
    It is a detached alias of t; don't use it with in-place ops on shared inputs."""
    return t.detach().requires_grad_(True)


# ---------------------------------------------------------------------------------------
# The seed model and a synthetic MNIST-like data set

def seed_mlp(nn_mod=torch.nn, log_softmax=True):
    """The seed classifier: 784-256-128-64-10 with ReLU, ending in LogSoftmax (for NLLLoss)
    or in raw logits (for CrossEntropyLoss). nn_mod: torch.nn or fastnn.nn."""
    layers = [nn_mod.Linear(784, 256), nn_mod.ReLU(), nn_mod.Linear(256, 128), nn_mod.ReLU(),
              nn_mod.Linear(128, 64), nn_mod.ReLU(), nn_mod.Linear(64, 10)]
    if log_softmax:
        layers.append(nn_mod.LogSoftmax(dim=1))
    return nn_mod.Sequential(*layers)


def synthetic_mnist(n, seed=1234, noise=2.0, dtype=torch.float32, device="cpu"):
    """A fixed random "MNIST-like" set: 10 class prototypes in [0, 1]^784 plus Gaussian
    noise (std `noise`), so classes overlap and a 200-step run does not drive the loss to ~0.
    Returns (x (n, 784), labels (n,) int64). Independent of the global RNG."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(10, 784, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 10, (n,), generator=g)
    x = protos[labels] + noise * torch.randn(n, 784, generator=g, dtype=torch.float64)
    x = (x - 0.5) / noise
    return x.to(dtype=dtype, device=device), labels.to(device)
