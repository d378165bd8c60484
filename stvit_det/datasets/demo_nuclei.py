"""Embedded nuclei demo dataset: a real fluorescence image and its instance labels, converted to COCO format.

Source: the 512 x 512 nuclei image ``img2d.tif`` and its 125-instance label mask ``mask2d.tif`` shipped inside the
PyPI package ``stardist==0.9.2`` (``stardist/data/images/``; stardist is BSD-3-Clause,
https://github.com/stardist/stardist). The two files are read by path with tifffile; ``stardist`` (which needs
TensorFlow) is never imported.

Split without leakage: the image is cut into four quadrants. One of them (``val_quadrant``) is the validation image;
every training crop is a window lying inside the other three quadrants, so no training pixel comes from the
validation quadrant. An instance straddling the validation quadrant's border is split: each side keeps only its own
pixels. Instances cut by any crop border keep the part inside the crop, and such fragments smaller than
``min_fragment_area`` pixels are dropped; whole instances are always kept.

Conventions: a box is ``(y0, x0, y1, x1)``, half-open, in source-image pixels; a COCO ``bbox`` is ``[x, y, w, h]``;
label images are (H, W) integer arrays with 0 as background; images written are 8-bit 3-channel PNGs.
"""
import hashlib
import importlib.util
import json
import os
import os.path as osp
import shutil
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .coco_check import check_coco_annotations

Box = Tuple[int, int, int, int]

DATASET_VERSION = 1
CATEGORIES = ({'id': 1, 'name': 'nucleus', 'supercategory': 'cell'}, )
QUADRANTS = ('top-left', 'top-right', 'bottom-left', 'bottom-right')
DIHEDRAL = ('rot0', 'rot90', 'rot180', 'rot270', 'flip-rot0', 'flip-rot90', 'flip-rot180', 'flip-rot270')
SPLITS = ('train', 'val')
BUILD_INFO = 'build_info.json'
#: semantic label maps derived from this dataset's views (``demo_nuclei_seg.py``): removed whenever the views are
#: rebuilt, so that maps of an earlier build (another seed or quadrant) never sit beside new images
SEG_DIR = 'seg_maps'
STARDIST_FILES = ('data/images/img2d.tif', 'data/images/mask2d.tif')


def ann_file_path(out_dir: str, split: str) -> str:
    """Path of the COCO annotation file of ``split`` ('train' or 'val') under ``out_dir``."""
    return osp.join(out_dir, 'annotations', f'instances_{split}.json')


def stardist_demo_files() -> Tuple[str, str]:
    """Locate ``img2d.tif`` and ``mask2d.tif`` inside the installed ``stardist`` package, without importing it.

    Returns:
        (image path, label-mask path).

    Raises:
        FileNotFoundError: if the package or one of its two files is missing.
    """
    hint = 'install it with `pip install --no-deps stardist==0.9.2` (see requirements/demo.txt)'
    spec = importlib.util.find_spec('stardist')
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f'the PyPI package `stardist` is not installed; {hint}')
    package_dir = list(spec.submodule_search_locations)[0]
    paths = tuple(osp.join(package_dir, rel) for rel in STARDIST_FILES)
    for path in paths:
        if not osp.isfile(path):
            raise FileNotFoundError(f'{path} not found in the installed stardist package; {hint}')
    return paths


def load_stardist_nuclei() -> Tuple[np.ndarray, np.ndarray]:
    """Read the stardist demo image and its label mask.

    Returns:
        image of shape (H, W), uint16, and labels of shape (H, W), int64 (0 = background, 1.. = instance ids).
    """
    import tifffile

    image_path, mask_path = stardist_demo_files()
    image = tifffile.imread(image_path)
    labels = tifffile.imread(mask_path).astype(np.int64)
    if image.ndim != 2 or image.shape != labels.shape:
        raise ValueError(f'expected two 2-D arrays of equal shape, got {image.shape} ({image_path}) '
                         f'and {labels.shape} ({mask_path})')
    return image, labels


def normalize_to_uint8_rgb(image: np.ndarray,
                           low: float = 1.0,
                           high: float = 99.8,
                           stats_mask: Optional[np.ndarray] = None) -> np.ndarray:
    """Percentile-normalise a single-channel image to 8 bits and replicate it to three channels.

    Args:
        image: intensities of shape (H, W).
        low: percentile mapped to 0.
        high: percentile mapped to 255.
        stats_mask: optional boolean (H, W) mask of the pixels the percentiles are computed on (e.g. the training
            region only, so that the held-out quadrant does not influence the normalisation).

    Returns:
        uint8 array of shape (H, W, 3).
    """
    values = image[stats_mask] if stats_mask is not None else image
    lo, hi = np.percentile(values.astype(np.float64), (low, high))
    scaled = (image.astype(np.float64) - lo) / max(hi - lo, 1e-6)
    gray = np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)  # (H, W) -> (H, W, 3)


def quadrant_box(index: int, shape: Sequence[int]) -> Box:
    """Box of quadrant ``index`` (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right) of an (H, W) image."""
    if index not in range(4):
        raise ValueError(f'quadrant index must be 0..3 ({", ".join(QUADRANTS)}), got {index}')
    h, w = shape[:2]
    hh, hw = h // 2, w // 2
    row, col = divmod(index, 2)
    return (row * hh, col * hw, h if row else hh, w if col else hw)


def boxes_intersect(a: Box, b: Box) -> bool:
    """Whether two half-open (y0, x0, y1, x1) boxes share at least one pixel."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def train_crop_boxes(shape: Sequence[int], val_quadrant: int, crop_size: int, stride: int) -> List[Box]:
    """All ``crop_size`` windows on a ``stride`` grid that lie in the image and avoid the validation quadrant.

    Args:
        shape: source image (H, W).
        val_quadrant: index of the held-out quadrant (see :func:`quadrant_box`).
        crop_size: side of the square windows.
        stride: grid step of the window corners; the last row / column is snapped to the image border.

    Returns:
        boxes (y0, x0, y1, x1), row-major, none of which intersects the validation quadrant.
    """
    h, w = shape[:2]
    if crop_size > min(h, w) or crop_size < 1 or stride < 1:
        raise ValueError(f'need 1 <= crop_size <= min(H, W) and stride >= 1, got crop_size={crop_size}, '
                         f'stride={stride}, image {h}x{w}')

    def starts(length: int) -> List[int]:
        last = length - crop_size
        return sorted(set(list(range(0, last + 1, stride)) + [last]))

    val_box = quadrant_box(val_quadrant, shape)
    boxes = [(y, x, y + crop_size, x + crop_size) for y in starts(h) for x in starts(w)]
    return [box for box in boxes if not boxes_intersect(box, val_box)]


def apply_dihedral(array: np.ndarray, name: str) -> np.ndarray:
    """Apply one of the eight square symmetries (:data:`DIHEDRAL`) to the first two axes of ``array``.

    'flip-rotK' flips left-right first, then rotates by K degrees counter-clockwise.
    """
    if name not in DIHEDRAL:
        raise ValueError(f'unknown transform {name!r}; expected one of {DIHEDRAL}')
    if name.startswith('flip-'):
        array = array[:, ::-1]
    k = int(name.rsplit('rot', 1)[1]) // 90
    return np.ascontiguousarray(np.rot90(array, k=k, axes=(0, 1)))


def labels_to_coco_annotations(labels: np.ndarray,
                               full_areas: Optional[Dict[int, int]] = None,
                               min_fragment_area: int = 20) -> List[dict]:
    """Convert an instance label image into COCO annotations (compressed RLE masks).

    Args:
        labels: (H, W) integer label image, 0 = background.
        full_areas: area of every instance in the uncropped source image. An instance whose area here is smaller is
            a fragment cut by a crop border and is dropped when its area is below ``min_fragment_area``. With
            ``None`` every instance is considered whole and kept.
        min_fragment_area: smallest fragment (pixels) that is kept.

    Returns:
        one dict per kept instance, sorted by label, with keys ``segmentation`` (RLE with a str ``counts``),
        ``area``, ``bbox`` ([x, y, w, h]), ``iscrowd`` (0), ``category_id`` (1) and ``source_label``. The caller
        assigns ``id`` and ``image_id``.
    """
    from pycocotools import mask as mask_utils

    ids, counts = np.unique(labels, return_counts=True)
    annotations = []
    for label, area in zip(ids.tolist(), counts.tolist()):
        if label == 0:
            continue
        is_fragment = full_areas is not None and area < full_areas[label]
        if is_fragment and area < min_fragment_area:
            continue
        binary = np.asfortranarray((labels == label).astype(np.uint8))  # (H, W), pycocotools wants Fortran order
        rle = mask_utils.encode(binary)
        rle['counts'] = rle['counts'].decode('ascii')
        annotations.append({
            'segmentation': {'size': [int(s) for s in rle['size']], 'counts': rle['counts']},
            'area': int(area),
            'bbox': [float(v) for v in mask_utils.toBbox(rle)],
            'iscrowd': 0,
            'category_id': CATEGORIES[0]['id'],
            'source_label': int(label),
        })
    return annotations


def plan_views(shape: Sequence[int],
               val_quadrant: int = 3,
               crop_size: int = 256,
               stride: int = 64,
               views_per_crop: int = 3,
               seed: int = 0) -> Dict[str, List[Tuple[Box, str]]]:
    """Decide which (source box, transform) pairs become images of each split.

    Every training window is used untransformed ('rot0') plus ``views_per_crop - 1`` distinct random symmetries;
    the validation split is the held-out quadrant, untransformed.

    Returns:
        {'train': [(box, transform), ...], 'val': [(quadrant box, 'rot0')]}.
    """
    if not 1 <= views_per_crop <= len(DIHEDRAL):
        raise ValueError(f'views_per_crop must be in 1..{len(DIHEDRAL)}, got {views_per_crop}')
    rng = np.random.default_rng(seed)
    train = []
    for box in train_crop_boxes(shape, val_quadrant, crop_size, stride):
        extra = rng.permutation(len(DIHEDRAL) - 1)[:views_per_crop - 1] + 1
        train.extend((box, DIHEDRAL[i]) for i in [0] + sorted(extra.tolist()))
    return {'train': train, 'val': [(quadrant_box(val_quadrant, shape), 'rot0')]}


def build_coco_split(image_rgb: np.ndarray, labels: np.ndarray, views: Sequence[Tuple[Box, str]], split: str,
                     min_fragment_area: int = 20) -> Tuple[dict, List[np.ndarray]]:
    """Cut, transform and annotate the images of one split.

    Args:
        image_rgb: (H, W, 3) uint8 source image.
        labels: (H, W) source label image.
        views: (box, transform) pairs from :func:`plan_views`.
        split: split name, used in the file names.
        min_fragment_area: see :func:`labels_to_coco_annotations`.

    Returns:
        the COCO dict (images carry their ``source_box`` and ``transform``; annotations their ``source_label``) and
        the (h, w, 3) uint8 pixel arrays, in the order of ``coco['images']``.
    """
    full_areas = dict(zip(*[a.tolist() for a in np.unique(labels, return_counts=True)]))
    images, annotations, pixels = [], [], []
    for index, (box, transform) in enumerate(views):
        y0, x0, y1, x1 = box
        crop = apply_dihedral(image_rgb[y0:y1, x0:x1], transform)
        crop_labels = apply_dihedral(labels[y0:y1, x0:x1], transform)
        image_id = index + 1
        images.append({
            'id': image_id,
            'file_name': f'nuclei_{split}_{index:03d}.png',
            'height': int(crop.shape[0]),
            'width': int(crop.shape[1]),
            'source_box': [int(v) for v in box],
            'transform': transform,
        })
        for ann in labels_to_coco_annotations(crop_labels, full_areas, min_fragment_area):
            annotations.append({'id': len(annotations) + 1, 'image_id': image_id, **ann})
        pixels.append(crop)
    coco = {
        'info': {'description': f'stvit_det nuclei demo ({split}), from stardist 0.9.2 img2d.tif / mask2d.tif'},
        'images': images,
        'annotations': annotations,
        'categories': [dict(c) for c in CATEGORIES],
    }
    return coco, pixels


def _sha256(path: str) -> str:
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def build_settings(seed: int = 0,
                   val_quadrant: int = 3,
                   crop_size: int = 256,
                   stride: int = 64,
                   views_per_crop: int = 3,
                   min_fragment_area: int = 20) -> dict:
    """Everything that determines the dataset's content; stored in ``build_info.json`` and compared on reuse."""
    return {
        'version': DATASET_VERSION,
        'seed': seed,
        'val_quadrant': val_quadrant,
        'crop_size': crop_size,
        'stride': stride,
        'views_per_crop': views_per_crop,
        'min_fragment_area': min_fragment_area,
        'sources': {osp.basename(p): _sha256(p) for p in stardist_demo_files()},
    }


def validate_demo_dataset(out_dir: str, settings: Optional[dict] = None) -> dict:
    """Check that ``out_dir`` holds a complete demo dataset (built with ``settings`` if given).

    Returns:
        the stored build info.

    Raises:
        ValueError (or a subclass) / FileNotFoundError naming the offending file.
    """
    info_path = osp.join(out_dir, BUILD_INFO)
    if not osp.isfile(info_path):
        raise FileNotFoundError(f'{info_path} not found (dataset missing or incompletely built)')
    with open(info_path) as f:
        info = json.load(f)
    counts = info.get('counts') if isinstance(info, dict) else None
    if not isinstance(counts, dict) or not all(isinstance(counts.get(split), dict) for split in SPLITS):
        raise ValueError(f'{info_path}: the build did not finish (no image and annotation counts of '
                         f'{", ".join(SPLITS)})')
    if settings is not None and info.get('settings') != settings:
        raise ValueError(f'{info_path}: built with different settings {info.get("settings")}, wanted {settings}')
    import cv2

    for split in SPLITS:
        coco = check_coco_annotations(ann_file_path(out_dir, split))
        if len(coco['images']) != counts[split].get('images') or \
                len(coco['annotations']) != counts[split].get('annotations'):
            raise ValueError(f'{ann_file_path(out_dir, split)}: counts differ from {info_path}')
        for img in coco['images']:
            path = osp.join(out_dir, split, img['file_name'])
            pixels = cv2.imread(path, cv2.IMREAD_UNCHANGED)
            if pixels is None or pixels.shape != (img['height'], img['width'], 3):
                raise ValueError(f'{path}: missing or not a {img["height"]}x{img["width"]} 3-channel image')
    return info


def make_demo_dataset(out_dir: str, force: bool = False, **settings_kwargs) -> Tuple[dict, bool]:
    """Build the demo dataset under ``out_dir`` unless a valid one with the same settings is already there.

    Layout: ``annotations/instances_{train,val}.json``, ``{train,val}/nuclei_*.png`` and ``build_info.json``
    (first marked incomplete, completed last, so an interrupted build is detected and redone).

    Args:
        out_dir: output directory (created if needed; only the paths above and ``seg_maps/``, derived from the
            views by the segmentation demo, are written, replaced or removed).
        force: rebuild even if a valid dataset exists, and replace those paths even when no build of ours wrote
            them (without it, such files are refused with ``FileExistsError``).
        **settings_kwargs: see :func:`build_settings` (seed, val_quadrant, crop_size, stride, views_per_crop,
            min_fragment_area).

    Returns:
        (build info, whether it was built now; False if the existing dataset was reused).
    """
    import cv2

    settings = build_settings(**settings_kwargs)
    if not force:
        try:
            return validate_demo_dataset(out_dir, settings), False
        except (OSError, ValueError):
            pass

    info_path = osp.join(out_dir, BUILD_INFO)
    if not force and not osp.exists(info_path):  # files of the layout that no build of ours wrote: the user's
        foreign = [p for p in (ann_file_path(out_dir, split) for split in SPLITS) if osp.exists(p)]
        foreign += [osp.join(out_dir, split, f) for split in SPLITS if osp.isdir(osp.join(out_dir, split))
                    for f in sorted(os.listdir(osp.join(out_dir, split))) if f.startswith(f'nuclei_{split}_')]
        if osp.exists(osp.join(out_dir, SEG_DIR)):  # the segmentation demo's label maps, removed below
            foreign.append(osp.join(out_dir, SEG_DIR))
        if foreign:
            raise FileExistsError(f'{out_dir} holds files this build would replace, and no {BUILD_INFO} of an earlier '
                                  f'build: {", ".join(foreign[:3])}{" ..." if len(foreign) > 3 else ""}; choose '
                                  'another --out, or --force to replace them')
    os.makedirs(out_dir, exist_ok=True)
    with open(info_path, 'w') as f:  # marks the folder as ours while it is built (no counts: not valid yet)
        json.dump({'settings': settings, 'complete': False}, f)
    shutil.rmtree(osp.join(out_dir, SEG_DIR), ignore_errors=True)  # derived from the views about to be replaced
    image, labels = load_stardist_nuclei()
    train_mask = np.ones(labels.shape, dtype=bool)
    qy0, qx0, qy1, qx1 = quadrant_box(settings['val_quadrant'], labels.shape)
    train_mask[qy0:qy1, qx0:qx1] = False  # normalisation statistics from the training region only
    image_rgb = normalize_to_uint8_rgb(image, stats_mask=train_mask)
    plan = plan_views(labels.shape, settings['val_quadrant'], settings['crop_size'], settings['stride'],
                      settings['views_per_crop'], settings['seed'])

    counts = {}
    os.makedirs(osp.join(out_dir, 'annotations'), exist_ok=True)
    for split in SPLITS:
        coco, pixels = build_coco_split(image_rgb, labels, plan[split], split, settings['min_fragment_area'])
        img_dir = osp.join(out_dir, split)
        os.makedirs(img_dir, exist_ok=True)
        for stale in os.listdir(img_dir):
            if stale.startswith(f'nuclei_{split}_') and stale.endswith('.png'):
                os.remove(osp.join(img_dir, stale))
        for img, px in zip(coco['images'], pixels):
            if not cv2.imwrite(osp.join(img_dir, img['file_name']), px):
                raise OSError(f'could not write {osp.join(img_dir, img["file_name"])}')
        with open(ann_file_path(out_dir, split), 'w') as f:
            json.dump(coco, f)
        counts[split] = {
            'images': len(coco['images']),
            'annotations': len(coco['annotations']),
            'source_labels': len({a['source_label'] for a in coco['annotations']}),
        }
    info = {'settings': settings, 'counts': counts, 'num_source_instances': int(len(np.unique(labels)) - 1)}
    with open(info_path, 'w') as f:
        json.dump(info, f, indent=2)
    return validate_demo_dataset(out_dir, settings), True
