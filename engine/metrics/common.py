"""Helpers shared by the metric modules (and reports built on them): the input error type, JSON-safe
result dataclasses, number formatting for tables and input checks."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from engine.errors import EngineError


class MetricInputError(EngineError, ValueError):
    """Inputs to a metric are inconsistent (lengths, shapes, labels, probabilities, non-binary masks).

    It is a ``ValueError`` because callers pass these arrays programmatically, and an
    :class:`~engine.errors.EngineError` so the CLI and Slicer modules show the message as is when the
    arrays came from user files (e.g. a label map with the wrong shape).
    """


def format_number(value: float | None, spec: str = ".3f") -> str:
    """A number for a Markdown table, or "n/a" where it is undefined (None, NaN, ±inf), for the same
    reason :func:`json_value` writes ``null``: an undefined metric must not read as a number."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return format(value, spec)


def json_value(value: Any) -> Any:
    """Convert NumPy scalars/arrays, tuples and nested dataclasses to plain JSON types; NaN/±inf → None.

    Non-finite numbers become ``null`` because strict JSON has no NaN/Infinity and an undefined metric
    (e.g. a distance to an empty mask) must not read as a number.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: json_value(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_value(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


class JsonResult:
    """Mixin for result dataclasses: ``to_dict()`` gives a JSON-serialisable dict (NaN → None)."""

    def to_dict(self) -> dict[str, Any]:
        return json_value(self)


def is_whole_number(value: Any) -> bool:
    """True for a real number with no fractional part (``3``, ``3.0``, ``np.int64(3)``); False for bools."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    return math.isfinite(float(value)) and float(value).is_integer()


def as_1d(values: Any, name: str, dtype: Any = np.float64) -> np.ndarray:
    """A 1-D array of finite values, or a clear error naming the argument."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise MetricInputError(f"{name} must be one-dimensional, got shape {arr.shape}.")
    try:
        arr = arr.astype(dtype)
    except (TypeError, ValueError):
        raise MetricInputError(f"{name} must be numeric.") from None
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        raise MetricInputError(f"{name} contains NaN or infinite values.")
    return arr


def check_same_length(**arrays: np.ndarray) -> int:
    """Common length of paired 1-D arrays, or an error listing every length."""
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise MetricInputError(f"Paired inputs must have the same length, got {lengths}.")
    return next(iter(lengths.values()))


def paired_values(a: Any, b: Any, what: str, minimum: int = 1,
                  names: tuple[str, str] = ("a", "b")) -> tuple[np.ndarray, np.ndarray, int]:
    """Two finite 1-D arrays of the same length ``n ≥ minimum`` for the paired statistic ``what``."""
    x, y = as_1d(a, names[0]), as_1d(b, names[1])
    n = check_same_length(**{names[0]: x, names[1]: y})
    if n < minimum:
        pairs = "one pair" if minimum == 1 else f"{minimum} pairs, got {n}"
        raise MetricInputError(f"{what} needs at least {pairs}.")
    return x, y, n


def as_binary(values: Any, name: str) -> np.ndarray:
    """A boolean array from bool/0-1 input; anything else is an error (no silent thresholding)."""
    arr = np.asarray(values)
    if arr.dtype == bool:
        return arr
    if not np.issubdtype(arr.dtype, np.number):
        raise MetricInputError(f"{name} must be boolean or 0/1 numeric, got dtype {arr.dtype}.")
    if arr.size and not np.all((arr == 0) | (arr == 1)):
        bad = np.unique(arr[(arr != 0) & (arr != 1)])[:5]
        raise MetricInputError(f"{name} must be binary (0/1); found other values such as {bad.tolist()}. "
                               "Threshold probabilities or select one label before computing the metric.")
    return arr.astype(bool)
