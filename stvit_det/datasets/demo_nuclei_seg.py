"""Semantic label maps (background 0, nucleus 1) for the embedded nuclei demo dataset (``demo_nuclei.py``).

The images and the split are those of the instance dataset: the same 256 x 256 training views of three quadrants
and the held-out fourth quadrant as the only validation image, so the segmentation demo and the detection demo are
trained and evaluated on the same pixels. Each label map is cut from the stardist label mask with the view's
recorded ``source_box`` and ``transform`` (stored in the COCO file), so every nucleus pixel counts, including the
small fragments that the instance annotations drop at crop borders.

Layout added beside the instance dataset: ``seg_maps/{train,val}/<image name>.png`` (8-bit, one channel, values 0 / 1)
and ``seg_maps/build_info.json`` (written last; ties the maps to the instance build they were cut for).
"""
import json
import os
import os.path as osp
from typing import Tuple

import numpy as np

from .demo_nuclei import SEG_DIR, SPLITS, ann_file_path, apply_dihedral, load_stardist_nuclei, make_demo_dataset

CLASSES = ('background', 'nucleus')
PALETTE = ((0, 0, 0), (220, 20, 60))
SEG_BUILD_INFO = osp.join(SEG_DIR, 'build_info.json')


def semantic_view(labels: np.ndarray, box, transform: str) -> np.ndarray:
    """(h, w) uint8 class map (0 background, 1 nucleus) of one view: the ``box`` (y0, x0, y1, x1) of the instance
    label image ``labels`` (H, W), transformed like the view's pixels."""
    y0, x0, y1, x1 = box
    return apply_dihedral((labels[y0:y1, x0:x1] > 0).astype(np.uint8), transform)


def validate_seg_labels(out_dir: str, instance_info: dict) -> dict:
    """Check that ``out_dir`` has one label map per image of each split, cut for the instance build
    ``instance_info``; returns the stored seg build info.

    Raises:
        FileNotFoundError / ValueError naming the offending file.
    """
    import cv2

    info_path = osp.join(out_dir, SEG_BUILD_INFO)
    if not osp.isfile(info_path):
        raise FileNotFoundError(f'{info_path} not found (label maps missing or incompletely built)')
    with open(info_path) as f:
        info = json.load(f)
    if info.get('instance_settings') != instance_info['settings']:
        raise ValueError(f'{info_path}: cut for another build of the instance dataset')
    for split in SPLITS:
        with open(ann_file_path(out_dir, split)) as f:
            images = json.load(f)['images']
        for img in images:
            path = osp.join(out_dir, SEG_DIR, split, img['file_name'])
            label = cv2.imread(path, cv2.IMREAD_UNCHANGED)
            if label is None or label.shape != (img['height'], img['width']) or label.max() > 1:
                raise ValueError(f'{path}: missing, or not a {img["height"]}x{img["width"]} map of 0 / 1')
    return info


def make_seg_demo_dataset(out_dir: str, force: bool = False, **settings_kwargs) -> Tuple[dict, bool]:
    """Build (or reuse) the instance demo dataset under ``out_dir`` and write its semantic label maps.

    Args:
        out_dir: dataset directory (see :func:`stvit_det.datasets.demo_nuclei.make_demo_dataset`).
        force: rewrite the label maps even if valid ones exist (a valid instance dataset is reused; pass
            ``force=True`` to ``make_demo_dataset`` first to rebuild it).
        **settings_kwargs: settings of the instance dataset (seed, val_quadrant, crop_size, ...).

    Returns:
        (seg build info, whether the label maps were written now).
    """
    import cv2

    instance_info, built = make_demo_dataset(out_dir, **settings_kwargs)
    if not (force or built):
        try:
            return validate_seg_labels(out_dir, instance_info), False
        except (OSError, ValueError):
            pass

    info_path = osp.join(out_dir, SEG_BUILD_INFO)
    if osp.exists(info_path):
        os.remove(info_path)
    _, labels = load_stardist_nuclei()  # (H, W) instance ids
    counts = {}
    for split in SPLITS:
        with open(ann_file_path(out_dir, split)) as f:
            images = json.load(f)['images']
        seg_dir = osp.join(out_dir, SEG_DIR, split)
        os.makedirs(seg_dir, exist_ok=True)
        nucleus_pixels = 0
        for img in images:
            label = semantic_view(labels, img['source_box'], img['transform'])  # (h, w) uint8
            if label.shape != (img['height'], img['width']):
                raise ValueError(f'{img["file_name"]}: label view {label.shape} differs from the image size')
            path = osp.join(seg_dir, img['file_name'])
            if not cv2.imwrite(path, label):
                raise OSError(f'could not write {path}')
            nucleus_pixels += int(label.sum())
        total = sum(img['height'] * img['width'] for img in images)
        counts[split] = {'images': len(images), 'nucleus_fraction': round(nucleus_pixels / total, 4)}
    info = {'instance_settings': instance_info['settings'], 'classes': list(CLASSES), 'counts': counts}
    with open(info_path, 'w') as f:
        json.dump(info, f, indent=2)
    return validate_seg_labels(out_dir, instance_info), True
