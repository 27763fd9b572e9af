"""Shared fixtures for the fastnn test suite.

* ``device``: "cpu" always; "cuda" when torch.cuda.is_available() and fastnn was built
  with CUDA kernels (fastnn.WITH_CUDA), otherwise that case is skipped with the reason.
* ``dtype``: when a test also takes ``device``, the dtypes fastnn supports there
  (float32, float64, float16 and bfloat16 on both). Restrict a test with
  ``@pytest.mark.dtypes(torch.float64, ...)``.
* Every test starts from ``torch.manual_seed(0)`` (autouse ``_seed``) and leaves the
  thread count, default dtype and TF32 flags as it found them.
* Tolerances and the helpers for non-contiguous inputs live in ``support.py``.
* ``FASTNN_EMULATE_CUDA=1``: run the suite with fastnn's CPU kernels replaced by its CUDA
  kernels in the CPU emulator (tests/cuda_emu); the few tests of CPU-only behaviour are
  skipped with the reason (``_CPU_ONLY``). ``make test`` runs the kernel tests this way.
"""
import os
import sys
from pathlib import Path

import pytest
import torch

import fastnn
from support import CUDA_OK, CUDA_SKIP_REASON, dtypes_for


EMULATED_CUDA = os.environ.get("FASTNN_EMULATE_CUDA") == "1"

# Under FASTNN_EMULATE_CUDA=1, the tests that check what the CPU kernels do and the CUDA
# kernels by design do not: node id prefix -> why.
_CPU_ONLY = {
    "tests/test_errors.py::test_loss_target_out_of_bounds":
        "an out-of-range target is a device-side assert on CUDA, not an IndexError",
    "tests/test_python_entry.py::test_entry_point_argument_errors":
        "an out-of-range target is a device-side assert on CUDA, not an IndexError",
    "tests/test_half.py::test_half_linear_rounds_once_on_cpu":
        "bitwise equality with the CPU GEMM's summation order",
    "tests/test_relu.py::test_relu_special_values":
        "relu(-0.0)'s sign is the device's max (native CUDA's formula), here the host's",
}


def pytest_configure(config):
    if EMULATED_CUDA:
        # fastnn's CPU kernels replaced by its CUDA kernels run in the CPU emulator
        # (tests/cuda_emu), so the suite exercises the CUDA code (`make test`'s third pass).
        sys.path.insert(0, str(Path(__file__).parent / "cuda_emu"))
        import build
        build.load(replace_cpu=True)
    config.addinivalue_line("markers", "dtypes(*dtypes): restrict the dtype parametrisation")
    config.addinivalue_line("markers", "slow: takes more than a few seconds (still run)")
    config.addinivalue_line("markers", "cuda: needs a CUDA device and fastnn's CUDA kernels")


def _device_params():
    return [pytest.param("cpu", id="cpu"),
            pytest.param("cuda", id="cuda",
                         marks=[pytest.mark.cuda,
                                pytest.mark.skipif(not CUDA_OK, reason=CUDA_SKIP_REASON)])]


def _explicitly_parametrized(metafunc):
    names = set()
    for m in metafunc.definition.iter_markers("parametrize"):
        argnames = m.args[0] if m.args else m.kwargs["argnames"]
        if isinstance(argnames, str):
            argnames = [a.strip() for a in argnames.split(",")]
        names.update(argnames)
    return names


def pytest_generate_tests(metafunc):
    explicit = _explicitly_parametrized(metafunc)
    names = [n for n in metafunc.fixturenames if n not in explicit]
    marker = metafunc.definition.get_closest_marker("dtypes")
    allowed = tuple(marker.args) if marker else None
    if "device" in names and "dtype" in names:
        params = []
        for dev in _device_params():
            for dt in dtypes_for(dev.values[0]):
                if allowed is not None and dt not in allowed:
                    continue
                params.append(pytest.param(dev.values[0], dt, id=f"{dev.id}-{str(dt)[6:]}",
                                           marks=dev.marks))
        metafunc.parametrize("device,dtype", params)
    elif "device" in names:
        metafunc.parametrize("device", _device_params())
    elif "dtype" in names:
        dts = [dt for dt in dtypes_for("cpu") if allowed is None or dt in allowed]
        metafunc.parametrize("dtype", dts, ids=[str(d)[6:] for d in dts])


def pytest_collection_modifyitems(config, items):
    if not EMULATED_CUDA:
        return
    for item in items:
        for prefix, why in _CPU_ONLY.items():
            if item.nodeid.startswith(prefix):
                item.add_marker(pytest.mark.skip(reason=f"CUDA kernels emulated: {why}"))


@pytest.fixture(autouse=True)
def _seed():
    """Seeded RNG per test, and restore global state a test may touch."""
    torch.manual_seed(0)
    if CUDA_OK:
        torch.cuda.manual_seed_all(0)
    threads = torch.get_num_threads()
    default_dtype = torch.get_default_dtype()
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    yield
    torch.set_num_threads(threads)
    torch.set_default_dtype(default_dtype)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


@pytest.fixture
def cuda_only():
    if not CUDA_OK:
        pytest.skip(CUDA_SKIP_REASON)


def pytest_report_header(config):
    return (f"fastnn {fastnn.__version__} (WITH_CUDA={fastnn.WITH_CUDA}), torch {torch.__version__}, "
            f"cuda available: {torch.cuda.is_available()}, threads: {torch.get_num_threads()}")
