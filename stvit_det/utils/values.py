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


def _int_at_least(minimum: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"'{text}' is not {what}")
        return value
    return parse


#: argparse ``type`` of a count (threads, repeats, batch, a size): a positive integer
positive_int = _int_at_least(1, 'a positive integer')
#: argparse ``type`` of a count that may be 0 (warm-up calls)
non_negative_int = _int_at_least(0, 'an integer >= 0')


__all__ = ['is_finite_number', 'is_count', 'positive_int', 'non_negative_int']
