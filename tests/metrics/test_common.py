import math

from engine.metrics.common import format_number


def test_format_number_writes_undefined_values_as_n_a():
    assert format_number(0.12345) == "0.123" and format_number(121.54, ".1f") == "121.5"
    assert format_number(1.19e-07, ".3g") == "1.19e-07"
    for undefined in (None, math.nan, math.inf, -math.inf):
        assert format_number(undefined) == "n/a"
