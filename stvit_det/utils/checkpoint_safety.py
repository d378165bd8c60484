"""Let ``torch.load(weights_only=True)`` (the default since PyTorch 2.6) read checkpoints written by mmengine.

mmengine 0.10.7 calls ``torch.load`` without ``weights_only``, and its Runner checkpoints hold, besides tensors, the
``message_hub`` state: :class:`mmengine.logging.HistoryBuffer` objects whose history is stored as numpy arrays and
whose ``_statistics_methods`` dict maps names to ``HistoryBuffer`` methods, pickled as
``getattr(HistoryBuffer, 'min')``. Found by saving a Runner checkpoint and listing its globals with
``torch.serialization.get_unsafe_globals_in_checkpoint``.

:func:`allow_mmengine_checkpoints` allow-lists exactly those globals with ``torch.serialization.add_safe_globals``.
``weights_only`` stays on: ``builtins.getattr`` is NOT allow-listed; a restricted stand-in registered under that name
only resolves registered ``HistoryBuffer`` statistics methods and rejects every other attribute lookup.
"""
import pickle
from typing import Any, Callable, List, Tuple, Union

import numpy as np

SafeGlobal = Union[Callable, Tuple[Callable, str]]
# HistoryBuffer.__init__ registers these; custom ones come from HistoryBuffer.register_statistics
BUILTIN_STATISTICS = ('current', 'max', 'mean', 'min')


def _history_buffer_getattr(obj: Any, name: str) -> Any:
    """``getattr`` restricted to ``HistoryBuffer.<registered statistics method>``; anything else is refused."""
    from mmengine.logging import HistoryBuffer

    allowed = set(BUILTIN_STATISTICS) | set(HistoryBuffer._statistics_methods)
    if obj is HistoryBuffer and name in allowed:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(f'weights_only load: refusing getattr({obj!r}, {name!r}); stvit_det allow-lists '
                                 f'only the HistoryBuffer statistics methods {sorted(allowed)}')


def mmengine_checkpoint_globals() -> List[SafeGlobal]:
    """The globals (objects, or (object, pickled full name) pairs) that mmengine Runner checkpoints reference."""
    from mmengine.logging import HistoryBuffer
    from numpy.core import multiarray  # numpy < 2 (requirements/constraints.txt)

    return [
        HistoryBuffer,
        (_history_buffer_getattr, 'builtins.getattr'),  # HistoryBuffer._statistics_methods values
        (multiarray._reconstruct, 'numpy.core.multiarray._reconstruct'),  # numpy arrays: history, counts
        (multiarray.scalar, 'numpy.core.multiarray.scalar'),  # numpy scalars
        np.ndarray,
        np.dtype,
        type(np.dtype(np.float64)),  # numpy.dtypes.Float64DType: HistoryBuffer._log_history
        type(np.dtype(np.int64)),  # numpy.dtypes.Int64DType: HistoryBuffer._count_history
    ]


def allow_mmengine_checkpoints() -> None:
    """Allow-list (process-wide, idempotent) the globals of mmengine checkpoints for ``weights_only`` loading."""
    import torch

    torch.serialization.add_safe_globals(mmengine_checkpoint_globals())
