"""Predicates for configuration values (``bool`` is an ``int`` to Python, but never meant as a number here), the
two readings of a config every check shares (a ``type``'s name, the model under a TTA wrapper), and the argparse
types of the tools' counts."""
import argparse
import math
import os
import sys
from typing import Any, Mapping


def is_finite_number(value: Any) -> bool:
    """An ``int`` or ``float`` that is finite (not a bool, NaN or infinity)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_int(value: Any) -> bool:
    """An ``int`` that is not a bool (``True in range(4)`` holds, and ``(0, 1.0)`` compares equal to ``(0, 1)``)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_count(value: Any) -> bool:
    """A positive ``int`` (not a bool)."""
    return is_int(value) and value >= 1


def is_sequence(value: Any, length: int) -> bool:
    """A list or tuple of ``length`` entries (a config's ``regions=14`` or ``depths='2262'`` is not)."""
    return isinstance(value, (list, tuple)) and len(value) == length


def type_name(kind: Any) -> str:
    """The bare class name of a config's ``type``: ``'STViTR'``, ``'mmdet.STViTR'`` and, in a pure-Python config,
    the class itself all give ``'STViTR'``."""
    return getattr(kind, '__name__', str(kind)).split('.')[-1]


def model_config(cfg: Mapping) -> Mapping:
    """``cfg.model``, or the model under the TTA wrapper where ``tools/test.py --tta`` put it
    (``dict(type=<tta model>, module=<model>)``); ``{}`` where there is none."""
    model = cfg.get('model') or {}
    while isinstance(model, Mapping) and 'backbone' not in model and isinstance(model.get('module'), Mapping):
        model = model['module']
    return model if isinstance(model, Mapping) else {}


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


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def warn_oversubscribed(threads: int) -> bool:
    """Say on stderr when a timing tool runs more threads than there are CPUs: they then wait for each other and
    the times measure the oversubscription, not the model. Returns whether it warned."""
    cpus = available_cpus()
    if threads <= cpus:
        return False
    print(f'warning: {threads} threads on {cpus} CPUs: the threads take turns, so the times measure that; '
          f'--threads {cpus} or fewer', file=sys.stderr)
    return True


def _float_in(low: float, high: float, low_open: bool, what: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and (value > low if low_open else value >= low) and value <= high):
            raise argparse.ArgumentTypeError(f"'{text}' is not {what}")
        return value
    return parse


#: argparse ``type`` of a tolerance: a finite number > 0
positive_float = _float_in(0.0, math.inf, True, 'a positive number')
#: argparse ``type`` of a score threshold: a number in [0, 1]
unit_float = _float_in(0.0, 1.0, False, 'a number in [0, 1]')


__all__ = ['is_finite_number', 'is_int', 'is_count', 'is_sequence', 'positive_int', 'non_negative_int',
           'positive_float', 'unit_float', 'available_cpus', 'warn_oversubscribed']
