"""Device selection shared by training and inference."""

from __future__ import annotations

import logging

import torch

from engine.errors import EngineError

log = logging.getLogger(__name__)


def select_device(requested: str = "auto") -> torch.device:
    """``auto`` takes CUDA when available, else CPU; ``cuda`` without a GPU is a clear error."""
    requested = (requested or "auto").lower()
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise EngineError("A GPU was requested (--device cuda) but PyTorch sees no CUDA device; "
                              "use --device cpu or auto, or install a CUDA build of PyTorch.")
        return torch.device(requested)
    if requested == "cpu":
        return torch.device("cpu")
    raise EngineError(f"Unknown device '{requested}'; use auto, cpu or cuda.")


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{device.index or 0} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"
