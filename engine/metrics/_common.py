"""Former name of :mod:`engine.metrics.common`, kept only until the callers outside the metrics package
import from there; new code must not use it."""

from engine.metrics.common import (JsonResult, MetricInputError, as_1d, as_binary, check_same_length,  # noqa: F401
                                   format_number, is_whole_number, json_value)
