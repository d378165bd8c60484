"""Predicates for configuration values (``bool`` is an ``int`` to Python, but never meant as a number here)."""
import math
from typing import Any


def is_finite_number(value: Any) -> bool:
    """An ``int`` or ``float`` that is finite (not a bool, NaN or infinity)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_count(value: Any) -> bool:
    """A positive ``int`` (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


__all__ = ['is_finite_number', 'is_count']
