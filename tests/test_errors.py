"""Bad input raises a clear Python exception (never crashes, never returns garbage)."""
import pytest
import torch
import torch.nn.functional as F

import fastnn
import fastnn.functional as FF
from support import CUDA_OK, CUDA_SKIP_REASON, assert_close

ops = torch.ops.fastnn
DTYPE_MSG = "fastnn supports float32, float64, float16 and bfloat16"  # checks.h


# ----------------------------------------------------------------------------- dtypes

@pytest.mark.parametrize("bad", [torch.int64, torch.int32, torch.bool])
def test_integer_input_dtype(bad):
    x = torch.ones(3, 4, dtype=bad)
    with pytest.raises(RuntimeError, match=DTYPE_MSG):
        FF.linear(x, torch.ones(2, 4, dtype=bad))
    with pytest.raises(RuntimeError, match=DTYPE_MSG):
        FF.relu(x)
    with pytest.raises(RuntimeError, match=DTYPE_MSG):
        FF.relu(x.clone(), inplace=True)
    with pytest.raises(RuntimeError, match=DTYPE_MSG):
        FF.log_softmax(x, 1)
    t = torch.zeros(3, dtype=torch.long)
    with pytest.raises(RuntimeError, match=DTYPE_MSG):
        FF.nll_loss(x, t)
    with pytest.raises(RuntimeError, match=DTYPE_MSG):
        FF.cross_entropy(x, t)


@pytest.mark.parametrize("bad", [torch.complex64, torch.float8_e4m3fn], ids=["complex64", "float8"])
def test_other_float_dtypes(bad):
    x = torch.zeros(3, 4).to(bad)
    with pytest.raises(RuntimeError, match=DTYPE_MSG):
        FF.linear(x, torch.zeros(2, 4).to(bad))
    with pytest.raises(RuntimeError, match=DTYPE_MSG):
        FF.log_softmax(x, 1)
    with pytest.raises(RuntimeError, match=DTYPE_MSG):
        FF.cross_entropy(x, torch.zeros(3, dtype=torch.long))


def test_mixed_dtypes():
    x = torch.randn(3, 4)
    with pytest.raises(RuntimeError, match="dtype"):
        FF.linear(x, torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="dtype"):
        FF.linear(x, torch.randn(2, 4), torch.randn(2, dtype=torch.float64))
    t = torch.zeros(3, dtype=torch.long)
    with pytest.raises(RuntimeError, match="same dtype"):
        FF.nll_loss(x, t, weight=torch.ones(4, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="same dtype"):
        FF.cross_entropy(x, t, weight=torch.ones(4, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="dtype"):
        ops.relu_backward(torch.randn(3, 4), torch.randn(3, 4, dtype=torch.float64))


# ----------------------------------------------------------------------------- shapes

SHAPE_MSG = r"(?i)(shape|size|feature)"


def test_linear_shape_mismatch():
    with pytest.raises(RuntimeError, match=SHAPE_MSG):
        FF.linear(torch.randn(4, 5), torch.randn(3, 6))
    with pytest.raises(RuntimeError, match=SHAPE_MSG):
        FF.linear(torch.randn(4, 5, requires_grad=True), torch.randn(3, 6))
    with pytest.raises(RuntimeError, match=SHAPE_MSG):
        fastnn.Linear(6, 3)(torch.randn(2, 7, 5))
    with pytest.raises(RuntimeError, match=SHAPE_MSG):  # bias of the wrong length
        FF.linear(torch.randn(4, 5), torch.randn(3, 5), torch.randn(4))
    with pytest.raises(RuntimeError, match="does not broadcast"):  # a bias that does not expand
        FF.linear(torch.randn(4, 5), torch.randn(3, 5), torch.randn(2, 3))
    with pytest.raises(RuntimeError, match="dtype"):  # nor of another dtype
        FF.linear(torch.randn(4, 5), torch.randn(3, 5), torch.randn(4, 3, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"(?i)(2-D|dim|shape)"):  # requiring grad too
        FF.linear(torch.randn(2, 4, 5, requires_grad=True), torch.randn(5), torch.randn(()))
    with pytest.raises(RuntimeError, match=SHAPE_MSG):  # one that would grow the output
        FF.linear(torch.randn(4, 5), torch.randn(3, 5), torch.randn(2, 4, 3))
    with pytest.raises(RuntimeError, match=r"(?i)(2-D|dim|shape)"):  # 1-D weight with bias
        FF.linear(torch.randn(4, 5), torch.randn(5), torch.randn(()))
    with pytest.raises(RuntimeError, match=r"(?i)(2-D|dim|shape)"):  # 3-D weight
        FF.linear(torch.randn(4, 5), torch.randn(2, 3, 5))
    with pytest.raises(RuntimeError, match=r"(?i)(dim|shape|0-d)"):  # 0-d input
        FF.linear(torch.tensor(1.0), torch.randn(3, 1))


def test_linear_backward_shape_mismatch():
    x, w = torch.randn(4, 5), torch.randn(3, 5)
    with pytest.raises(RuntimeError, match=SHAPE_MSG):
        ops.linear_backward(torch.randn(4, 2), x, w, [True, True, True])
    with pytest.raises(RuntimeError, match=SHAPE_MSG):
        ops.linear_backward(torch.randn(5, 3), x, w, [True, True, True])


def test_relu_and_log_softmax_backward_shape_mismatch():
    with pytest.raises(RuntimeError, match=SHAPE_MSG):
        ops.relu_backward(torch.randn(3, 4), torch.randn(4, 3))
    with pytest.raises(RuntimeError, match=SHAPE_MSG):
        ops.log_softmax_backward(torch.randn(3, 4), torch.randn(3, 5), 1)


def test_log_softmax_dim_out_of_range():
    for shape, dim in [((3, 4), 2), ((3, 4), -3), ((5,), 1), ((2, 3, 4, 5), 4), ((2, 3, 4, 5), -5)]:
        with pytest.raises(IndexError, match="out of range"):
            FF.log_softmax(torch.randn(shape), dim)
        with pytest.raises(IndexError, match="out of range"):
            FF.log_softmax(torch.randn(shape, requires_grad=True), dim)
    with pytest.raises(IndexError, match="out of range"):
        ops.log_softmax_backward(torch.randn(3, 4), torch.randn(3, 4), 2)


LOSSES = [FF.nll_loss, FF.cross_entropy]
LOSS_IDS = ["nll", "ce"]


@pytest.mark.parametrize("fn", LOSSES, ids=LOSS_IDS)
def test_loss_target_shape(fn):
    """A batch-size mismatch is a ValueError, other shape mismatches RuntimeErrors, as
    natively; a 0-d input is a ValueError (as native nll_loss's)."""
    x = torch.randn(4, 5)
    # A target of the input's own shape: an error for nll_loss; for cross_entropy, as
    # natively, it holds class probabilities, so it must be floating point.
    same_shape = "does not match" if fn is FF.nll_loss else "class probabilities and must be"
    with pytest.raises(RuntimeError, match=same_shape):
        fn(x, torch.zeros(4, 5, dtype=torch.long))  # 2-D target for a 2-D input
    with pytest.raises(ValueError, match="batch size"):
        fn(x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="batch size"):  # checked before the dims
        fn(x, torch.zeros(5, 2, dtype=torch.long))
    with pytest.raises(RuntimeError, match="does not match"):
        fn(torch.randn(2, 5, 3), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="0-d"):
        fn(torch.randn(5), torch.zeros(1, dtype=torch.long))
    if fn is FF.nll_loss:
        with pytest.raises(ValueError, match="0-d"):
            fn(torch.tensor(1.0), torch.tensor(0))
    else:
        with pytest.raises(RuntimeError, match="class probabilities"):
            fn(torch.tensor(1.0), torch.tensor(0))


@pytest.mark.parametrize("fn", LOSSES, ids=LOSS_IDS)
@pytest.mark.parametrize("requires_grad", [False, True], ids=["nograd", "grad"])
def test_loss_target_out_of_bounds(fn, requires_grad):
    x = torch.randn(4, 5, requires_grad=requires_grad)
    for bad in (5, -1, 100, -100):
        t = torch.tensor([0, 1, bad, 2])
        with pytest.raises(IndexError, match="out of bounds"):
            fn(x, t, ignore_index=7)
    with pytest.raises(IndexError, match="out of bounds"):  # 1-D input, 0-d target
        fn(torch.randn(5, requires_grad=requires_grad), torch.tensor(5))
    with pytest.raises(IndexError, match="out of bounds"):  # spatial
        t = torch.zeros(2, 3, dtype=torch.long)
        t[1, 2] = 9
        fn(torch.randn(2, 5, 3, requires_grad=requires_grad), t)
    for red in ("none", "sum", "mean"):
        with pytest.raises(IndexError, match="out of bounds"):
            fn(x, torch.tensor([0, 1, 5, 2]), reduction=red)
    # the ignore_index itself may be out of [0, C)
    fn(x, torch.tensor([0, 1, -100, 2]))
    fn(x, torch.tensor([0, 1, 7, 2]), ignore_index=7)


@pytest.mark.parametrize("fn", LOSSES, ids=LOSS_IDS)
def test_loss_target_dtype(fn):
    x = torch.randn(4, 5)
    with pytest.raises(RuntimeError, match="int64"):
        fn(x, torch.zeros(4, dtype=torch.int32))
    # byte class indices are accepted, as natively
    t8 = torch.tensor([0, 4, 2, 1], dtype=torch.uint8)
    assert torch.equal(fn(x, t8), fn(x, t8.long()))
    # a float target of another shape than the input's is read as class indices
    with pytest.raises(RuntimeError, match="int64"):
        fn(x, torch.zeros(4, dtype=torch.float32))


@pytest.mark.parametrize("fn", LOSSES, ids=LOSS_IDS)
def test_loss_weight_wrong_length(fn):
    x, t = torch.randn(4, 5), torch.zeros(4, dtype=torch.long)
    for w in (torch.ones(4), torch.ones(6), torch.ones(1, 5), torch.ones(())):
        with pytest.raises(RuntimeError, match="one entry per class"):
            fn(x, t, weight=w)
    with pytest.raises(RuntimeError, match=DTYPE_MSG):
        fn(x, t, weight=torch.ones(5, dtype=torch.long))


def test_loss_bad_reduction_enum():
    x, t = torch.randn(4, 5), torch.zeros(4, dtype=torch.long)
    for op in (ops.nll_loss_forward, ops.cross_entropy_forward):
        with pytest.raises(RuntimeError, match="reduction"):
            op(x, t, None, 3, -100)


def test_loss_backward_bad_aux_inputs(device):
    x = torch.randn(4, 5, device=device)
    t = torch.zeros(4, dtype=torch.long, device=device)
    loss, lse, tw = ops.cross_entropy_forward(x, t, None, 1, -100)
    one = torch.tensor(1.0, device=device)
    for bad_lse in (lse.new_zeros(3), lse.new_zeros(4), lse[:, :1]):  # lse of the wrong shape
        with pytest.raises(RuntimeError, match="lse"):
            ops.cross_entropy_backward(one, x, t, None, 1, -100, bad_lse, tw)
    # lse of the wrong dtype: refused on every device, never converted behind the caller's back
    with pytest.raises(RuntimeError, match="`lse` has dtype Double but must be Float"):
        ops.cross_entropy_backward(one, x, t, None, 1, -100, lse.double(), tw)
    h = x.half()
    _, h_lse, h_tw = ops.cross_entropy_forward(h, t, None, 1, -100)
    with pytest.raises(RuntimeError, match="`lse` has dtype Half but must be Float"):
        ops.cross_entropy_backward(one.half(), h, t, None, 1, -100, h_lse.half(), h_tw)
    # total_weight likewise: float32 for the half types, the input's dtype otherwise
    with pytest.raises(RuntimeError, match="`total_weight` has dtype Half but must be Float"):
        ops.cross_entropy_backward(one.half(), h, t, None, 1, -100, h_lse, h_tw.half())
    with pytest.raises(RuntimeError, match="`total_weight` has dtype Half but must be Float"):
        ops.nll_loss_backward(one.half(), h, t, None, 1, -100, h_tw.half())
    with pytest.raises(RuntimeError, match="`total_weight` has dtype Double but must be Float"):
        ops.nll_loss_backward(one, x, t, None, 1, -100, tw.double())
    ones = torch.ones(3, device=device)
    with pytest.raises(RuntimeError):  # grad_output of the wrong shape for reduction='none'
        ops.nll_loss_backward(ones, x, t, None, 0, -100, tw)
    with pytest.raises(RuntimeError):
        ops.cross_entropy_backward(ones, x, t, None, 0, -100, lse, tw)


# ----------------------------------------------------------------------------- devices

def test_meta_device_works():
    """meta tensors go through the fake kernels: shapes only, no error."""
    x = torch.empty(4, 5, device="meta")
    assert FF.relu(x).shape == (4, 5)
    assert FF.log_softmax(x, 1).shape == (4, 5)
    t = torch.empty(4, dtype=torch.long, device="meta")
    assert FF.nll_loss(x, t).shape == ()
    assert FF.cross_entropy(x, t, reduction="none").shape == (4,)


def test_unsupported_device_message(monkeypatch):
    """A device fastnn has no kernels for is rejected by name before reaching the ops
    (exercised with meta, taken off fastnn's device list for this test)."""
    monkeypatch.setattr(fastnn.functional, "_DEVICES", ("cpu", "cuda"))
    x = torch.empty(4, 5, device="meta")
    for call in (lambda: FF.linear(x, x), lambda: FF.relu(x), lambda: FF.log_softmax(x, 1),
                 lambda: FF.nll_loss(x, torch.empty(4, dtype=torch.long, device="meta")),
                 lambda: FF.cross_entropy(x, torch.empty(4, dtype=torch.long, device="meta"))):
        with pytest.raises(RuntimeError, match="tensors on meta are not supported"):
            call()


cuda_only = pytest.mark.skipif(not CUDA_OK, reason=CUDA_SKIP_REASON)


@cuda_only
def test_different_devices():
    xc, wc = torch.randn(4, 5, device="cuda"), torch.randn(3, 5, device="cuda")
    with pytest.raises(RuntimeError, match="device"):
        FF.linear(xc, wc.cpu())
    with pytest.raises(RuntimeError, match="device"):
        FF.linear(xc, wc, torch.randn(3))
    with pytest.raises(RuntimeError, match="device"):
        FF.linear(xc.cpu(), wc)
    t = torch.zeros(4, dtype=torch.long)
    for fn in LOSSES:
        with pytest.raises(RuntimeError, match="device"):
            fn(xc, t)
        with pytest.raises(RuntimeError, match="device"):
            fn(xc, t.cuda(), weight=torch.ones(5))
    with pytest.raises(RuntimeError, match="device"):
        ops.relu_backward(torch.randn(3, device="cuda"), torch.randn(3))


@cuda_only
def test_cuda_tensor_without_cuda_kernels(monkeypatch):
    monkeypatch.setattr(fastnn.functional, "_C_WITH_CUDA", False)
    with pytest.raises(RuntimeError, match="no CUDA kernels"):
        FF.relu(torch.randn(3, device="cuda"))


@cuda_only
@pytest.mark.parametrize("fn", LOSSES, ids=LOSS_IDS)
def test_cuda_out_of_bounds_target_does_not_crash(fn):
    """On CUDA an out-of-range target cannot be checked on the host without a sync; a
    device-side assert raises asynchronously and poisons the context, so this runs in a
    subprocess. It must raise (or, at the least, give a NaN loss), never return a number,
    hang or segfault."""
    import subprocess
    import sys
    code = (f"import torch, fastnn, fastnn.functional as FF\n"
            f"x = torch.randn(4, 5, device='cuda')\n"
            f"t = torch.tensor([0, 1, 9, 2], device='cuda')\n"
            f"try:\n"
            f"    v = FF.{fn.__name__}(x, t).item(); torch.cuda.synchronize()\n"
            f"    print('nan' if v != v else f'value {{v}}')\n"
            f"except (RuntimeError, IndexError) as e:\n"
            f"    print('raised', type(e).__name__)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "raised" in r.stdout or "nan" in r.stdout, (r.returncode, r.stdout, r.stderr[-2000:])


def test_meta_tensor_mixed_with_real_ones():
    """A meta tensor among real ones dispatches to the fake kernels: refused, not garbage."""
    x, t = torch.randn(4, 5), torch.zeros(4, dtype=torch.long)
    meta_t, meta_w = t.to("meta"), torch.ones(5, device="meta")
    for call in (lambda: FF.nll_loss(x, meta_t), lambda: FF.cross_entropy(x, t, meta_w),
                 lambda: FF.linear(x, torch.randn(3, 5, device="meta"))):
        with pytest.raises(RuntimeError, match="one device"):
            call()


def test_non_tensor_input_is_a_type_error():
    for fn in (FF.relu, lambda x: FF.linear(x, torch.ones(2, 2)), lambda x: FF.log_softmax(x, 0)):
        with pytest.raises(TypeError, match="must be a Tensor, not list"):
            fn([1.0, -1.0])


def test_deprecated_elementwise_mean_reduction():
    """The deprecated alias native still accepts, with its warning."""
    x, t = torch.randn(4, 3).log_softmax(1), torch.tensor([0, 2, 1, 1])
    for fast, native in ((FF.nll_loss, F.nll_loss), (FF.cross_entropy, F.cross_entropy)):
        with pytest.warns(UserWarning, match="elementwise_mean"):
            got = fast(x, t, reduction="elementwise_mean")
        assert_close(got, native(x, t, reduction="mean"))


@pytest.mark.parametrize("value", [True, 1.0, "1", None], ids=repr)
@pytest.mark.parametrize("op", ["log_softmax", "nll_loss", "cross_entropy"])
def test_integer_arguments_take_what_native_takes(op, value):
    """dim / ignore_index: a bool, float or str is a TypeError, as natively; a NumPy integer
    or a one-element integer tensor is taken (as its int). None is log_softmax's implicit
    dim (deprecated); for ignore_index it is refused."""
    np = pytest.importorskip("numpy")
    x, t = torch.randn(4, 3).log_softmax(1), torch.tensor([0, 2, 1, 1])
    arg = "dim" if op == "log_softmax" else "ignore_index"
    fast, native = getattr(FF, op), getattr(F, op)
    call = ((lambda f, v: f(x, dim=v)) if op == "log_softmax"
            else (lambda f, v: f(x, t, ignore_index=v)))
    if value is None and op == "log_softmax":
        with pytest.warns(UserWarning, match="Implicit dimension"):
            assert_close(call(fast, value), F.log_softmax(x, 1))
        return
    # (native's error differs between torch versions: before 2.14 a str dim is a
    # RuntimeError, from parsing it as a dimension name)
    with pytest.raises((TypeError, RuntimeError)):
        call(native, value)
    with pytest.raises(TypeError, match=f"fastnn.{op}: argument '{arg}' must be int"):
        call(fast, value)
    for ok in (np.int64(1), torch.tensor(1)):
        assert_close(call(fast, ok), call(native, ok))


_LAYOUTS = {
    "sparse_coo": (lambda x: x.to_sparse(), "sparse", r"\.to_dense\(\)"),
    "sparse_csr": (lambda x: x.to_sparse_csr(), "sparse", r"\.to_dense\(\)"),
    "mkldnn": (lambda x: x.to_mkldnn(), "mkldnn", r"\.to_dense\(\)"),
    "quantized": (lambda x: torch.quantize_per_tensor(x, 0.1, 0, torch.quint8), "quantized",
                  r"\.dequantize\(\)"),
    "nested": (lambda x: torch.nested.nested_tensor(list(x.unbind())), "nested",
               r"\.unbind\(\)"),
}


@pytest.mark.filterwarnings("ignore::UserWarning")  # beta/prototype/deprecation notices
@pytest.mark.parametrize("layout", list(_LAYOUTS))
def test_non_dense_tensors_are_refused_by_name(layout):
    """fastnn's kernels take strided tensors; another layout gets an error that names it
    and the conversion, whichever argument carries it."""
    if layout == "mkldnn" and not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no mkldnn")
    convert, kind, fix = _LAYOUTS[layout]
    x, w, t = torch.randn(4, 3), torch.randn(2, 3), torch.tensor([0, 2, 1, 1])
    calls = [lambda x: FF.linear(x, w), lambda x: FF.relu(x), lambda x: FF.relu(x, inplace=True),
             lambda x: FF.log_softmax(x, 1), lambda x: FF.nll_loss(x, t),
             lambda x: FF.cross_entropy(x, t), lambda w: FF.linear(x, w)]
    for call, arg in zip(calls, [x] * 6 + [w]):
        with pytest.raises(NotImplementedError, match=f"got an? {kind} tensor .*{fix}"):
            call(convert(arg))


def test_every_op_refuses_every_non_dense_layout():
    """The refusal is registered for every op on every such dispatch key (CUDA's too)."""
    keys = ["SparseCPU", "SparseCUDA", "SparseCsrCPU", "SparseCsrCUDA", "MkldnnCPU",
            "QuantizedCPU", "QuantizedCUDA", "NestedTensorCPU", "NestedTensorCUDA"]
    ops = [f"fastnn::{name}" for name in torch.ops.fastnn]
    assert len(ops) == 11
    missing = [(op, key) for op in ops for key in keys
               if not torch._C._dispatch_has_kernel_for_dispatch_key(op, key)]
    assert not missing


def test_inplace_relu_on_overlapping_memory(device):
    """An expanded view cannot be updated in place: refused by name before any work, as
    native refuses it."""
    x = torch.zeros(1, device=device).expand(4)
    with pytest.raises(RuntimeError, match="more than one element"):
        F.relu(x, inplace=True)
    with pytest.raises(RuntimeError, match="relu_forward_: `input` has elements that share memory.*clone"):
        FF.relu(x, inplace=True)
