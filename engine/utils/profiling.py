"""What a run cost: peak memory of the process (and of the GPU), and the per-step table
``engine run --profile`` prints from a report's ``timings_s``."""

from __future__ import annotations

import resource
import sys
from collections.abc import Mapping
from typing import Any


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory of this process so far (MB) and, when CUDA was used, the GPU's peak
    allocation (MB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = {"process_peak_rss_mb": round(rss / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)}
    torch = sys.modules.get("torch")  # never import torch just to ask
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        peak["gpu_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peak


def format_profile(report: Mapping[str, Any]) -> str:
    """The steps of a Segment & Stage report with their share of the total, then peak memory."""
    timings = dict(report.get("timings_s") or {})
    total = float(timings.pop("total", 0.0)) or sum(timings.values())
    width = max((len(k) for k in timings), default=5)
    lines = [f"{'step':<{width}}  seconds  share"]
    for name, seconds in timings.items():
        lines.append(f"{name:<{width}}  {seconds:7.2f}  {100 * seconds / total if total else 0:4.0f} %")
    lines.append(f"{'total':<{width}}  {total:7.2f}")
    for key, value in (report.get("memory") or peak_memory_mb()).items():
        lines.append(f"{key.replace('_', ' ')}: {value:.0f}")
    return "\n".join(lines)
