"""Sliding-window prediction (MONAI's inferer, gaussian blending) that survives running out of GPU
memory: it halves the windows per batch, then falls back to the CPU, and says so in ``warnings``."""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch
from monai.inferers import sliding_window_inference

from engine.errors import Cancelled

log = logging.getLogger(__name__)


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


class SlidingWindowPredictor:
    """Softmax probabilities of ``model`` over a whole (C, z, y, x) volume.

    ``warnings`` collects what the user should know (memory fallbacks); ``device`` may change to
    CPU after an out-of-memory error and stays there for later calls.
    """

    def __init__(self, patch_size: Sequence[int], device: torch.device, overlap: float = 0.5,
                 sw_batch_size: int = 2, mirror_axes: Sequence[int] = ()):
        self.patch_size = list(patch_size)
        self.device = device
        self.overlap = overlap
        self.sw_batch_size = sw_batch_size
        self.mirror_axes = tuple(mirror_axes)
        self.warnings: list[str] = []

    def _run(self, model: torch.nn.Module, x: torch.Tensor, cancel: Callable[[], bool] | None) -> torch.Tensor:
        def predictor(patch: torch.Tensor) -> torch.Tensor:
            if cancel is not None and cancel():
                raise Cancelled("cancelled during sliding-window prediction")
            logits = model(patch)
            probs = torch.softmax(logits.float(), dim=1)
            for axis in self.mirror_axes:  # optional test-time mirroring
                flipped = model(torch.flip(patch, dims=(axis + 2,)))
                probs = probs + torch.flip(torch.softmax(flipped.float(), dim=1), dims=(axis + 2,))
            return probs / (1 + len(self.mirror_axes))

        amp = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
            return sliding_window_inference(x.to(self.device), self.patch_size, self.sw_batch_size, predictor,
                                            overlap=self.overlap, mode="gaussian", sw_device=self.device,
                                            device=self.device, progress=False)

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, image, cancel: Callable[[], bool] | None = None) -> torch.Tensor:
        """``image``: (C, z, y, x) array or tensor → (classes, z, y, x) float32 probabilities on CPU."""
        x = torch.as_tensor(image, dtype=torch.float32)[None]
        model.eval()
        while True:
            try:
                model.to(self.device)
                return self._run(model, x, cancel)[0].float().cpu()
            except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
                if not _is_oom(exc) or self.device.type != "cuda":
                    raise
                torch.cuda.empty_cache()
                if self.sw_batch_size > 1:
                    self.sw_batch_size //= 2
                    msg = f"GPU out of memory: retrying with {self.sw_batch_size} window(s) per batch."
                else:
                    self.device = torch.device("cpu")
                    msg = "GPU out of memory even with one window per batch: continuing on the CPU (slower)."
                log.warning(msg)
                self.warnings.append(msg)
