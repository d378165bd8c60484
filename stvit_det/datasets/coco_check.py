"""Early, readable checks of COCO annotation files and of the datasets a config points at.

Without them a missing or corrupt annotation file surfaces deep inside the Runner (a ``FileNotFoundError`` from
the file backend, a ``JSONDecodeError`` without the file name, or a ``KeyError`` in pycocotools). The tools call
:func:`check_dataset_cfgs` after loading the config and before building the Runner, and turn a
:class:`DatasetCheckError` into a one-line exit message.
"""
import json
import os
import os.path as osp
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from ..utils.paths import is_remote
from ..utils.values import is_finite_number, is_int, model_config, type_name
from .pipelines import find_step, image_decoding

REQUIRED_KEYS = ('images', 'annotations', 'categories')
# Annotation files larger than this are only checked for existence (json.load of a full COCO train file takes
# seconds and gigabytes); the dataset itself then parses them.
MAX_PARSE_BYTES = 128 * 2**20


class DatasetCheckError(ValueError):
    """A dataset referenced by a config is missing or malformed; the message names the file or directory."""


class CocoAnnotationError(DatasetCheckError):
    """A COCO annotation file is missing, is not JSON, or is structurally invalid; the message names the file."""


def _is_id(value: Any) -> bool:
    """An id pycocotools and mmdet can index by: an ``int`` (not a bool) or a ``str``."""
    return isinstance(value, str) or is_int(value)


def _check_records(path: str, coco: dict, key: str, fields: Sequence[str], int_ids: bool = False) -> set:
    """Check that ``coco[key]`` is a list of dicts with ``fields`` and unique ids (ints or strings: pycocotools
    indexes by them; a list would stop it with ``unhashable type``); return the ids. ``int_ids``: strings refused
    too."""
    ids = set()
    for index, record in enumerate(coco[key]):
        if not isinstance(record, dict):
            raise CocoAnnotationError(f'{path}: {key}[{index}] is a {type(record).__name__}, expected an object')
        missing = [f for f in fields if f not in record]
        if missing:
            raise CocoAnnotationError(f'{path}: {key}[{index}] lacks {", ".join(map(repr, missing))}')
        id_ = record['id']
        if not _is_id(id_) or (int_ids and isinstance(id_, str)):
            expected = ('an integer (COCO evaluation stores annotation ids as numbers)' if int_ids
                        else 'an integer or a string')
            raise CocoAnnotationError(f'{path}: {key}[{index}] has the id {id_!r} (a {type(id_).__name__}); '
                                      f'expected {expected}')
        if id_ in ids:
            raise CocoAnnotationError(f'{path}: {key}[{index}] repeats id {id_!r}')
        ids.add(id_)
    return ids


def _check_image(where: str, image: dict) -> None:
    """Fields mmdet reads from an image record: the size (compared with boxes, e.g. ``min(x1 + w, width)``) and the
    file name (joined to the image directory)."""
    for field in ('height', 'width'):
        if not (is_finite_number(image[field]) and image[field] > 0):
            raise CocoAnnotationError(f'{where} has the {field} {image[field]!r}; expected a positive number')
    if not (isinstance(image['file_name'], str) and image['file_name']):
        raise CocoAnnotationError(f'{where} has the file_name {image["file_name"]!r}; expected a non-empty string')


def _polygon_problem(polygons: list, segm_evaluated: bool) -> Optional[str]:
    """Why a polygon segmentation would stop mmdet or pycocotools: a polygon that is not a list of numbers (both
    fail), or, in the ground truth of a ``segm`` COCOeval, no polygon or a first one of 4 values or fewer
    (pycocotools' ``frPyObjects`` fails on them: it reads a first entry of exactly 4 values as a box and refuses a
    list there; a ``bbox`` evaluation never converts polygons). Degenerate polygons (an odd count, fewer than 3
    points) are otherwise let through, as mmdet's ``LoadAnnotations`` drops them in training (an annotation left
    with none becomes an ignored instance); refusing them would refuse files mmdet trains on. None when fine."""
    for i, polygon in enumerate(polygons):
        if not isinstance(polygon, list):
            return f'polygon {i} is {polygon!r}, not a list of x, y numbers'
        wrong = [v for v in polygon if not is_finite_number(v)]
        if wrong:
            return f'polygon {i} holds {wrong[0]!r}, not a number'
    if segm_evaluated and (not polygons or len(polygons[0]) <= 4):
        what = f'polygon 0 has {len(polygons[0])} values' if polygons else 'no polygon'
        return f'{what}, which pycocotools cannot read in the segm evaluation (x, y of 3 or more points expected)'

    return None


def _rle_size_problem(seg: Any, image: dict) -> Optional[str]:
    """Why an RLE segmentation does not fit its image (its ``size`` is not the image's ``[height, width]``: mmdet
    reshapes the decoded mask to the image without an error, COCOeval compares masks of different sizes), or
    None (fits, or not an RLE)."""
    if not isinstance(seg, dict):
        return None
    size = seg.get('size')
    if isinstance(size, list) and len(size) == 2 and all(is_int(v) for v in size) \
            and size == [image['height'], image['width']]:
        return None
    return (f'has an RLE segmentation of size {size!r}, but its image {image["file_name"]!r} is '
            f'[{image["height"]}, {image["width"]}] ([height, width]): the mask would be read at the wrong size')


def check_coco_annotations(path: str, evaluated: bool = False, segm_evaluated: bool = False,
                           annotated: bool = True, segm_classes: Optional[Sequence[str]] = None) -> dict:
    """Load a COCO-format annotation file and check its structure.

    Checked: the file exists and is JSON; it is an object with the lists ``images`` (non-empty; each with ``id``,
    a non-empty ``file_name``, a positive ``height`` and ``width``), ``annotations`` and ``categories`` (each with
    ``id`` and ``name``); ids are unique ints or strings; every annotation has an ``image_id`` and a
    ``category_id`` that exist, a ``bbox`` of four finite numbers with non-negative width and height and a numeric
    ``area`` (MMDetection's ``CocoDataset`` reads it); a ``segmentation``, when present, is an RLE dict or a list of
    polygons, each a list of numbers (see :func:`_polygon_problem`).

    Args:
        path: the annotation file.
        evaluated: the file is the ground truth of a COCO evaluation: pycocotools' ``COCOeval`` also reads every
            annotation's ``iscrowd``, and its ``id`` must be an int.
        segm_evaluated: ... of a ``segm`` evaluation, which converts the ``segmentation`` of every annotation of
            the evaluated categories with pycocotools: each must have one, readable, and an RLE must be its image's
            ``[height, width]`` (else the masks are compared at another size).
        segm_classes: the names of the evaluated categories (the dataset's classes; None: all).
        annotated: ``annotations`` is required. False for an image-info file (COCO test-dev: images and categories
            only) read by a ``test_mode`` dataset or a ``format_only`` metric; the returned dict then has an empty
            ``annotations`` list.

    Returns:
        the parsed annotation dict.

    Raises:
        CocoAnnotationError: with a message that starts with ``path``.
    """
    if not osp.isfile(path):
        kind = 'is a directory, not a file' if osp.isdir(path) else 'not found'
        raise CocoAnnotationError(f'annotation file {kind}: {path}')
    try:
        with open(path, encoding='utf-8') as f:
            coco = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CocoAnnotationError(f'{path}: not a valid JSON file ({e})') from None
    if not isinstance(coco, dict):
        raise CocoAnnotationError(f'{path}: top level is a JSON {type(coco).__name__}, expected an object with '
                                  f'{", ".join(REQUIRED_KEYS)}')
    missing = [k for k in REQUIRED_KEYS if k not in coco and (annotated or k != 'annotations')]
    if missing:
        raise CocoAnnotationError(f'{path}: not a COCO annotation file, lacks {", ".join(map(repr, missing))}')
    coco.setdefault('annotations', [])
    for key in REQUIRED_KEYS:
        if not isinstance(coco[key], list):
            raise CocoAnnotationError(f'{path}: {key!r} is a {type(coco[key]).__name__}, expected a list')
    if not coco['images']:
        raise CocoAnnotationError(f'{path}: "images" is empty')

    _check_records(path, coco, 'images', ('id', 'file_name', 'height', 'width'))
    images = {image['id']: image for image in coco['images']}
    for index, image in enumerate(coco['images']):
        _check_image(f'{path}: images[{index}] (id {image["id"]!r})', image)
    category_ids = _check_records(path, coco, 'categories', ('id', 'name'))
    segm_ids = category_ids if segm_classes is None else {c['id'] for c in coco['categories']
                                                          if c['name'] in segm_classes}
    _check_records(path, coco, 'annotations', ('id', 'image_id', 'category_id', 'bbox', 'area')
                   + (('iscrowd', ) if evaluated else ()), int_ids=evaluated)
    for index, ann in enumerate(coco['annotations']):
        where = f'{path}: annotations[{index}] (id {ann["id"]!r})'
        for field in ('image_id', 'category_id'):
            if not _is_id(ann[field]):
                raise CocoAnnotationError(f'{where} has the {field} {ann[field]!r} (a {type(ann[field]).__name__}); '
                                          'expected an integer or a string')
        if not is_finite_number(ann['area']):
            raise CocoAnnotationError(f'{where} has a non-numeric area {ann["area"]!r}')
        if ann['image_id'] not in images:
            raise CocoAnnotationError(f'{where} refers to unknown image_id {ann["image_id"]!r}')
        if ann['category_id'] not in category_ids:
            raise CocoAnnotationError(f'{where} refers to unknown category_id {ann["category_id"]!r}')
        bbox = ann['bbox']
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(is_finite_number(v) for v in bbox)
                and bbox[2] >= 0 and bbox[3] >= 0):
            raise CocoAnnotationError(f'{where} has a malformed bbox {bbox!r}; expected [x, y, w, h] with w, h >= 0')
        seg = ann.get('segmentation')
        segm = segm_evaluated and ann['category_id'] in segm_ids  # COCOeval converts its segmentation
        if seg is None and segm:
            raise CocoAnnotationError(f'{where} has no segmentation, which the segm evaluation reads for every '
                                      'annotation (pycocotools stops with KeyError)')
        if seg is not None and not isinstance(seg, list) and not (isinstance(seg, dict) and 'counts' in seg
                                                                   and 'size' in seg):
            raise CocoAnnotationError(f'{where} has a malformed segmentation; expected polygons or an RLE dict '
                                      'with "counts" and "size"')
        problem = _rle_size_problem(seg, images[ann['image_id']]) if segm else None
        if problem:
            raise CocoAnnotationError(f'{where} {problem}')
        problem = _polygon_problem(seg, segm) if isinstance(seg, list) else None
        if problem:
            raise CocoAnnotationError(f'{where} has a malformed segmentation: {problem}')
    return coco


def _join(root: str, path: str) -> str:
    """Join like mmengine's BaseDataset: relative paths are taken relative to ``data_root``."""
    return path if not root or osp.isabs(path) else osp.join(root, path)


def iter_leaf_datasets(dataset_cfg: Any) -> Iterator[dict]:
    """Yield the leaf dataset configs under wrappers (ConcatDataset ``datasets``, RepeatDataset /
    ClassBalancedDataset / MultiImageMixDataset ``dataset``)."""
    if dataset_cfg is None:
        return
    if isinstance(dataset_cfg, (list, tuple)):
        for item in dataset_cfg:
            yield from iter_leaf_datasets(item)
    elif 'datasets' in dataset_cfg:
        yield from iter_leaf_datasets(dataset_cfg['datasets'])
    elif 'dataset' in dataset_cfg:
        yield from iter_leaf_datasets(dataset_cfg['dataset'])
    else:
        yield dataset_cfg


def _check_ann_file(path: str, what: str, evaluated: bool = False, segm_evaluated: bool = False,
                    coco_format: bool = True, annotated: bool = True,
                    segm_classes: Optional[Sequence[str]] = None) -> Optional[dict]:
    """Check an annotation file: it exists; for a reader of COCO instance files (``coco_format``), a JSON file small
    enough to parse is checked in full (:func:`check_coco_annotations`) and returned, else None."""
    if is_remote(path):
        return None
    if not osp.isfile(path):
        raise CocoAnnotationError(f'annotation file not found: {path} ({what})')
    if coco_format and path.endswith('.json') and osp.getsize(path) <= MAX_PARSE_BYTES:
        return check_coco_annotations(path, evaluated, segm_evaluated, annotated, segm_classes)
    return None


def registered_dataset(dataset_cfg: dict, scope: Optional[str] = None) -> Optional[type]:
    """The dataset class a config names (``type``, in its ``_scope_`` or ``scope``), or None if unknown."""
    from mmengine.registry import DATASETS

    kind = dataset_cfg.get('type')
    if isinstance(kind, type):
        return kind
    if not isinstance(kind, str):
        return None
    scope = dataset_cfg.get('_scope_') or scope or 'mmdet'
    return DATASETS.get(kind if '.' in kind else f'{scope}.{kind}')


def config_classes(dataset_cfg: dict, scope: Optional[str] = None) -> Optional[Tuple[str, ...]]:
    """The class names a dataset config will use: MMPretrain's ``classes`` argument, its ``metainfo`` (names, or a
    file of names, one per line) or its class's ``METAINFO`` (None if unknown)."""
    from mmengine import list_from_file

    classes = dataset_cfg.get('classes')
    if classes is None:
        classes = (dataset_cfg.get('metainfo') or {}).get('classes')
    if isinstance(classes, str):
        try:
            classes = list_from_file(osp.join(dataset_cfg.get('data_root') or '', classes)
                                     if not osp.isfile(classes) else classes)
        except OSError:
            return None
    if classes is None:
        classes = getattr(registered_dataset(dataset_cfg, scope), 'METAINFO', {}).get('classes')
    return None if classes is None else tuple(classes)


def reads_coco_instances(dataset_cfg: dict, scope: Optional[str] = None) -> bool:
    """Whether the dataset config names MMDetection's ``CocoDataset`` or a subclass that reads its file the same
    way (a user's class that only sets ``METAINFO``, ``CityscapesDataset``); not those with their own format
    (``CocoPanopticDataset``, LVIS, Objects365 patches) nor other toolboxes' datasets."""
    from mmdet.datasets import CocoDataset

    cls = registered_dataset(dataset_cfg, scope)
    return (isinstance(cls, type) and issubclass(cls, CocoDataset)
            and cls.load_data_list is CocoDataset.load_data_list and cls.parse_data_info is CocoDataset.parse_data_info)


def _kept_by_mmdet(ann: dict, image: dict, cat_ids: set) -> bool:
    """Whether ``CocoDataset.parse_data_info`` makes an instance of the annotation (it skips ``ignore`` ones, boxes
    outside the image or under 1 px, non-positive areas and categories outside the classes)."""
    if ann.get('ignore', False) or ann['category_id'] not in cat_ids:
        return False
    x, y, w, h = ann['bbox']
    inter_w = max(0, min(x + w, image['width']) - max(x, 0))
    inter_h = max(0, min(y + h, image['height']) - max(y, 0))
    return inter_w * inter_h > 0 and ann['area'] > 0 and w >= 1 and h >= 1


def _check_classes(coco: dict, classes: Tuple[str, ...], path: str, what: str,
                   head_classes: Dict[str, int]) -> List[Any]:
    """The config's classes against the file's categories and the model's heads; returns the category ids mmdet
    will use, in its label order. mmdet selects the categories by name in the file's order
    (``get_cat_ids(cat_names=classes)``): a class the file lacks shifts the labels of the rest (or leaves no image:
    the default COCO classes on a custom file), a name two categories share makes two labels of one class, and
    classes listed in another order give every label the wrong name; a head with fewer classes stops training on
    a label out of range."""
    names = [c['name'] for c in coco['categories']]
    absent = [c for c in classes if c not in names]
    if absent:
        shown = ', '.join(map(repr, absent[:5])) + (f' and {len(absent) - 5} more' if len(absent) > 5 else '')
        raise DatasetCheckError(f'{path}: {len(absent)} of the {len(classes)} classes of {what} are not category '
                                f'names of the file: {shown} (its categories: {names[:10]}); set '
                                f'{what}.metainfo=dict(classes=(...)) to the names to train / evaluate')
    chosen = [c for c in coco['categories'] if c['name'] in classes]
    shared = next((name for name in classes if names.count(name) > 1), None)
    if shared is not None:
        ids = [c['id'] for c in chosen if c['name'] == shared]
        raise DatasetCheckError(f'{path}: {len(ids)} categories (ids {", ".join(map(repr, ids))}) are named '
                                f'{shared!r}, a class of {what}: mmdet would make {len(ids)} labels of it; give '
                                'each category its own name (or merge them)')
    order = [c['name'] for c in chosen]
    if order != list(classes):
        shown = ', '.join(map(repr, order[:8])) + (', ...' if len(order) > 8 else '')
        raise DatasetCheckError(f'{path}: the classes of {what} are listed in another order than the file\'s '
                                f'categories; mmdet numbers the labels in the file\'s order, so every label would '
                                f'carry another class\'s name: list them as ({shown})')
    for where, n in head_classes.items():
        if n < len(classes):  # (more is allowed: open-vocabulary configs evaluate an 80-class head on fewer)
            shown = ', '.join(map(repr, classes[:6])) + (', ...' if len(classes) > 6 else '')
            raise DatasetCheckError(f'{where} is {n}, but {what} has {len(classes)} classes ({shown}): labels from '
                                    f'{n} on would be out of range; set {where}={len(classes)}, or the dataset\'s '
                                    'metainfo classes to the model\'s')
    return [c['id'] for c in chosen]


def _check_instances(coco: dict, images: Dict[Any, dict], dataset_cfg: dict, cat_ids: List[Any], path: str,
                     what: str) -> None:
    """What mmdet's ``CocoDataset`` makes of the annotations: with a pipeline that loads masks, every instance it
    keeps has a segmentation (else ``LoadAnnotations`` stops with ``KeyError: 'mask'`` at the first sample), an RLE
    one of its image's size (else reshaped to it without an error); outside
    ``test_mode``, its ``filter_cfg`` leaves at least one image (else the Runner stops in numpy: 'need at least one
    array to concatenate'). ``images``: the file's images by id."""
    wanted = set(cat_ids)
    step = find_step(dataset_cfg.get('pipeline'), 'LoadAnnotations')
    if step is not None and step.get('with_mask', False):
        for index, ann in enumerate(coco['annotations']):
            if not _kept_by_mmdet(ann, images[ann['image_id']], wanted):
                continue
            problem = _rle_size_problem(ann.get('segmentation'), images[ann['image_id']])
            if problem:
                raise DatasetCheckError(f'{path}: annotations[{index}] (id {ann["id"]!r}) {problem} ({what})')
            if not ann.get('segmentation'):
                none = 'an empty' if 'segmentation' in ann else 'no'
                raise DatasetCheckError(
                    f'{path}: annotations[{index}] (id {ann["id"]!r}) has {none} segmentation, but the pipeline of '
                    f'{what} loads masks (LoadAnnotations with_mask=True): mmdet would stop with KeyError \'mask\'; '
                    'give it a polygon or RLE, or mark it "ignore": 1')
    filter_cfg = dataset_cfg.get('filter_cfg')
    if dataset_cfg.get('test_mode', False) or not isinstance(filter_cfg, dict):
        return
    min_size = filter_cfg.get('min_size', 0)
    with_classes = {ann['image_id'] for ann in coco['annotations'] if ann['category_id'] in wanted}
    candidates, which = coco['images'], 'image'
    if filter_cfg.get('filter_empty_gt', False):
        if not with_classes:
            held = '' if coco['annotations'] else ' (the file has no annotations)'
            raise DatasetCheckError(f'{path}: no image has an annotation of the classes of {what}{held}, so its '
                                    'filter_cfg (filter_empty_gt=True) leaves no image to train on')
        candidates, which = [images[i] for i in with_classes], 'image with annotations of the classes'
    if is_finite_number(min_size) and all(min(im['width'], im['height']) < min_size for im in candidates):
        raise DatasetCheckError(f'{path}: every {which} is smaller than the min_size={min_size} of the filter_cfg '
                                f'of {what}, which leaves no image to train on')


def _check_image_files(coco: dict, img_dir: str, path: str, what: str) -> None:
    """Every image the file lists is in the image directory (else a missing one stops training whenever it is
    sampled); a link whose target is gone counts as missing."""
    listed: dict = {}
    for index, image in enumerate(coco['images']):
        listed.setdefault(osp.dirname(str(image['file_name'])), []).append(index)
    for sub, indices in listed.items():
        folder = osp.join(img_dir, sub)
        present, broken = set(), set()
        if osp.isdir(folder):
            with os.scandir(folder) as entries:
                for entry in entries:  # is_file() follows links: a dangling one is not a file
                    (present if entry.is_file() else broken if entry.is_symlink() else set()).add(entry.name)
        gone = [i for i in indices if osp.basename(str(coco['images'][i]['file_name'])) not in present]
        if gone:
            first = coco['images'][gone[0]]['file_name']
            link = ' (a link whose target is missing)' if osp.basename(str(first)) in broken else ''
            raise DatasetCheckError(f'{path}: {len(gone)} of its {len(coco["images"])} images are not in {img_dir} '
                                    f'({what}), e.g. images[{gone[0]}] file_name {first!r}{link}')


def _decoded_sizes(paths: Sequence[str], decoding: Tuple[str, str], listing: str) -> List[Tuple[int, int]]:
    """(H, W) of each image as ``LoadImageFromFile`` decodes it (:func:`seg_check.image_size`, a header read), read
    by up to 8 threads; sizes read before are remembered (:func:`seg_check.memory_path`: one file per annotation
    file ``listing`` and decoding, holding exactly its images, each keyed by the path, file size and modification
    time), so a later launch only stats the files."""
    from concurrent.futures import ThreadPoolExecutor

    from .seg_check import check_cache_dir, image_size, load_memory, memory_path, save_memory

    memory_file = memory_path(check_cache_dir(), 'img', dict(decoding=list(decoding), listing=osp.abspath(listing)))
    memory = load_memory(memory_file)

    def size(path):  # -> ((h, w), memory entry or None)
        try:
            st = os.stat(path)
            stamp = [st.st_size, st.st_mtime_ns]
        except OSError:
            stamp = None
        known = memory.get(path)
        if stamp and isinstance(known, list) and len(known) == 4 and known[:2] == stamp:
            return tuple(known[2:]), None
        hw = image_size(path, *decoding)
        return hw, (stamp + list(hw) if stamp else None)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(size, paths))
    if any(entry for _, entry in results):  # this dataset's images now, remembered or read
        save_memory(memory_file, {p: entry or memory[p] for p, (_, entry) in zip(paths, results)
                                  if entry or p in memory})
    return [hw for hw, _ in results]


def _check_image_sizes(coco: dict, images: Dict[Any, dict], img_dir: str, dataset_cfg: dict, path: str, what: str,
                       cat_ids: Optional[List[Any]]) -> None:
    """Images whose boxes would be misplaced: an image with instances mmdet keeps that decodes, as the pipeline's
    ``LoadImageFromFile`` reads it, to another size than the ``height`` and ``width`` the file gives, and has a box
    reaching beyond the decoded image (a resized image; a phone photo its EXIF orientation turns, annotated
    unturned). mmdet never compares them. Where every box fits the decoded image (a tool that wrote the unturned
    size but drew on the turned photo), nothing is refused; images without kept instances are not read (nothing
    of theirs can be misplaced). An unreadable image is named too."""
    if find_step(dataset_cfg.get('pipeline'), 'LoadImageFromFile') is None:
        return
    decoding = image_decoding(dataset_cfg.get('pipeline'))
    wanted = set(cat_ids if cat_ids is not None else (c['id'] for c in coco['categories']))
    boxes: dict = {}  # image id -> boxes of the instances mmdet keeps
    for ann in coco['annotations']:
        if _kept_by_mmdet(ann, images[ann['image_id']], wanted):
            boxes.setdefault(ann['image_id'], []).append(ann['bbox'])
    order = [i for i, image in enumerate(coco['images']) if image['id'] in boxes]
    try:
        decoded = _decoded_sizes([osp.join(img_dir, str(coco['images'][i]['file_name'])) for i in order], decoding,
                                 path)
    except DatasetCheckError as e:  # an unreadable image (seg_check's message names it)
        raise DatasetCheckError(f'{path}: {e} ({what})') from None
    wrong = []  # (index, decoded size, a box beyond it)
    for i, (h, w) in zip(order, decoded):
        image = coco['images'][i]
        if (h, w) == (image['height'], image['width']):
            continue
        beyond = next((b for b in boxes[image['id']] if b[0] + b[2] > w + 1 or b[1] + b[3] > h + 1), None)
        if beyond is not None:
            wrong.append((i, (h, w), beyond))
    if not wrong:
        return
    index, (h, w), box = wrong[0]
    image = coco['images'][index]
    why = ''
    if (w, h) == (image['height'], image['width']) and decoding[1] in ('color', 'grayscale'):
        why = (': its EXIF orientation turns it; annotate the image as it is shown, or read it unturned with '
               "LoadImageFromFile(color_type='color_ignore_orientation')")
    raise DatasetCheckError(f'{path}: {len(wrong)} of its {len(coco["images"])} images are not the size it gives and '
                            f'have boxes beyond the image ({what}), e.g. images[{index}] file_name '
                            f'{image["file_name"]!r}: {image["height"]}x{image["width"]} (HxW) in the file, {h}x{w} as '
                            f'the pipeline decodes it{why}; its box {box} would be misplaced')


def _classes_string_problem(dataset_cfg: dict, what: str) -> Optional[str]:
    """A dataset's classes given as one string that names no file (``metainfo=dict(classes=('nucleus'))``: the
    parentheses make no tuple): mmengine keeps the string, whose length then counts as the number of classes."""
    metainfo = dataset_cfg.get('metainfo')
    for where, value in ((f'{what}.classes', dataset_cfg.get('classes')),
                         (f'{what}.metainfo.classes', metainfo.get('classes') if isinstance(metainfo, dict) else None)):
        if isinstance(value, str) and not (osp.isfile(osp.expanduser(value))
                                           or osp.isfile(_join(dataset_cfg.get('data_root') or '', value))):
            return (f'{where} is the string {value!r}, which names no file of class names: give the names as a '
                    f'tuple, ({value!r}, ) for one class (without its comma a one-class tuple is just the string)')
    return None


def _check_coco_dataset(coco: dict, dataset_cfg: dict, path: str, img_dir: Optional[str], what: str,
                        scope: Optional[str], head_classes: Dict[str, int]) -> None:
    """For MMDetection's ``CocoDataset`` (:func:`reads_coco_instances`): its classes (:func:`_check_classes`), the
    instances it makes (:func:`_check_instances`) and its image files (:func:`_check_image_files`,
    :func:`_check_image_sizes`)."""
    images = {image['id']: image for image in coco['images']}
    classes = config_classes(dataset_cfg, scope)
    cat_ids = None
    if classes is not None:
        cat_ids = _check_classes(coco, classes, path, what, head_classes)
        _check_instances(coco, images, dataset_cfg, cat_ids, path, what)
    if img_dir is not None and not is_remote(img_dir):
        _check_image_files(coco, img_dir, path, what)
        _check_image_sizes(coco, images, img_dir, dataset_cfg, path, what, cat_ids)


def detector_head_classes(cfg: Any) -> Dict[str, int]:
    """``{'model.roi_head.bbox_head.num_classes': n, ...}``: the class counts of a detector config's box and mask
    heads (two-stage ``roi_head``, cascades' lists numbered, one-stage ``bbox_head``); the RPN's is not a class
    count, nor a ``class_agnostic`` mask head's (one mask per box)."""
    model = model_config(cfg)
    out = {}
    places = [('model.roi_head', (model.get('roi_head') or {}), ('bbox_head', 'mask_head')),
              ('model', model, ('bbox_head', ))]
    for prefix, node, names in places:
        if not isinstance(node, dict):
            continue
        for name in names:
            heads = node.get(name)
            many = isinstance(heads, (list, tuple))
            for i, head in enumerate(heads if many else [heads]):
                n = head.get('num_classes') if isinstance(head, dict) else None
                if is_int(n) and not head.get('class_agnostic', False):
                    out[f'{prefix}.{name}' + (f'.{i}' if many else '') + '.num_classes'] = n
    return out


#: MMPretrain's ``CustomDataset`` default ``extensions``
PRETRAIN_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif')
#: classes of MMPretrain's ``ImageNet`` when the config names none (its METAINFO)
IMAGENET_CLASSES = 1000


def pretrain_split_files(dataset_cfg: dict) -> Tuple[Any, Any]:
    """(ann_file, data_prefix) as MMPretrain's ``ImageNet(split=...)`` resolves them when the config leaves them
    empty: the folder is the split, the list ``meta/{split}.txt`` where that file exists (``ImageNet.__init__``);
    any other dataset's as configured."""
    ann_file, prefix, split = dataset_cfg.get('ann_file') or '', dataset_cfg.get('data_prefix') or '', \
        dataset_cfg.get('split')
    if type_name(dataset_cfg.get('type')) in ('ImageNet', 'ImageNet21k') and isinstance(split, str) and split:
        prefix = prefix or split
        meta = osp.join('meta', f'{split}.txt')
        if not ann_file and osp.isfile(_join(dataset_cfg.get('data_root') or '', meta)):
            ann_file = meta
    return ann_file, prefix


def folder_classes(dataset_cfg: dict) -> Optional[Tuple[str, ...]]:
    """The class names an MMPretrain folder dataset takes from its layout when the config names none (one subfolder
    per class, sorted, as ``CustomDataset`` numbers them); None for a dataset with an annotation file, without
    labels, or whose folder is not there."""
    if dataset_cfg.get('ann_file') or not dataset_cfg.get('with_label', True):
        return None
    prefix = dataset_cfg.get('data_prefix', '')
    prefix = prefix.get('img_path', '') if isinstance(prefix, dict) else prefix
    if not isinstance(prefix, str):
        return None
    path = _join(dataset_cfg.get('data_root') or '', prefix)
    if not path or is_remote(path) or not osp.isdir(path):
        return None
    return tuple(sorted(e for e in os.listdir(path) if osp.isdir(osp.join(path, e))))


def _check_image_folder(path: str, dataset_cfg: dict, where: str) -> None:
    """An MMPretrain image folder without an annotation file, as ``CustomDataset._find_samples`` reads it (one
    subfolder per class with ``with_label``; images found recursively): raise what MMPretrain would only raise
    from inside the Runner (an assertion, or a RuntimeError), naming the folder."""
    entries = os.listdir(path)
    if not entries:  # MMPretrain lists the folder itself: an empty one ends in an assertion
        raise DatasetCheckError(f'image directory is empty: {path} ({where})')
    extensions = tuple(e.lower() for e in dataset_cfg.get('extensions', PRETRAIN_EXTENSIONS))
    with_label = dataset_cfg.get('with_label', True)
    if with_label:
        folders = sorted(e for e in entries if osp.isdir(osp.join(path, e)))
        metainfo = dataset_cfg.get('metainfo') or {}
        classes = dataset_cfg.get('classes') or (metainfo.get('classes') if isinstance(metainfo, dict) else None)
        n = len(classes) if isinstance(classes, (list, tuple)) else (
            IMAGENET_CLASSES if classes is None and type_name(dataset_cfg.get('type')) == 'ImageNet'
            else None)
        if n is not None and len(folders) != n:
            raise DatasetCheckError(f'{path} has {len(folders)} class subfolders but the dataset has {n} classes '
                                    f'({where}): MMPretrain reads one subfolder per class; name the classes in '
                                    'the config (metainfo=dict(classes=...)) or give an ann_file')
        if isinstance(classes, (list, tuple)) and set(classes) == set(folders) and list(classes) != folders:
            raise DatasetCheckError(f'the classes of {where} are the subfolder names of {path} in another order: '
                                    'MMPretrain numbers the subfolders sorted by name and takes the names from the '
                                    'config, so images would carry other class names; list them sorted: '
                                    f'classes={tuple(folders)}')
        roots = [osp.join(path, f) for f in folders]
    else:
        roots = [path]
    for root in roots:
        for _, _, files in os.walk(root):
            if any(f.lower().endswith(extensions) for f in files):
                return  # one is enough: MMPretrain lists them all when it builds the dataset
    inside = 'its class subfolders' if with_label else 'it'
    raise DatasetCheckError(f'no image files ({", ".join(extensions)}) in {inside}: {path} ({where})')


def check_dataset_cfg(dataset_cfg: dict, what: str = 'dataset', scope: Optional[str] = None,
                      head_classes: Optional[Dict[str, int]] = None) -> List[str]:
    """Check one leaf dataset config: its ``ann_file`` (checked in full for MMDetection's ``CocoDataset``, else
    only found) and its image directories: ``data_prefix`` (a dict as in MMDetection and MMSegmentation, or
    MMPretrain's one folder) or, for MMPretrain's ``ImageNet(data_root=..., split=...)``, ``data_root/split``. A
    label folder (``data_prefix.seg_map_path``) need not exist when the pipeline loads no labels (inference on
    unlabelled images: mmseg only joins the path).

    Args:
        dataset_cfg: a dataset config with optional ``data_root``, ``ann_file``, ``data_prefix``.
        what: where the config comes from, used in messages (e.g. 'train_dataloader.dataset').
        scope: the config's default scope, to find the dataset class (for MMDetection's ``CocoDataset``: its
            classes against the file's categories, its instances, its images in ``data_prefix.img``).
        head_classes: the detector's class counts (:func:`detector_head_classes`), each to equal the classes of a
            ``CocoDataset``.

    Returns:
        the paths checked.

    Raises:
        DatasetCheckError: for a missing or malformed annotation file, a missing image directory or image, or
            classes the COCO file does not have.
    """
    root = dataset_cfg.get('data_root') or ''
    if is_remote(root):
        return []
    problem = _classes_string_problem(dataset_cfg, what)
    if problem:
        raise DatasetCheckError(problem)
    checked = []
    ann_file = dataset_cfg.get('ann_file') or ''
    coco = None
    coco_format = reads_coco_instances(dataset_cfg, scope)
    if ann_file:
        path = _join(root, ann_file)
        coco = _check_ann_file(path, what, coco_format=coco_format,
                               annotated=not dataset_cfg.get('test_mode', False))
        checked.append(path)
    prefixes = dataset_cfg.get('data_prefix') or {}
    folders = {}  # where the config names it -> folder
    if isinstance(prefixes, dict):
        folders = {f'data_prefix.{key}': prefix for key, prefix in prefixes.items()}
    elif isinstance(prefixes, str):  # MMPretrain: one image folder
        folders = {'data_prefix': prefixes}
    split = dataset_cfg.get('split')
    imagenet = type_name(dataset_cfg.get('type')) in ('ImageNet', 'ImageNet21k')
    if not prefixes and split and root and imagenet:
        folders = {'data_root + split': split}  # MMPretrain's ImageNet (other types lay out otherwise)
    # the image folder of an MMPretrain dataset, however the config spells it (mmseg's img_path is another matter)
    pretrain = getattr(registered_dataset(dataset_cfg, scope), '__module__', '').startswith('mmpretrain')
    image_folders = ('data_prefix', 'data_root + split') + (('data_prefix.img_path', ) if pretrain else ())
    # MMPretrain's ImageNet reads data_root/meta/{split}.txt as its ann_file when the config names none
    listed = bool(pretrain_split_files(dataset_cfg)[0])
    labels_read = find_step(dataset_cfg.get('pipeline'), 'LoadAnnotations') is not None
    for where, prefix in folders.items():
        if not isinstance(prefix, str) or not (prefix or root):
            continue
        if where == 'data_prefix.seg_map_path' and not labels_read:
            continue  # mmseg only joins the label path: inference on unlabelled images needs no label folder
        path = _join(root, prefix)
        if not is_remote(path) and not osp.isdir(path):
            raise DatasetCheckError(f'image directory not found: {path} ({what}.{where})')
        if where in image_folders and not is_remote(path):
            if listed:  # the images come from a list file: the folder only has to hold something
                if not os.listdir(path):
                    raise DatasetCheckError(f'image directory is empty: {path} ({what}.{where})')
            else:  # ImageNet's 'test' split has no labels (MMPretrain sets with_label=False)
                _check_image_folder(path, dict(dataset_cfg, with_label=False) if imagenet and split == 'test'
                                    else dataset_cfg, f'{what}.{where}')
        checked.append(path)
    if coco is not None:
        img = prefixes.get('img') if isinstance(prefixes, dict) else None
        _check_coco_dataset(coco, dataset_cfg, checked[0], _join(root, img) if isinstance(img, str) else None,
                            what, scope, head_classes or {})
    return checked


def check_dataset_cfgs(cfg: Any, phases: Sequence[str] = ('train', 'val', 'test')) -> List[Tuple[str, str]]:
    """Check every dataset and COCO evaluator annotation file of the given phases of a config.

    For each phase, ``{phase}_dataloader.dataset`` is walked through dataset wrappers and each leaf is checked with
    :func:`check_dataset_cfg`; an ``ann_file`` of ``{phase}_evaluator`` (e.g. CocoMetric) is checked too. Phases
    whose dataloader is absent or None are skipped.

    Args:
        cfg: an mmengine Config (or dict).
        phases: subset of ('train', 'val', 'test').

    Returns:
        (where, path) for every path checked.

    Raises:
        DatasetCheckError: naming the missing or malformed file or directory.
    """
    checked = []
    head_classes = detector_head_classes(cfg)
    for phase in phases:
        loader = cfg.get(f'{phase}_dataloader')
        if not loader:
            continue
        leaves = list(iter_leaf_datasets(loader.get('dataset')))
        for index, leaf in enumerate(leaves):
            what = f'{phase}_dataloader.dataset' + (f' #{index}' if index else '')
            checked += [(what, p) for p in check_dataset_cfg(leaf, what, cfg.get('default_scope'), head_classes)]
        # a COCO metric evaluates the classes of the phase's dataset
        classes = config_classes(leaves[0], cfg.get('default_scope')) if len(leaves) == 1 else None
        evaluators = cfg.get(f'{phase}_evaluator') or []
        for metric in evaluators if isinstance(evaluators, (list, tuple)) else [evaluators]:
            ann_file: Optional[str] = metric.get('ann_file') if isinstance(metric, dict) else None
            if ann_file:
                # CocoMetric reads COCO instance files (other metrics' files are only found); format_only: results
                # are written, not evaluated, so an image-info file (test-dev) is enough
                coco_metric = type_name(metric.get('type')) == 'CocoMetric'
                scored = not metric.get('format_only', False)
                metrics = metric.get('metric', 'bbox')  # CocoMetric's default
                segm = 'segm' in (metrics if isinstance(metrics, (list, tuple)) else [metrics])
                _check_ann_file(ann_file, f'{phase}_evaluator.ann_file', evaluated=scored,
                                segm_evaluated=scored and segm, coco_format=coco_metric, annotated=scored,
                                segm_classes=classes)
                checked.append((f'{phase}_evaluator', ann_file))
    return checked
