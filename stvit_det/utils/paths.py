"""Output paths checked before the work that fills them (a result written after minutes of evaluation must not
fail on a typo in its path, nor replace a file the tool read)."""
import contextlib
import os
import shutil
import tempfile
from typing import Iterator, List, Mapping, Optional


def is_remote(path) -> bool:
    """Whether ``path`` names a location through a scheme mmengine's file backends resolve (``s3://``,
    ``open-mmlab://``, ``https://``, ...), which no local check can look at."""
    return '://' in str(path)


#: schemes under which mmengine's checkpoint loader fetches a file from the internet (http(s) and its model zoos);
#: storage backends (``s3://``, ``petrel://``, ...) read a file the user keeps and stay allowed
DOWNLOAD_SCHEMES = ('http', 'https', 'open-mmlab', 'openmmlab', 'mmcls', 'torchvision', 'modelzoo')


def is_download_url(path) -> bool:
    """Whether ``path`` is a URL that mmengine would download (see :data:`DOWNLOAD_SCHEMES`)."""
    scheme, sep, _ = str(path).partition('://')
    return bool(sep) and scheme.lower() in DOWNLOAD_SCHEMES


def is_storage_path(path) -> bool:
    """Whether ``path`` names a file in a storage backend mmengine reads (``s3://``, ``petrel://``): allowed, and
    not checkable locally (a download URL is not one: it is refused)."""
    return is_remote(path) and not is_download_url(path)


def missing_file_error(what: str, path: str) -> Optional[str]:
    """``'{what} file not found: PATH'``, or ``'{what} PATH is a directory, not a file'`` (a folder given for a
    checkpoint is not a missing file), or that PATH is a download URL (nothing is downloaded at run time); None
    when ``path`` is a file, or in a storage backend (:func:`is_storage_path`: mmengine reads it)."""
    if os.path.isfile(os.path.expanduser(path)) or is_storage_path(path):  # '~': home, as mmengine's loader has it
        return None
    if is_download_url(path):
        return (f'{what} {path} is a download URL: files are read locally, never downloaded at run time; download '
                'it once and give its path')
    folder = os.path.isdir(os.path.expanduser(path))
    return f'{what} {path} is a directory, not a file' if folder else f'{what} file not found: {path}'


def read_image(path: str):
    """The (H, W, 3) uint8 BGR image at ``path`` as ``mmcv.imread`` reads it (grey and RGBA images get 3 channels).

    Raises:
        ValueError: ``cannot read image PATH`` with the reason: not found, a directory, an empty file (OpenCV
            asserts on it), not an image or truncated (where ``mmcv.imread`` returns None).
    """
    import cv2
    import mmcv

    from .errors import first_line

    missing = missing_file_error('image', path)
    if missing:
        raise ValueError(f'cannot read image {path}: {missing}')
    if not is_storage_path(path) and os.path.getsize(os.path.expanduser(path)) == 0:
        raise ValueError(f'cannot read image {path}: the file is empty')
    try:
        image = mmcv.imread(path if is_storage_path(path) else os.path.expanduser(path), channel_order='bgr')
    except (OSError, cv2.error) as e:
        raise ValueError(f'cannot read image {path}: {first_line(e)}') from None
    if image is None:
        raise ValueError(f'cannot read image {path} (not an image file?)')
    return image


def same_file(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` name one existing file, however spelt (relative, through a link, a hard link, with
    ``~`` for the home folder)."""
    try:
        return os.path.samefile(os.path.expanduser(a), os.path.expanduser(b))
    except (OSError, ValueError):  # either does not exist: nothing there to lose
        return False


def input_clash_reason(path: str, inputs: Optional[Mapping[str, Optional[str]]]) -> Optional[str]:
    """Why writing ``path`` would destroy one of the tool's ``inputs`` (``{'checkpoint': CKPT, ...}``: what each
    is -> its path; None values skipped), or None: an output is never allowed to replace what the tool reads."""
    for what, source in (inputs or {}).items():
        if source and not is_remote(source) and same_file(path, source):
            return f'it is the same file as the {what} {source}'
    return None


def missing_folders(folder: str) -> List[str]:
    """The folders of ``folder``'s chain that do not exist yet, deepest first (``[]`` when it exists): the parent of
    the last one is the nearest existing ancestor."""
    missing = []
    folder = os.path.abspath(folder)
    while not os.path.exists(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    return missing


def nearest_existing(folder: str, missing: List[str]) -> str:
    """The nearest existing ancestor of ``folder`` (itself when it exists), given its :func:`missing_folders`; it
    may be a file, where a folder of the chain must be."""
    return os.path.dirname(missing[-1]) if missing else os.path.abspath(folder)


def unwritable_reason(path: str, inputs: Optional[Mapping[str, Optional[str]]] = None) -> Optional[str]:
    """Why a file cannot be written at ``path`` (None when it can), or why it must not be: it is the same file as
    one of the tool's ``inputs`` (see :func:`input_clash_reason`).

    Probed the way the tools will write it: the parent folders are created and the file is opened for appending
    (nothing in an existing file changes, and a link is written through); a file and folders that did not exist are
    removed again, so that a tool stopped by a later check leaves nothing behind.
    """
    clash = input_clash_reason(path, inputs)
    if clash:
        return clash
    if os.path.isdir(path):
        return 'it is a directory'
    existed = os.path.exists(path)
    parent = os.path.dirname(os.path.abspath(path))
    new_dirs = missing_folders(parent)  # what the probe creates, deepest first
    nearest = nearest_existing(parent, new_dirs)
    if not os.path.isdir(nearest):  # a file where a folder of the path must be
        return f'{nearest} is a file'
    try:
        make_parent_dir(path)
        open(path, 'ab').close()
    except OSError as e:
        return e.strerror or str(e)
    finally:  # another rank's probe may have removed (or filled) them already: leave those
        if not existed:  # the file the probe made: for a link to a file not yet there, its target (the link stays)
            with contextlib.suppress(OSError):
                os.remove(os.path.realpath(path))
        remove_new_folders(new_dirs)
    return None


def remove_new_folders(folders: List[str]) -> None:
    """Remove the folders :func:`missing_folders` listed before a write that failed, deepest first, where they are
    still empty (another process may have filled them meanwhile: those stay)."""
    for folder in folders:
        with contextlib.suppress(OSError):
            os.rmdir(folder)


def make_parent_dir(path: str) -> None:
    """Create the folders above an output file (after :func:`unwritable_reason` found it writable)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def uncreatable_dir_reason(path: str) -> Optional[str]:
    """Why a folder cannot be made at ``path``, or nothing written into it (None when it can).

    Probed by doing it in the nearest existing folder of ``path`` (itself when it exists): a uniquely named file is
    made and removed there (``os.access`` says yes to root for any folder, ``/proc`` too). Nothing else is created,
    so the processes of one distributed run can probe the same work dir at once.
    """
    existing = nearest_existing(path, missing_folders(path))
    if not os.path.isdir(existing):
        return f'{existing} is a file'
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix='.write_probe_')
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        return f'no file can be made in {existing}: {e.strerror or e}'
    return None


def _new_file_mode(path: str) -> int:
    """The permission bits ``open(path, 'w')`` would leave: those of the file it replaces, else 0o666 less umask."""
    if os.path.isfile(path):
        return os.stat(path).st_mode & 0o7777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """Yield a temporary file name in ``path``'s folder to write to; it replaces ``path`` (``os.replace``) when the
    block ends, and is removed when the block raises: an interrupted write (a full disk, Ctrl-C) leaves an existing
    ``path`` as it was instead of truncated. A link is followed: its target is replaced, as a plain write would."""
    path = os.path.realpath(path)
    new_dirs = missing_folders(os.path.dirname(path))
    make_parent_dir(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=f'.{os.path.basename(path)}.',
                               suffix='.part')
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _new_file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        remove_new_folders(new_dirs)  # the folders made for the output, where still empty
        raise


def write_error(path: str, exc: BaseException) -> str:
    """Why writing ``path`` failed, in words: the OS's reason (``No space left on device``), or, for a library's
    own words without one (``torch.save`` on a full disk: ``[enforce fail at inline_container.cc:672] . unexpected
    pos ...``), its first line and the free space of the file system."""
    reason = getattr(exc, 'strerror', None)
    if reason:
        return reason
    text = str(exc).strip()
    reason = text.splitlines()[0] if text else type(exc).__name__
    try:
        folder = os.path.dirname(os.path.abspath(path))
        free = shutil.disk_usage(nearest_existing(folder, missing_folders(folder))).free
    except OSError:
        return reason
    return f'{reason} ({free / 2**20:.1f} MiB free on its file system: is the disk full?)'


__all__ = ['is_remote', 'is_storage_path', 'missing_file_error', 'same_file', 'input_clash_reason', 'unwritable_reason',
           'make_parent_dir', 'uncreatable_dir_reason', 'atomic_output', 'missing_folders', 'remove_new_folders',
           'write_error']
