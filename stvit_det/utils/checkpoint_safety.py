"""Let ``torch.load(weights_only=True)`` (the default since PyTorch 2.6) read checkpoints written by mmengine and the
training checkpoints of the official STViT-R / Swin code.

mmengine 0.10.7 calls ``torch.load`` without ``weights_only``, and its Runner checkpoints hold, besides tensors, the
``message_hub`` state: :class:`mmengine.logging.HistoryBuffer` objects whose history is stored as numpy arrays and
whose ``_statistics_methods`` dict maps names to ``HistoryBuffer`` methods, pickled as
``getattr(HistoryBuffer, 'min')``. Found by saving a Runner checkpoint and listing its globals with
``torch.serialization.get_unsafe_globals_in_checkpoint``.

:func:`allow_checkpoint_globals` allow-lists exactly those globals with ``torch.serialization.add_safe_globals``.
``weights_only`` stays on: ``builtins.getattr`` is NOT allow-listed; a restricted stand-in registered under that name
only resolves registered ``HistoryBuffer`` statistics methods and rejects every other attribute lookup.

The official ImageNet training code (Swin's ``utils.save_checkpoint``, which changsn/STViT-R keeps) saves, beside
``model``, its ``optimizer``, ``lr_scheduler`` and ``amp`` states (plain containers) and the whole training ``config``,
a yacs ``CfgNode`` (a ``dict`` subclass whose ``__dict__`` holds its frozen flag and key sets). yacs need not be
installed to read the weights: a stand-in registered under ``yacs.config.CfgNode`` rebuilds every node as a plain
``OrderedDict`` (the pickled items and attributes are restored on it, nothing of yacs runs).
"""
import pickle
from collections import OrderedDict
from typing import Any, Callable, List, Tuple, Union

import numpy as np

SafeGlobal = Union[Callable, Tuple[Callable, str]]
NUMERIC_DTYPES = (np.float64, np.int64, np.float16, np.float32, np.int8, np.int16, np.int32, np.uint8, np.uint16,
                  np.uint32, np.uint64, np.bool_)
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
        # numpy.dtypes.Float64DType (HistoryBuffer._log_history), Int64DType (_count_history), and the other
        # numeric and bool dtypes, which a hook's logged value or a user's meta entry may carry (np.float32(0.5)):
        # plain value types, nothing in them runs
        *(type(np.dtype(t)) for t in NUMERIC_DTYPES),
    ]


class ConfigNodeAsDict:
    """Unpickled in place of a yacs ``CfgNode``: creating one gives a plain ``OrderedDict``, which the weights-only
    unpickler then fills with the node's items and attributes."""

    def __new__(cls, *args) -> OrderedDict:
        return OrderedDict()


def training_config_globals() -> List[SafeGlobal]:
    """Stand-ins for the configuration objects that official training checkpoints store beside the weights."""
    return [(ConfigNodeAsDict, 'yacs.config.CfgNode')]


def allow_checkpoint_globals() -> None:
    """Allow-list (process-wide, idempotent) the globals of mmengine checkpoints and the stand-ins of
    :func:`training_config_globals` for ``weights_only`` loading."""
    import torch

    torch.serialization.add_safe_globals(mmengine_checkpoint_globals() + training_config_globals())
