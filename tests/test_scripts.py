"""End-to-end smoke tests of the scripts, so they cannot rot: the training script
(``python -m fastnn.train``) on a few hundred samples, the checkpoint round trip, the
read-only data-root handling, the benchmarks' --quick mode and a few seconds of the
differential fuzz on the CPU.

No speed or accuracy assertions. Everything is written under pytest's tmp_path.
The training test uses the real MNIST files when it finds them ($FASTNN_DATA, or
../shared/data beside the checkout), else a tiny synthetic MNIST in torchvision's
layout (uncompressed IDX files, which torchvision reads without downloading).
"""
import gzip
import json
import os
import shutil
import struct
import subprocess
import sys

import pytest
import torch

from fastnn.data import load_dataset, prepare_root
from fastnn.models import Classifier, load_checkpoint, predict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 600


def _write_idx(path, array: torch.Tensor, magic: int, compress: bool = False):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.to(torch.uint8).numpy().tobytes()
    with (gzip.open(path + ".gz", "wb") if compress else open(path, "wb")) as f:
        f.write(payload)


def _synthetic_mnist(root, n_train=300, n_test=100, compress=False):
    """A learnable fake MNIST: the label is drawn as a bright horizontal bar at row 2*label."""
    raw = os.path.join(root, "MNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = torch.randint(0, 10, (n,), generator=g)
        images = torch.randint(0, 60, (n, 28, 28), generator=g)
        for i, label in enumerate(labels.tolist()):
            images[i, 2 * label + 4, 4:24] = 255
        _write_idx(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), images, 0x803, compress)
        _write_idx(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), labels, 0x801, compress)
    return root


def _data_root(tmp_path):
    candidates = [os.environ.get("FASTNN_DATA"), os.path.join(REPO, "..", "shared", "data")]
    for root in candidates:
        if root and os.path.isdir(os.path.join(root, "MNIST", "raw")):
            return os.path.abspath(root)
    return _synthetic_mnist(str(tmp_path / "synthetic"))


def _run(args, tmp_path):
    env = dict(os.environ, FASTNN_CACHE=str(tmp_path / "cache"), PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_train_both_impls_and_checkpoint(tmp_path):
    ckpt, plot = tmp_path / "model.pt", tmp_path / "curves.png"
    # 300 samples at batch 64: four full batches and a short one of 44.
    out = _run(["fastnn.train", "--impl", "both", "--device", "cpu", "--epochs", "2",
                "--limit-train", "300", "--limit-test", "100", "--threads", "1",
                "--data", _data_root(tmp_path), "--save", str(ckpt), "--plot", str(plot),
                "--no-progress"], tmp_path)
    assert "[native] epoch 2/2" in out and "[fastnn] epoch 2/2" in out, out
    assert "speed-up vs native" in out, out
    assert plot.exists()

    model = load_checkpoint(str(ckpt), impl="native")
    assert model.hidden_sizes == (256, 128, 64)
    probs = predict(model, torch.rand(28, 28))
    assert probs.shape == (1, 10)
    torch.testing.assert_close(probs.sum(), torch.tensor(1.0))
    fast = load_checkpoint(str(ckpt), impl="fastnn")
    x = torch.randn(5, 784)
    torch.testing.assert_close(predict(fast, x), predict(model, x), rtol=1e-4, atol=1e-6)

    with pytest.raises(ValueError, match="hidden_sizes"):
        load_checkpoint(str(ckpt), model=Classifier(hidden_sizes=(128, 64), impl="native"))


def test_train_fused_ce_with_dropout(tmp_path):
    out = _run(["fastnn.train", "--impl", "fastnn", "--loss", "ce", "--dropout", "0.2",
                "--device", "cpu", "--epochs", "1", "--batch-size", "32", "--limit-train", "200",
                "--limit-test", "50", "--data", _data_root(tmp_path), "--no-progress"], tmp_path)
    assert "[fastnn] epoch 1/1" in out, out


def test_train_bf16_autocast(tmp_path):
    out = _run(["fastnn.train", "--impl", "both", "--bf16", "--device", "cpu", "--epochs", "1",
                "--limit-train", "200", "--limit-test", "50", "--threads", "1",
                "--data", _data_root(tmp_path), "--no-progress"], tmp_path)
    assert "autocast bfloat16" in out and "[fastnn] epoch 1/1" in out, out
    assert "speed-up vs native" in out, out


def test_state_dict_keys_match_between_impls():
    native, fast = Classifier(impl="native"), Classifier(impl="fastnn")
    assert list(native.state_dict()) == list(fast.state_dict())
    fast.load_state_dict(native.state_dict())


def test_read_only_root_is_mirrored(tmp_path, monkeypatch):
    root = _synthetic_mnist(str(tmp_path / "ro"), n_train=20, n_test=10, compress=True)
    raw = os.path.join(root, "MNIST", "raw")
    monkeypatch.setenv("FASTNN_CACHE", str(tmp_path / "cache"))
    os.chmod(raw, 0o555)
    try:
        # torchvision would check the MD5s of the real files: here only the mirroring.
        used = prepare_root(root, "MNIST")
        assert used == str(tmp_path / "cache" / "data")
        mirrored = os.path.join(used, "MNIST", "raw", "train-images-idx3-ubyte.gz")
        assert os.path.islink(mirrored)
        assert os.readlink(mirrored) == os.path.join(raw, "train-images-idx3-ubyte.gz")
        assert prepare_root(root, "MNIST") == used  # idempotent
    finally:
        os.chmod(raw, 0o755)


def test_concurrent_loads_of_one_root(tmp_path):
    """Processes that load the same writable root at once (parallel test workers, several
    training runs) each get whole files: fastnn extracts each .gz to a temporary file and
    renames it into place. Needs the real MNIST files (their MD5s are checked)."""
    src = os.path.join(_data_root(tmp_path), "MNIST", "raw")
    gz = sorted(f for f in os.listdir(src) if f.endswith(".gz")) if os.path.isdir(src) else []
    if len(gz) != 4:
        pytest.skip("needs the four MNIST .gz files ($FASTNN_DATA or ../shared/data)")
    raw = tmp_path / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in gz:
        shutil.copyfile(os.path.join(src, f), raw / f)
    code = ("import sys, torch; from fastnn.data import load_dataset; "
            "d = load_dataset('mnist', sys.argv[1]); "
            "print(d.train_x.shape[0], d.test_x.shape[0], int(d.train_y.sum()), float(d.test_x.sum()))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "root")], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=TIMEOUT) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    assert len({out for out, _ in outs}) == 1 and outs[0][0].startswith("60000 10000"), outs
    assert sorted(os.listdir(raw)) == sorted(gz + [f[:-3] for f in gz])  # no temporary left


def test_load_dataset_normalisation(tmp_path):
    root = _synthetic_mnist(str(tmp_path / "syn"), n_train=20, n_test=10)
    data = load_dataset("mnist", root, "cpu", limit_train=12)
    assert data.train_x.shape == (12, 784) and data.test_x.shape == (10, 784)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    assert data.train_x.min() >= -1.0 and data.train_x.max() == 1.0


def test_benchmarks_quick(tmp_path):
    out_dir = tmp_path / "bench"
    _run(["benchmarks.run", "--quick", "--device", "cpu", "--out", str(out_dir),
          "--threads", "1"], tmp_path)
    for name in ("cpu.json", "cpu.csv", "cpu.md"):
        assert (out_dir / name).exists(), name
    result = json.loads((out_dir / "cpu.json").read_text())
    assert result["machine"]["device"] == "cpu"
    errors = [(c["op"], c["mode"], r["error"]) for c in result["ops"]["cases"]
              for r in c["impls"].values() if "error" in r]
    errors += [(r["variant"], r["error"]) for r in result["step"]["rows"] if "error" in r]
    assert not errors, errors
    assert {r["variant"] for r in result["step"]["rows"]} >= {"native eager", "fastnn eager"}


def test_percall_benchmark_smoke(tmp_path):
    out = _run(["benchmarks.percall", "--number", "20", "--repeat", "1"], tmp_path)
    rows = [line.split() for line in out.splitlines() if "64x" in line]
    assert len(rows) == 10 and all(len(r) == 6 or len(r) == 7 for r in rows), out


def test_fuzz_ops_smoke():
    """A few seconds of scripts/fuzz_ops.py on the CPU (the same first seeds every run)."""
    proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "fuzz_ops.py"),
                           "--seconds", "3", "--seed", "0"],
                          capture_output=True, text=True, timeout=TIMEOUT, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " 0 with findings" in proc.stdout


def test_benchmark_kernel_time_table():
    """The CUDA-only device-time table renders from a result row (the measurement itself,
    common.kernel_time, needs a GPU and returns None on the CPU)."""
    from benchmarks.common import kernel_time
    from benchmarks.render import kernel_table
    assert kernel_time([lambda: None], "cpu") is None
    row = {"op": "linear", "shape": "64x784x256", "dtype": "float32", "mode": "fwd", "ratios": {},
           "impls": {"fastnn": {"kernel_s": 3.25e-6, "kernels_per_call": 1.0},
                     "native": {"kernel_s": 4.5e-6, "kernels_per_call": 2.0}}}
    lines = kernel_table([row, dict(row, op="relu", impls={"fastnn": {"median_s": 1e-5}})])
    assert "| linear | 64x784x256 | float32 | fwd | 3.25 (1) | 4.50 (2) |" in lines
    assert not any("| relu |" in line for line in lines)
    assert kernel_table([dict(row, impls={"fastnn": {"median_s": 1e-5}})]) == []
