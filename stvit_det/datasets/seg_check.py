"""Early, readable checks of the semantic-segmentation datasets a config points at (MMSegmentation 1.x).

Without them a bad label map surfaces in the middle of training or evaluation, far from its cause: a class index
outside ``[0, num_classes)`` makes the cross-entropy fail ("Target 150 is out of bounds" on CPU, a device-side
assert on GPU) at the first batch that draws it; a label map whose size differs from its image is cropped wrongly
without any error, or breaks ``IoUMetric`` at evaluation; a 16-bit label above 255 is silently wrapped by mmseg's
``astype(np.uint8)`` (``LoadAnnotations._load_seg_map``); a missing file stops the run when a worker first reads it.

:func:`check_seg_dataset_cfgs` builds each dataset of the config exactly as the Runner would (mmseg's registry, so
``ann_file`` split lists, suffixes, ``reduce_zero_label`` and class subsets are resolved by mmseg itself), then
reads every label map and the header of every image. The tools call it after loading the config and before
building the Runner, and turn a :class:`SegDatasetError` into a one-line exit message that names the file.

Reading every label map costs about 9 ms a sample on one core (ADE20K's 20k training maps: about 3 minutes), so
samples that passed are remembered in a small JSON file per dataset setting (:func:`check_cache_dir`), keyed by
the path, size and modification time of the label map and its image, as ``make`` or ``rsync`` decide what
changed: a later launch (another run, ``tools/test.py``, each DDP rank after the first launch) re-reads only new
or changed files. A failing sample is never remembered.

Values are checked as mmseg's ``LoadAnnotations`` delivers them to the loss: the raw map (any bit depth; values
above 255 are reported, mmseg would wrap them), then ``reduce_zero_label`` (0 -> 255, v -> v - 1) and the dataset's
``label_map``; the result must lie in ``[0, num_classes)`` or equal the decode head's ``ignore_index``.
"""
import hashlib
import json
import os
import os.path as osp
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..utils.errors import error_summary
from ..utils.paths import atomic_output
from ..utils.values import model_config
from .coco_check import DatasetCheckError, iter_leaf_datasets
from .pipelines import find_step, image_decoding

#: changes whenever what a sample check accepts changes, so that older cache files are not trusted
CHECK_VERSION = 1
EXIF_ORIENTATION = 0x0112
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


class SegDatasetError(DatasetCheckError):
    """A segmentation dataset has a missing or malformed image or label map; the message names the file."""


def image_size(path: str, backend: str = 'cv2', color_type: str = 'color') -> Tuple[int, int]:
    """(H, W) of an image as mmcv's ``LoadImageFromFile(imdecode_backend=backend, color_type=color_type)`` will
    decode it, read from the file header only: cv2 and pillow apply a JPEG's EXIF orientation for ``'color'`` and
    ``'grayscale'`` (not for ``'unchanged'``), turbojpeg never; tifffile gives the stored array, whose first two
    dimensions are the size (a multi-band image is H x W x bands). Other formats with a turning EXIF orientation
    (decoders differ: Pillow turns a TIFF's size itself, cv2 ignores a WebP's), and images over PIL's pixel limit,
    are decoded whole.

    Raises:
        SegDatasetError: when the file is not a readable image.
    """
    if backend == 'tifffile':
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                shape = tif.series[0].shape
        except Exception as e:  # noqa: BLE001  (any decoder error: the file is unusable either way)
            raise SegDatasetError(f'image file cannot be read: {path} ({type(e).__name__}: {e})') from None
        return tuple(shape[:2]) if len(shape) >= 2 else (shape[0], 1)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            w, h = img.size
            kind = img.format
            orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    except Image.DecompressionBombError:  # over PIL's pixel limit (a whole-slide or aerial image): cv2 reads it
        return _decoded_size(path, backend, color_type)
    except (UnidentifiedImageError, OSError) as e:
        raise SegDatasetError(f'image file cannot be read: {path} ({e})') from None
    if orientation in TRANSPOSING_ORIENTATIONS and kind != 'JPEG':
        return _decoded_size(path, backend, color_type)  # whether a decoder turns TIFF, WebP, PNG varies: decode
    rotated = backend in ('cv2', 'pillow') and color_type in ('color', 'grayscale')
    return (w, h) if rotated and orientation in TRANSPOSING_ORIENTATIONS else (h, w)


def _decoded_size(path: str, backend: str, color_type: str) -> Tuple[int, int]:
    """(H, W) of the image decoded whole, as mmcv's ``LoadImageFromFile`` decodes it (for the rare files whose size
    the header does not settle)."""
    import mmcv

    try:
        with open(path, 'rb') as f:
            img = mmcv.imfrombytes(f.read(), flag=color_type, backend=backend)
    except Exception as e:  # noqa: BLE001  (any decoder error: the file is unusable either way)
        raise SegDatasetError(f'image file cannot be read: {path} ({type(e).__name__}: {e})') from None
    if img is None:
        raise SegDatasetError(f'image file cannot be read: {path} (not an image)')
    return tuple(img.shape[:2])


def read_label_map(path: str, backend: str = 'pillow') -> np.ndarray:
    """The raw label map as mmseg's ``LoadAnnotations`` decodes it (``flag='unchanged'``, squeezed), before its
    ``uint8`` cast.

    Raises:
        SegDatasetError: when the file is not a readable image or not single-channel.
    """
    import mmcv

    try:
        with open(path, 'rb') as f:
            label = mmcv.imfrombytes(f.read(), flag='unchanged', backend=backend)
    except Exception as e:  # noqa: BLE001  (any decoder error: the file is unusable either way)
        raise SegDatasetError(f'label map cannot be read: {path} ({type(e).__name__}: {e})') from None
    if label is None:
        raise SegDatasetError(f'label map cannot be read: {path} (not an image)')
    label = np.squeeze(label)
    if label.ndim != 2:
        raise SegDatasetError(f'label map {path} has shape {label.shape}: expected one channel of class indices '
                              '(a colour rendering instead of an index map?)')
    return label


def training_values(values: np.ndarray, reduce_zero_label: bool, label_map: Optional[Dict[int, int]]) -> np.ndarray:
    """Map raw label values (a 1-D array of distinct values <= 255) to what the loss sees, as mmseg does."""
    out = values.astype(np.int64)
    if reduce_zero_label:
        out = np.where(out == 0, 255, out - 1)
        out[out == 254] = 255
    if label_map:
        mapped = out.copy()
        for old, new in label_map.items():
            mapped[out == old] = new
        out = mapped
    return out


def check_sample(info: Dict[str, Any], num_classes: int, ignore_index: int, backend: str = 'pillow',
                 with_labels: bool = True, decoding: Tuple[str, str] = ('cv2', 'color')) -> None:
    """Check one sample of a segmentation dataset (a ``data_list`` entry of mmseg's ``BaseSegDataset``).

    Args:
        info: with ``img_path``, ``seg_map_path`` and optionally ``reduce_zero_label``, ``label_map``.
        num_classes: classes of the dataset; valid training values are ``[0, num_classes)``.
        ignore_index: the other valid value (the decode head's, 255 by default).
        backend: image decoder of the pipeline's ``LoadAnnotations`` (``imdecode_backend``).
        with_labels: whether the pipeline loads the label map (else only the image must exist: inference on
            unlabelled images, e.g. a test-server submission).
        decoding: ``imdecode_backend`` and ``color_type`` of the pipeline's ``LoadImageFromFile``, which decide
            the image's size (:func:`image_size`, :func:`~.pipelines.image_decoding`).

    Raises:
        SegDatasetError: naming the file and the problem.
    """
    img_path, seg_path = info['img_path'], info['seg_map_path']
    if not with_labels:
        if not osp.isfile(img_path):
            raise SegDatasetError(f'image file not found: {img_path}')
        return
    if not osp.isfile(img_path):
        raise SegDatasetError(f'image file not found: {img_path} (its label map is {seg_path})')
    if not osp.isfile(seg_path):
        raise SegDatasetError(f'label map not found: {seg_path} (for image {img_path})')
    label = read_label_map(seg_path, backend)
    img_hw = image_size(img_path, *decoding)
    if label.shape != img_hw:
        raise SegDatasetError(f'label map {seg_path} is {label.shape[0]}x{label.shape[1]} (HxW) but its image '
                              f'{img_path} is {img_hw[0]}x{img_hw[1]}')
    raw = np.unique(label)
    if raw.min() < 0 or raw.max() > 255:
        raise SegDatasetError(f'label map {seg_path} has values outside 0..255 ({raw.min()}..{raw.max()}): mmseg '
                              'stores labels as uint8, so they would be wrapped')
    seen = training_values(raw, bool(info.get('reduce_zero_label')), info.get('label_map'))
    bad = sorted(set(seen[(seen >= num_classes) & (seen != ignore_index)].tolist()))
    if bad:
        shown = ', '.join(map(str, bad[:8])) + (', ...' if len(bad) > 8 else '')
        how = ' after reduce_zero_label' if info.get('reduce_zero_label') else ''
        raise SegDatasetError(f'label map {seg_path} has class values {shown}{how}, outside [0, {num_classes}) '
                              f'and not the ignore index {ignore_index}')


def check_cache_dir() -> Optional[str]:
    """Where checked samples are remembered: ``$STVIT_DATA_CHECK_CACHE`` (an empty value switches the cache off),
    else ``~/.cache/stvit_det/data_check``."""
    path = os.environ.get('STVIT_DATA_CHECK_CACHE')
    if path is None:
        return osp.join(osp.expanduser('~'), '.cache', 'stvit_det', 'data_check')
    return path or None


def _stamp(info: Dict[str, Any]) -> Optional[list]:
    """(size, mtime_ns) of a sample's label map and image, or None if either cannot be stat'ed."""
    try:
        seg, img = os.stat(info['seg_map_path']), os.stat(info['img_path'])
    except OSError:
        return None
    return [seg.st_size, seg.st_mtime_ns, img.st_size, img.st_mtime_ns]


def _entry(info: Dict[str, Any], stamp: list) -> list:
    """What a remembered sample must still equal: its image, the label mapping it was checked with, the stamp."""
    label_map = sorted((int(k), int(v)) for k, v in (info.get('label_map') or {}).items())
    return [info['img_path'], bool(info.get('reduce_zero_label')), [list(kv) for kv in label_map], *stamp]


def memory_path(cache_dir: Optional[str], kind: str, setting: Dict[str, Any]) -> Optional[str]:
    """The file in ``cache_dir`` that remembers checked files of one ``kind`` (``'seg'``, ``'img'``) and setting
    (a different setting, or :data:`CHECK_VERSION`, is another file); None without a cache dir."""
    key = hashlib.sha1(json.dumps(dict(setting, version=CHECK_VERSION), sort_keys=True,
                                  default=str).encode()).hexdigest()[:16]
    return osp.join(cache_dir, f'{kind}-{key}.json') if cache_dir else None


def load_memory(path: Optional[str]) -> Dict[str, Any]:
    """The entries of a memory file (:func:`memory_path`); a missing, unreadable or foreign file counts as empty."""
    try:
        with open(path) as f:  # type: ignore[arg-type]
            entries = json.load(f)
    except (OSError, TypeError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def save_memory(path: Optional[str], entries: Dict[str, Any]) -> None:
    """Replace a memory file with ``entries``, whole (concurrent ranks never read half a file); an unwritable cache
    only costs the re-reads next time."""
    if not path:
        return
    try:
        with atomic_output(path) as part, open(part, 'w') as f:
            json.dump(entries, f)
    except OSError:
        pass


class _PassedSamples:
    """The samples of one dataset setting that passed :func:`check_sample`, in ``cache_dir/seg-<key>.json``;
    ``{label map path: entry}`` (:func:`_entry`)."""

    def __init__(self, cache_dir: Optional[str], setting: Dict[str, Any]):
        self.path = memory_path(cache_dir, 'seg', setting)
        self.entries: Dict[str, list] = load_memory(self.path)

    def holds(self, info: Dict[str, Any], stamp: Optional[list]) -> bool:
        return stamp is not None and self.entries.get(info['seg_map_path']) == _entry(info, stamp)

    def save(self, passed: Sequence[Tuple[Dict[str, Any], list]]) -> None:
        """Remember exactly these samples (the dataset's good ones now)."""
        save_memory(self.path, {info['seg_map_path']: _entry(info, stamp) for info, stamp in passed})


def _orphan_label(dataset, data_list: Sequence[dict]) -> Optional[str]:
    """A label map of the dataset's label directory whose image is missing (directory scans only), or None."""
    if dataset.ann_file and osp.isfile(dataset.ann_file):
        return None  # a split list chooses the samples: extra files are not part of the dataset
    seg_dir = dataset.data_prefix.get('seg_map_path')
    img_dir = dataset.data_prefix.get('img_path')
    if not seg_dir or not osp.isdir(seg_dir):
        return None
    have = {osp.normpath(d['seg_map_path']) for d in data_list}
    suffix = dataset.seg_map_suffix
    for root, dirs, files in os.walk(seg_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith('.'))  # .ipynb_checkpoints and the like
        for name in sorted(f for f in files if not f.startswith('.')):  # mmengine lists no hidden file (._a.png)
            path = osp.normpath(osp.join(root, name))
            if name.endswith(suffix) and path not in have:
                rel = osp.relpath(path, seg_dir)
                image = osp.join(img_dir, rel[:-len(suffix)] + dataset.img_suffix)
                return f'image file not found: {image} (for label map {path})'
    return None


def _load_annotations(dataset_cfg: dict) -> Optional[dict]:
    """The pipeline's ``LoadAnnotations`` step (searched through wrappers), None without one."""
    return find_step(dataset_cfg.get('pipeline'), 'LoadAnnotations')


def _decode_backend(dataset_cfg: dict) -> str:
    step = _load_annotations(dataset_cfg)
    return 'pillow' if step is None else step.get('imdecode_backend', 'pillow')


def _ignore_index(cfg: Any) -> int:
    head = model_config(cfg).get('decode_head')
    head = head[0] if isinstance(head, (list, tuple)) and head else head
    return int(head.get('ignore_index', 255)) if isinstance(head, dict) else 255


def _head_classes(cfg: Any) -> Dict[str, int]:
    """``{'model.decode_head.num_classes': n, 'model.auxiliary_head.num_classes': m, ...}`` of a segmentor config
    (heads given as lists are numbered). Binary heads with ``num_classes=1`` are left out (mmseg reads them as two
    classes, background and foreground)."""
    out = {}
    for name in ('decode_head', 'auxiliary_head'):
        heads = model_config(cfg).get(name)
        many = isinstance(heads, (list, tuple))
        for i, head in enumerate(heads if many else [heads]):
            n = head.get('num_classes') if isinstance(head, dict) else None
            if isinstance(n, int) and n > 1:
                out[f'model.{name}' + (f'.{i}' if many else '') + '.num_classes'] = n
    return out


def check_seg_dataset_cfg(dataset_cfg: dict, ignore_index: int = 255, what: str = 'dataset',
                          workers: Optional[int] = None, cache_dir: Optional[str] = '',
                          head_classes: Optional[Dict[str, int]] = None) -> int:
    """Build one leaf segmentation dataset through mmseg's registry and check all its samples.

    Args:
        dataset_cfg: a leaf dataset config whose ``data_prefix`` has a ``seg_map_path``. When its pipeline has no
            ``LoadAnnotations`` (inference on unlabelled images), only the images are checked.
        ignore_index: label value excluded from the class range check.
        what: where the config comes from, used in messages.
        workers: threads reading files (default: up to 8).
        cache_dir: where passed samples are remembered (``''``: :func:`check_cache_dir`; None: nowhere).
        head_classes: the model's class counts (:func:`_head_classes`); each must equal the dataset's, else the
            labels the check lets through would be out of range for the head (a crash mid-training).

    Returns:
        the number of samples checked.

    Raises:
        SegDatasetError: for the first bad sample (in file order), naming the file; the count of further bad
            samples is appended.
    """
    import copy

    from mmengine.registry import DefaultScope

    from mmseg.registry import DATASETS
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    cfg = copy.deepcopy(dict(dataset_cfg))
    cfg['lazy_init'] = True
    cfg['serialize_data'] = False  # serialising an empty data list fails in numpy, before our message below
    # read the pipeline before building: wrappers (mmcv's TestTimeAug) replace their nested dicts with transforms
    backend, decoding = _decode_backend(cfg), image_decoding(cfg.get('pipeline'))
    with_labels = _load_annotations(cfg) is not None
    try:
        with DefaultScope.overwrite_default_scope('mmseg'):
            dataset = DATASETS.build(cfg)
            dataset.full_init()
    except Exception as e:  # noqa: BLE001  (mmseg's own refusals: classes not in the dataset, an unknown type)
        raise SegDatasetError(f'{what} cannot be built: {error_summary(e)}') from None
    data_list = [dataset.get_data_info(i) for i in range(len(dataset))]
    num_classes = len(dataset.metainfo['classes'])
    for where, n in (head_classes or {}).items():
        if n != num_classes:
            classes = ', '.join(map(str, dataset.metainfo['classes'][:6]))
            more = ', ...' if num_classes > 6 else ''
            raise SegDatasetError(f'{where} is {n}, but the {what} has {num_classes} classes ({classes}{more}): '
                                  f'set {where}={num_classes}, or the dataset\'s metainfo classes to the model\'s')
    if not data_list:
        raise SegDatasetError(f'no images found in {dataset.data_prefix.get("img_path")} with suffix '
                              f'{dataset.img_suffix!r} ({what})')

    setting = dict(num_classes=num_classes, ignore_index=ignore_index, backend=backend, ann_file=dataset.ann_file,
                   seg_dir=osp.abspath(dataset.data_prefix['seg_map_path']), with_labels=with_labels,
                   image_decoding=list(decoding))
    passed = _PassedSamples(check_cache_dir() if cache_dir == '' else cache_dir, setting)

    def run(info):  # -> (problem or None, stamp if the sample is good, whether it had to be read)
        stamp = _stamp(info)
        if passed.holds(info, stamp):
            return None, stamp, False
        try:
            check_sample(info, num_classes, ignore_index, backend, with_labels, decoding)
        except SegDatasetError as e:
            return str(e), None, True
        return None, stamp, True

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(run, data_list))
    problems = [p for p, _, _ in results if p]
    if any(read for _, _, read in results):
        passed.save([(info, stamp) for info, (_, stamp, _) in zip(data_list, results) if stamp is not None])
    orphan = _orphan_label(dataset, data_list) if with_labels else None
    if orphan:
        problems.append(orphan)
    if problems:
        more = f' (and {len(problems) - 1} more bad samples in this dataset)' if len(problems) > 1 else ''
        raise SegDatasetError(f'{problems[0]}{more} ({what})')
    return len(data_list)


def check_seg_dataset_cfgs(cfg: Any, phases: Sequence[str] = ('train', 'val', 'test')) -> List[Tuple[str, int]]:
    """Check every segmentation dataset (a leaf whose ``data_prefix`` has ``seg_map_path``) of the given phases.

    Other datasets (detection, classification) are skipped, so the tools call this for any config; mmseg is only
    imported when a segmentation dataset is found.

    Returns:
        (where, number of samples) for every dataset checked.

    Raises:
        SegDatasetError: naming the missing or malformed file.
    """
    checked = []
    ignore_index, head_classes = _ignore_index(cfg), _head_classes(cfg)
    for phase in phases:
        loader = cfg.get(f'{phase}_dataloader')
        if not loader:
            continue
        for index, leaf in enumerate(iter_leaf_datasets(loader.get('dataset'))):
            prefix = leaf.get('data_prefix') or {}
            if not (isinstance(prefix, dict) and prefix.get('seg_map_path')):
                continue
            what = f'{phase}_dataloader.dataset' + (f' #{index}' if index else '')
            checked.append((what, check_seg_dataset_cfg(leaf, ignore_index, what, head_classes=head_classes)))
    return checked
