"""MNIST / Fashion-MNIST as whole tensors on the training device.

The datasets are read with torchvision (``torchvision.datasets.MNIST`` /
``FashionMNIST``: torchvision's MD5 checksums, ``download=True`` so an online machine
fetches them), converted ONCE to tensors on the target device, and batches are then
drawn by index from a seeded permutation per epoch: no per-sample DataLoader.

Where the data lives (first match wins):

1. ``root`` argument (``--data`` on the command line),
2. the ``FASTNN_DATA`` environment variable,
3. ``<cache>/data`` with ``<cache>`` = ``$FASTNN_CACHE``, else ``$XDG_CACHE_HOME/fastnn``,
   else ``~/.cache/fastnn``.

The root uses torchvision's layout: ``ROOT/MNIST/raw/*-ubyte.gz`` and
``ROOT/FashionMNIST/raw/*-ubyte.gz``. torchvision extracts the ``.gz`` files next to
themselves, which fails on a read-only root (a shared data folder): in that case a
writable mirror ``<cache>/data/<Name>/raw`` is built with symlinks to the ``.gz``
files, and torchvision extracts there instead.

fastnn extracts the ``.gz`` files itself before torchvision looks (after checking
torchvision's MD5), each to a temporary file renamed into place, so processes that load
the same root at once (parallel test workers, several training runs) do not read a
half-written file. (A first download, which torchvision does, is not protected so.)
"""
import gzip
import os
import shutil
import stat
import uuid
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from torch import Tensor

__all__ = ["DATASETS", "Data", "DataError", "cache_dir", "resolve_root", "prepare_root",
           "load_dataset", "epoch_batches"]

#: --dataset name -> torchvision class name (also the folder name under the root).
DATASETS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}

_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
          "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class DataError(RuntimeError):
    """The dataset is missing and could not be downloaded, or the root is unusable."""


@dataclass
class Data:
    """A dataset held as dense tensors on one device.

    train_x: (N_train, 784) float32, normalised to [-1, 1] as (x/255 - 0.5)/0.5
    train_y: (N_train,) int64 class indices in [0, 10)
    test_x:  (N_test, 784) float32
    test_y:  (N_test,) int64
    """
    name: str
    root: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor

    @property
    def num_classes(self) -> int:
        return 10


def cache_dir() -> str:
    """fastnn's writable cache folder ($FASTNN_CACHE, else $XDG_CACHE_HOME/fastnn, else ~/.cache/fastnn)."""
    if os.environ.get("FASTNN_CACHE"):
        return os.path.abspath(os.path.expanduser(os.environ["FASTNN_CACHE"]))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastnn")


def resolve_root(root: Optional[str] = None) -> str:
    """The data root: ``root``, else $FASTNN_DATA, else <cache>/data."""
    root = root or os.environ.get("FASTNN_DATA") or os.path.join(cache_dir(), "data")
    return os.path.abspath(os.path.expanduser(root))


def _writable(path: str) -> bool:
    """Whether files can be created in ``path`` (or, if it does not exist yet, in its
    nearest existing parent). Also honours permission bits when running as root, for
    whom os.access ignores them: a folder marked read-only is treated as read-only."""
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent
    try:
        mode = os.stat(path).st_mode
        readonly_fs = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
    return (os.access(path, os.W_OK) and not readonly_fs
            and bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)))


def _extracted(raw: str) -> bool:
    return all(os.path.isfile(os.path.join(raw, f)) for f in _FILES)


def prepare_root(root: str, name: str) -> str:
    """Return the root to hand to torchvision for dataset folder ``name`` ("MNIST" or
    "FashionMNIST") under ``root``.

    ``root`` itself when its raw files are already extracted or it is writable;
    otherwise a writable mirror under <cache>/data whose ``<name>/raw`` holds symlinks
    to the read-only ``.gz`` files (torchvision verifies their MD5 and extracts there).
    """
    raw = os.path.join(root, name, "raw")
    if _extracted(raw):
        return root
    if _writable(raw):
        _extract(raw, raw, name)
        return root
    mirror_root = os.path.join(cache_dir(), "data")
    if os.path.abspath(mirror_root) == os.path.abspath(root):
        raise DataError(f"the data folder {root} is read-only and is fastnn's own cache; "
                        f"set FASTNN_CACHE to a writable folder.")
    mirror_raw = os.path.join(mirror_root, name, "raw")
    try:
        os.makedirs(mirror_raw, exist_ok=True)
    except OSError as e:
        raise DataError(f"{raw} is read-only and the cache folder {mirror_raw} cannot be created "
                        f"({e}); set FASTNN_CACHE to a writable folder.") from e
    if os.path.isdir(raw):
        for f in sorted(os.listdir(raw)):
            src, dst = os.path.join(raw, f), os.path.join(mirror_raw, f)
            if os.path.lexists(dst):
                if os.path.islink(dst) and os.readlink(dst) == src:
                    continue
                if not os.path.islink(dst):
                    continue  # a real file already there (an extracted or downloaded copy)
                try:
                    os.remove(dst)  # a stale link, e.g. to an older root
                except FileNotFoundError:
                    pass  # another process removed it first
            try:
                os.symlink(src, dst)
            except FileExistsError:
                pass  # another process linked it first
    _extract(mirror_raw, mirror_raw, name)
    return mirror_root


def _extract(src_dir: str, dst_dir: str, name: str) -> None:
    """Decompress each of dataset ``name``'s ``.gz`` files in ``src_dir`` whose checksum
    matches torchvision's into ``dst_dir``, atomically (a temporary file in ``dst_dir``,
    then a rename). Best effort: files already there, missing or corrupt, and files that
    cannot be written (a full disk, say) are left for torchvision, which downloads,
    extracts or reports them."""
    import torchvision
    from torchvision.datasets.utils import check_integrity

    for gz_name, md5 in getattr(torchvision.datasets, name).resources:
        dst = os.path.join(dst_dir, gz_name[:-len(".gz")])
        gz = os.path.join(src_dir, gz_name)
        if os.path.isfile(dst) or not check_integrity(gz, md5):
            continue
        tmp = f"{dst}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with open(tmp, "xb") as out, gzip.open(gz, "rb") as src:
                shutil.copyfileobj(src, out)
            os.replace(tmp, dst)
        except BaseException as e:
            if os.path.exists(tmp):
                os.unlink(tmp)
            if not isinstance(e, OSError):  # an OSError leaves the file to torchvision
                raise


def _missing_message(dataset: str, root: str, name: str, err: Exception) -> str:
    files = "\n".join(f"    {os.path.join(root, name, 'raw', f)}.gz" for f in _FILES)
    reason = " ".join(line.strip() for line in str(err).strip().splitlines()[:3])
    return (f"could not load {dataset} ({err.__class__.__name__}: {reason}).\n"
            f"fastnn looked in {root} (torchvision layout) and could not download it.\n"
            f"Put the four original IDX files here:\n{files}\n"
            f"or point --data / the FASTNN_DATA environment variable at a folder that holds "
            f"{name}/raw/*-ubyte.gz (for example ../shared/data).")


def _load_split(dataset: str, root: str, train: bool):
    import torchvision  # imported lazily: only the training script needs it

    name = DATASETS[dataset]
    cls = getattr(torchvision.datasets, name)
    tv_root = prepare_root(root, name)
    try:
        ds = cls(root=tv_root, train=train, download=True)
    except Exception as e:  # URLError, RuntimeError("Error downloading ..."), OSError
        raise DataError(_missing_message(dataset, root, name, e)) from e
    return ds.data, ds.targets


def _to_device(images: Tensor, labels: Tensor, device: torch.device, limit: Optional[int]):
    """uint8 (N, 28, 28) -> float32 (N, 784) in [-1, 1] on ``device``; labels -> int64."""
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    # Move the compact uint8 data, then convert on the device.
    x = images.to(device).reshape(images.shape[0], -1).to(torch.float32)
    x = x.div_(255.0).sub_(0.5).div_(0.5)
    return x.contiguous(), labels.to(device=device, dtype=torch.int64)


def load_dataset(dataset: str = "mnist", root: Optional[str] = None, device="cpu",
                 limit_train: Optional[int] = None, limit_test: Optional[int] = None) -> Data:
    """Load ``dataset`` ("mnist" or "fashion-mnist") onto ``device`` as a :class:`Data`.

    ``limit_train`` / ``limit_test`` keep only the first N samples of each split.
    Raises DataError with instructions when the files are missing and cannot be fetched.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(DATASETS)}")
    root = resolve_root(root)
    device = torch.device(device)
    train_x, train_y = _to_device(*_load_split(dataset, root, True), device, limit_train)
    test_x, test_y = _to_device(*_load_split(dataset, root, False), device, limit_test)
    return Data(dataset, root, train_x, train_y, test_x, test_y)


def epoch_batches(n: int, batch_size: int, generator: torch.Generator,
                  device="cpu") -> Iterator[Tensor]:
    """Yield index tensors (int64, on ``device``) covering range(n) in a random order.

    One permutation per call, drawn from ``generator`` (a CPU generator: the same seed
    gives the same order on every device), cut into batches of ``batch_size``; the last
    batch holds the remaining n % batch_size indices when that is not 0.
    """
    perm = torch.randperm(n, generator=generator).to(device)
    for start in range(0, n, batch_size):
        yield perm[start:start + batch_size]
