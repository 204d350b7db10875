"""Former name of :mod:`engine.metrics.common`, kept only until the callers outside the metrics package
import from there; new code must not use it."""

from engine.metrics.common import (  # noqa: F401
    JsonResult,
    MetricInputError,
    as_1d,
    as_binary,
    check_same_length,
    format_number,
    is_whole_number,
    json_value,
)
