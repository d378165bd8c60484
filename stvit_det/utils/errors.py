"""One-line error messages of the tools."""
import os
import sys
import traceback


def raised_at(exc: BaseException) -> str:
    """``file:line`` of the frame that raised ``exc`` ('' when it carries no traceback), the file shortened to its
    import path (``mmdet/models/necks/fpn.py:171``): all a bare ``assert`` in a library tells."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ''
    path = os.path.abspath(frames[-1].filename)
    roots = [os.path.join(os.path.abspath(p), '') for p in sys.path if p]
    root = max((r for r in roots if path.startswith(r)), key=len, default='')
    return f'{path[len(root):]}:{frames[-1].lineno}'


def _message(exc: BaseException) -> str:
    """``str(exc)`` stripped; a KeyError's one string argument as it is (``str`` would quote it)."""
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        return exc.args[0].strip()
    return str(exc).strip()


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message: what a tool's one-line ``error:`` quotes of an error raised by a
    library (a config merge, a model build, a forward). An empty message (a bare ``assert``) gives the type and where
    it was raised instead, e.g. ``AssertionError (raised at mmdet/models/necks/fpn.py:171)``. A ``KeyError``'s
    message is given without the quotes ``str`` adds (mmengine's registry misses are KeyErrors)."""
    text = _message(exc)
    if text:
        return text.splitlines()[0]
    where = raised_at(exc)
    return f'{type(exc).__name__} (raised at {where})' if where else type(exc).__name__


def error_summary(exc: BaseException) -> str:
    """``Type: first line`` of an exception; for an empty message :func:`first_line`'s type and place."""
    text = _message(exc)
    return f'{type(exc).__name__}: {text.splitlines()[0]}' if text else first_line(exc)


#: what PyTorch's and NumPy's allocators say when a tensor does not fit (CPU and CUDA) or its byte count overflows
#: (a tensor too large to be addressed: no memory holds it either)
_OUT_OF_MEMORY = ("can't allocate memory", 'out of memory', 'storage size calculation overflowed',
                  'unable to allocate')


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation that failed (``MemoryError``, ``torch.OutOfMemoryError``, PyTorch's
    ``RuntimeError: DefaultCPUAllocator: can't allocate memory``, a size that overflows), so that a tool can blame
    the input size instead of the operator that happened to allocate."""
    if isinstance(exc, MemoryError):  # also NumPy's _ArrayMemoryError
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OUT_OF_MEMORY)


__all__ = ['first_line', 'error_summary', 'raised_at', 'is_out_of_memory']
