"""Loads fastnn._C and checks that it matches the torch that is imported."""
import importlib

import torch

REBUILD = "rebuild it with `pip install --no-build-isolation -e .` (or `make build`) in the fastnn checkout"


def load_extension():
    try:
        ext = importlib.import_module("fastnn._C")
    except ModuleNotFoundError as e:
        if e.name != "fastnn._C":
            raise
        raise ImportError(f"fastnn's compiled extension fastnn._C is missing: {REBUILD}.") from e
    except ImportError as e:  # typically an undefined symbol from another torch's ABI
        raise ImportError(
            f"fastnn._C failed to load with torch {torch.__version__}: {e}\n"
            f"It was most likely built against a different torch; {REBUILD}.") from e
    if ext.TORCH_VERSION != torch.__version__:
        raise ImportError(
            f"fastnn._C was built against torch {ext.TORCH_VERSION}, but torch {torch.__version__} "
            f"is installed; {REBUILD}.")
    return ext
