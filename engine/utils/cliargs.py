"""``argparse`` types that range-check option values, so a bad value is refused before any work
starts with a message naming the expected range."""

from __future__ import annotations

import argparse
from typing import Callable


def int_at_least(least: int) -> Callable[[str], int]:
    """An integer type accepting values ≥ ``least``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value} is too small; it must be at least {least}")
        return value

    parse.__name__ = f"integer ≥ {least}"
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
    return value


def fold(text: str) -> str:
    """A cross-validation fold: a whole number ≥ 0, or 'all'."""
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a fold number (0, 1, ...) or 'all'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is not a fold number (0, 1, ...) or 'all'")
    return str(value)


def output_path(text: str) -> str:
    """An output path; an empty one would silently mean the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("the output path is empty; name a folder")
    return text
