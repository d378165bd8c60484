"""Output paths checked before the work that fills them (a result written after minutes of evaluation must not
fail on a typo in its path)."""
import os
from typing import Optional


def is_remote(path) -> bool:
    """Whether ``path`` names a location through a scheme mmengine's file backends resolve (``s3://``,
    ``open-mmlab://``, ``https://``, ...), which no local check can look at."""
    return '://' in str(path)


def unwritable_reason(path: str) -> Optional[str]:
    """Why a file cannot be written at ``path`` (None when it can).

    Probed the way the tools will write it: the parent folders are created and the file is opened for appending
    (nothing in an existing file changes); a file and folders that did not exist are removed again, so that a
    tool stopped by a later check leaves nothing behind.
    """
    if os.path.isdir(path):
        return 'it is a directory'
    existed = os.path.exists(path)
    parent = os.path.dirname(os.path.abspath(path))
    new_dirs = []  # the folders this probe creates, deepest first
    while not os.path.exists(parent):
        new_dirs.append(parent)
        parent = os.path.dirname(parent)
    try:
        make_parent_dir(path)
        open(path, 'ab').close()
    except OSError as e:
        return e.strerror or str(e)
    finally:
        if not existed and os.path.isfile(path):
            os.remove(path)
        for folder in new_dirs:
            if os.path.isdir(folder) and not os.listdir(folder):
                os.rmdir(folder)
    return None


def make_parent_dir(path: str) -> None:
    """Create the folders above an output file (after :func:`unwritable_reason` found it writable)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def uncreatable_dir_reason(path: str) -> Optional[str]:
    """Why a folder cannot be made at ``path`` (None when it exists or can be made), creating nothing: its nearest
    existing ancestor must be a writable folder."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return None if os.access(path, os.W_OK) else 'the folder is not writable'
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f'{parent} is a file'
    return None if os.access(parent, os.W_OK) else f'{parent} is not writable'


__all__ = ['is_remote', 'unwritable_reason', 'make_parent_dir', 'uncreatable_dir_reason']
