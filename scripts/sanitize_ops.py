"""Calls every fastnn CUDA op once per dtype on a few awkward shapes, for compute-sanitizer.

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck python scripts/sanitize_ops.py

The caching allocator is disabled so an out-of-bounds access past a tensor is
reported instead of landing in a neighbouring cached block. Values are checked
elsewhere (tests, gemm_check.py, ops_check.py); this script only exercises the kernels.
"""
import torch

import fastnn  # noqa: F401  (loads the ops)

ops = torch.ops.fastnn
dev = "cuda"
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def run_linear(dtype):
    # (130, 257, 264), (136, 264, 200): K % 8 == 0 with tails, for the wgmma GEMM
    for m, n, k in [(1, 1, 1), (64, 10, 64), (63, 65, 67), (130, 257, 129), (0, 8, 8),
                    (130, 257, 264), (136, 264, 200)]:
        x = torch.randn(m, k, device=dev, dtype=dtype)
        w = torch.randn(n, k, device=dev, dtype=dtype)
        b = torch.randn(n, device=dev, dtype=dtype)
        y = ops.linear_forward(x, w, b)
        ops.linear_backward(torch.randn_like(y), x, w, [True, True, True])
        ops.linear_forward(x, w, None)


def run_pointwise(dtype):
    for shape in [(1,), (7, 13), (64, 10), (33, 1025), (3, 4, 5)]:
        x = torch.randn(shape, device=dev, dtype=dtype)
        y = ops.relu_forward(x)
        ops.relu_backward(torch.randn_like(y), y)
        ops.relu_forward_(x.clone())
        for dim in range(-x.dim(), x.dim()):
            y = ops.log_softmax_forward(x, dim)
            ops.log_softmax_backward(torch.randn_like(y), y, dim)


def run_losses(dtype):
    for shape in [(1, 3), (64, 10), (37, 1100), (4, 5, 3, 2), (0, 10)]:
        x = torch.randn(shape, device=dev, dtype=dtype)
        tshape = (shape[0],) + shape[2:]
        t = torch.randint(0, shape[1], tshape, device=dev)
        if t.numel():
            t.view(-1)[0] = -100
        w = torch.rand(shape[1], device=dev, dtype=dtype)
        for red in (0, 1, 2):
            for weight in (None, w):
                lp = ops.log_softmax_forward(x, 1)
                loss, tw = ops.nll_loss_forward(lp, t, weight, red, -100)
                ops.nll_loss_backward(torch.ones_like(loss), lp, t, weight, red, -100, tw)
                loss, lse, tw = ops.cross_entropy_forward(x, t, weight, red, -100)
                ops.cross_entropy_backward(torch.ones_like(loss), x, t, weight, red, -100, lse, tw)


for dtype in DTYPES:
    run_linear(dtype)
    run_pointwise(dtype)
    run_losses(dtype)
torch.cuda.synchronize()
print("sanitize_ops: all ops ran")
