"""The nuclei demo dataset: conversion to COCO, the leak-free quadrant split, idempotent builds.

Builds the real dataset (stardist 0.9.2 files, requirements/demo.txt) into a temporary directory once per module.
"""
import json
import os.path as osp

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from stvit_det.datasets import check_coco_annotations
from stvit_det.datasets.demo_nuclei import (DIHEDRAL, ann_file_path, apply_dihedral, boxes_intersect,
                                            labels_to_coco_annotations, load_stardist_nuclei, make_demo_dataset,
                                            quadrant_box, train_crop_boxes, validate_demo_dataset)

MIN_FRAGMENT_AREA = 20  # the default of make_demo_dataset


@pytest.fixture(scope='module')
def source():
    """(image, labels) of the stardist demo files."""
    return load_stardist_nuclei()


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    """(out_dir, {'train': coco, 'val': coco}) of a fresh build with the default settings."""
    out_dir = str(tmp_path_factory.mktemp('nuclei_demo'))
    info, built = make_demo_dataset(out_dir, seed=0)
    assert built
    cocos = {}
    for split in ('train', 'val'):
        with open(ann_file_path(out_dir, split)) as f:
            cocos[split] = json.load(f)
    return out_dir, cocos


def test_source_has_125_nuclei(source):
    image, labels = source
    assert image.shape == labels.shape == (512, 512)
    assert len(np.unique(labels)) - 1 == 125


def test_every_nucleus_is_annotated(source, dataset):
    _, labels = source
    _, cocos = dataset
    seen = {a['source_label'] for coco in cocos.values() for a in coco['annotations']}
    assert seen == set(np.unique(labels).tolist()) - {0}
    assert len(seen) == 125


def test_val_is_the_held_out_quadrant(source, dataset):
    _, labels = source
    _, cocos = dataset
    val_box = quadrant_box(3, labels.shape)
    assert [img['source_box'] for img in cocos['val']['images']] == [list(val_box)]
    y0, x0, y1, x1 = val_box
    inside = np.unique(labels[y0:y1, x0:x1])
    val_labels = {a['source_label'] for a in cocos['val']['annotations']}
    # every nucleus visible in the quadrant is annotated, except fragments below the size limit
    for label in set(inside.tolist()) - {0} - val_labels:
        assert (labels[y0:y1, x0:x1] == label).sum() < MIN_FRAGMENT_AREA


def test_no_leak_between_train_and_val(source, dataset):
    _, labels = source
    _, cocos = dataset
    val_box = quadrant_box(3, labels.shape)
    assert len(cocos['train']['images']) >= 16
    for img in cocos['train']['images']:
        assert not boxes_intersect(tuple(img['source_box']), val_box), img
    # nuclei lying entirely inside the val quadrant never appear in training images
    y0, x0, y1, x1 = val_box
    outside = labels.copy()
    outside[y0:y1, x0:x1] = 0
    only_val = set(np.unique(labels[y0:y1, x0:x1]).tolist()) - set(np.unique(outside).tolist())
    assert len(only_val) > 20
    assert not only_val & {a['source_label'] for a in cocos['train']['annotations']}


@pytest.mark.parametrize('split', ['train', 'val'])
def test_masks_decode_to_the_source_labels(source, dataset, split):
    """Each RLE decodes to exactly the pixels of its source nucleus in the (transformed) crop; area and bbox match."""
    _, labels = source
    _, cocos = dataset
    coco = cocos[split]
    images = {img['id']: img for img in coco['images']}
    for ann in coco['annotations']:
        img = images[ann['image_id']]
        y0, x0, y1, x1 = img['source_box']
        expected = apply_dihedral(labels[y0:y1, x0:x1], img['transform']) == ann['source_label']
        decoded = mask_utils.decode(ann['segmentation']).astype(bool)
        assert decoded.shape == (img['height'], img['width'])
        np.testing.assert_array_equal(decoded, expected)
        assert ann['area'] == decoded.sum() >= MIN_FRAGMENT_AREA
        ys, xs = np.nonzero(decoded)
        assert ann['bbox'] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert ann['iscrowd'] == 0 and ann['category_id'] == 1


def test_images_are_8bit_rgb_pngs(dataset):
    import cv2

    out_dir, cocos = dataset
    brightest = 0
    for split, coco in cocos.items():
        for img in coco['images']:
            pixels = cv2.imread(osp.join(out_dir, split, img['file_name']), cv2.IMREAD_UNCHANGED)
            assert pixels.dtype == np.uint8 and pixels.shape == (img['height'], img['width'], 3)
            assert (pixels == pixels[:, :, :1]).all()  # grey replicated to three channels
            assert pixels.max() > 100 and pixels.min() < 40  # stretched, not a flat or dark image
            brightest = max(brightest, int(pixels.max()))
    assert brightest == 255  # the training-region 99.8th percentile saturates


def test_annotation_files_pass_the_check(dataset):
    out_dir, cocos = dataset
    for split in ('train', 'val'):
        coco = check_coco_annotations(ann_file_path(out_dir, split))
        assert coco['categories'] == [{'id': 1, 'name': 'nucleus', 'supercategory': 'cell'}]
        assert len(coco['annotations']) == len(cocos[split]['annotations'])


def test_rebuild_is_skipped_unless_invalid_or_forced(dataset, tmp_path):
    out_dir, _ = dataset
    _, built = make_demo_dataset(out_dir, seed=0)
    assert not built
    fresh = str(tmp_path / 'demo')  # an empty folder is built
    _, built = make_demo_dataset(fresh, seed=0)
    assert built
    from stvit_det.datasets.demo_nuclei_seg import SEG_DIR, make_seg_demo_dataset
    assert make_seg_demo_dataset(fresh, seed=0)[1] and osp.isdir(osp.join(fresh, SEG_DIR))
    _, built = make_demo_dataset(fresh, seed=1)  # another seed is another dataset
    assert built
    # the label maps of the seed-0 views went with them (they would pass every check beside the new images)
    assert not osp.exists(osp.join(fresh, SEG_DIR))
    assert make_seg_demo_dataset(fresh, seed=1)[1]
    with open(ann_file_path(fresh, 'val'), 'w') as f:
        f.write('{"images": [')  # corrupt -> rebuilt
    _, built = make_demo_dataset(fresh, seed=1)
    assert built
    check_coco_annotations(ann_file_path(fresh, 'val'))
    _, built = make_demo_dataset(fresh, seed=1, force=True)
    assert built
    # an interrupted build (build_info.json marked incomplete) is redone
    with open(osp.join(fresh, 'build_info.json'), 'w') as f:
        json.dump({'settings': None, 'complete': False}, f)
    _, built = make_demo_dataset(fresh, seed=1)
    assert built
    # ... as is one whose counts were edited away (a split missing, not a mapping, not an object at all)
    info_path = osp.join(fresh, 'build_info.json')
    with open(info_path) as f:
        info = json.load(f)
    for damaged in (dict(info, counts={'train': info['counts']['train']}), dict(info, counts=[1, 2]), [info]):
        with open(info_path, 'w') as f:
            json.dump(damaged, f)
        with pytest.raises(ValueError, match='the build did not finish'):
            validate_demo_dataset(fresh)
        assert make_demo_dataset(fresh, seed=1)[1]


def test_files_no_build_wrote_are_kept_unless_forced(tmp_path):
    """A folder that holds the layout's files but no build_info.json (the user's own dataset) is not overwritten."""
    own = tmp_path / 'mine'
    (own / 'annotations').mkdir(parents=True)
    (own / 'train').mkdir()
    (own / 'annotations' / 'instances_train.json').write_text('{"my": "annotations"}')
    (own / 'train' / 'nuclei_train_000.png').write_bytes(b'my image')
    with pytest.raises(FileExistsError, match=r'holds files this build would replace, and no build_info\.json .*'
                                              r'instances_train\.json, .*nuclei_train_000\.png; choose another --out, '
                                              r'or --force'):
        make_demo_dataset(str(own), seed=0)
    assert (own / 'annotations' / 'instances_train.json').read_text() == '{"my": "annotations"}'
    assert (own / 'train' / 'nuclei_train_000.png').read_bytes() == b'my image'
    _, built = make_demo_dataset(str(own), seed=0, force=True)
    assert built and (own / 'annotations' / 'instances_train.json').read_text() != '{"my": "annotations"}'


def test_a_seg_maps_folder_no_build_wrote_is_kept_unless_forced(tmp_path):
    """The build replaces its derived ``seg_maps/`` folder (the segmentation demo's label maps): one that no
    build of ours wrote is the user's, and is refused like the other paths, not deleted."""
    own = tmp_path / 'mine'
    (own / 'seg_maps' / 'mine').mkdir(parents=True)
    (own / 'seg_maps' / 'mine' / 'label_0001.png').write_bytes(b'precious')
    with pytest.raises(FileExistsError, match=r'no build_info\.json .*seg_maps; choose another --out'):
        make_demo_dataset(str(own), seed=0)
    assert (own / 'seg_maps' / 'mine' / 'label_0001.png').read_bytes() == b'precious'
    assert sorted(p.name for p in own.iterdir()) == ['seg_maps']


@pytest.mark.parametrize('val_quadrant', range(4))
def test_train_crops_cover_exactly_the_other_quadrants(val_quadrant):
    shape = (512, 512)
    covered = np.zeros(shape, dtype=bool)
    for y0, x0, y1, x1 in train_crop_boxes(shape, val_quadrant, crop_size=256, stride=64):
        assert (y1 - y0, x1 - x0) == (256, 256)
        covered[y0:y1, x0:x1] = True
    expected = np.ones(shape, dtype=bool)
    qy0, qx0, qy1, qx1 = quadrant_box(val_quadrant, shape)
    expected[qy0:qy1, qx0:qx1] = False
    np.testing.assert_array_equal(covered, expected)


def test_fragments_below_the_limit_are_dropped_whole_nuclei_kept():
    labels = np.zeros((20, 20), dtype=np.int64)
    labels[0:3, 0:3] = 1  # 9 px, a fragment of a 50 px nucleus -> dropped
    labels[5:8, 5:8] = 2  # 9 px, a whole (tiny) nucleus -> kept
    labels[10:20, 10:13] = 3  # 30 px fragment -> kept
    anns = labels_to_coco_annotations(labels, full_areas={1: 50, 2: 9, 3: 40}, min_fragment_area=20)
    assert [(a['source_label'], a['area'], a['bbox']) for a in anns] == [(2, 9, [5.0, 5.0, 3.0, 3.0]),
                                                                         (3, 30, [10.0, 10.0, 3.0, 10.0])]


def test_dihedral_transforms_are_the_eight_distinct_symmetries():
    square = np.arange(16).reshape(4, 4)
    outputs = {apply_dihedral(square, name).tobytes() for name in DIHEDRAL}
    assert len(outputs) == 8
    with pytest.raises(ValueError, match='unknown transform'):
        apply_dihedral(square, 'rot45')


@pytest.mark.parametrize('split', ['train', 'val'])
def test_semantic_label_maps_agree_with_the_instance_masks(dataset, split):
    """The segmentation demo's label maps (nucleus = 1) hold every annotated nucleus pixel of the same image; the
    only other nucleus pixels are the fragments too small to annotate (under MIN_FRAGMENT_AREA each)."""
    import cv2

    from stvit_det.datasets.demo_nuclei_seg import SEG_DIR, make_seg_demo_dataset

    out_dir, cocos = dataset
    make_seg_demo_dataset(out_dir, seed=0)  # reuses the instance build, writes the label maps
    coco = cocos[split]
    union, label_total, mask_total = {}, 0, 0
    for ann in coco['annotations']:
        mask = mask_utils.decode(ann['segmentation']).astype(bool)
        union[ann['image_id']] = union.get(ann['image_id'], np.zeros_like(mask)) | mask
    for img in coco['images']:
        label = cv2.imread(osp.join(out_dir, SEG_DIR, split, img['file_name']), cv2.IMREAD_UNCHANGED)
        instances = union.get(img['id'], np.zeros(label.shape, bool))
        assert label.shape == instances.shape and set(np.unique(label).tolist()) <= {0, 1}
        assert not (instances & (label == 0)).any(), img['file_name']  # every annotated pixel is nucleus
        extra = ((label == 1) & ~instances).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(extra, connectivity=4)
        assert all(area < MIN_FRAGMENT_AREA for area in stats[1:, cv2.CC_STAT_AREA]), img['file_name']
        label_total, mask_total = label_total + int(label.sum()), mask_total + int(instances.sum())
    assert mask_total >= 0.99 * label_total


def test_tool_names_an_output_it_cannot_make(tmp_path, monkeypatch):
    """tools/make_demo_dataset.py: --out under a file (or where it may not write) is one line, not a traceback."""
    import runpy
    import sys

    (tmp_path / 'a_file').write_text('')
    tool = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'tools', 'make_demo_dataset.py')
    monkeypatch.setattr(sys, 'argv', ['make_demo_dataset.py', '--out', str(tmp_path / 'a_file' / 'demo')])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(tool, run_name='__main__')
    assert str(info.value.code).startswith('make_demo_dataset.py: error: [Errno 20] Not a directory')
