"""Predicates for configuration values (``bool`` is an ``int`` to Python, but never meant as a number here), and
the argparse types of the tools' counts."""
import argparse
import math
from typing import Any


def is_finite_number(value: Any) -> bool:
    """An ``int`` or ``float`` that is finite (not a bool, NaN or infinity)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_count(value: Any) -> bool:
    """A positive ``int`` (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def positive_int(text: str) -> int:
    """argparse ``type`` of a count (threads, repeats, batch, a size): a positive integer."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive integer")
    return value


def non_negative_int(text: str) -> int:
    """argparse ``type`` of a count that may be 0 (warm-up calls)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer >= 0")
    return value


__all__ = ['is_finite_number', 'is_count', 'positive_int', 'non_negative_int']
