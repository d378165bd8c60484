"""Malformed inputs end in one clear line naming the file and the problem, not in a library's traceback: COCO
annotation fields of the wrong type, checkpoint files that are empty / text / a directory / a plain pickle, an
STViTR init_cfg that --cfg-options split into a list, and ONNX graphs that fail at run time or take no input."""
import argparse
import copy
import importlib.util
import json
import os.path as osp
import pickle
import re
import sys
import warnings

import numpy as np
import pytest
import torch

from stvit_det.datasets import CocoAnnotationError, check_coco_annotations
from stvit_det.utils.ckpt_file import CheckpointError, check_backbone_init_checkpoint, read_checkpoint

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO_CONFIG = osp.join(ROOT, 'configs', 'stvit-r', 'mask-rcnn_stvit-r-demo_fpn_nuclei.py')

VALID = {
    'images': [{'id': 1, 'file_name': 'a.png', 'height': 8, 'width': 8}],
    'annotations': [{'id': 1, 'image_id': 1, 'category_id': 1, 'bbox': [0, 0, 2, 3], 'area': 6, 'iscrowd': 0,
                     'segmentation': [[0, 0, 2, 0, 2, 3]]}],
    'categories': [{'id': 1, 'name': 'nucleus'}],
}


def _coco(tmp_path, edit=None, name='ann.json'):
    coco = copy.deepcopy(VALID)
    if edit:
        edit(coco)
    path = tmp_path / name
    path.write_text(json.dumps(coco))
    return str(path)


def _image(**fields):
    return lambda c: c['images'][0].update(fields)


def _ann(**fields):
    return lambda c: c['annotations'][0].update(fields)


# ------------------------------------------------------------------------------------------ COCO field types
BAD_FIELDS = {
    'list image id': (_image(id=[1]), r"images\[0\] has the id \[1\] \(a list\); expected an integer or a string"),
    'bool image id': (_image(id=True), r"images\[0\] has the id True \(a bool\)"),
    'list category id': (lambda c: c['categories'][0].update(id=[1]), r"categories\[0\] has the id \[1\]"),
    'list image_id': (_ann(image_id=[1]), r"annotations\[0\] \(id 1\) has the image_id \[1\] \(a list\)"),
    'dict category_id': (_ann(category_id={'a': 1}), r"annotations\[0\] \(id 1\) has the category_id \{'a': 1\}"),
    'text height': (_image(height='big'), r"images\[0\] \(id 1\) has the height 'big'; expected a positive number"),
    'zero width': (_image(width=0), r"images\[0\] \(id 1\) has the width 0; expected a positive number"),
    'file_name number': (_image(file_name=3), r"images\[0\] \(id 1\) has the file_name 3; expected a non-empty "),
    'text polygon': (_ann(segmentation=[[0, 0, 2, 0, 2, 3], ['0', '0', '2', '0', '2', '3']]),
                     r"polygon 1 holds '0', not a number"),
    'flat polygon': (_ann(segmentation=[0, 0, 2, 0, 2, 3]), r'polygon 0 is 0, not a list of x, y numbers'),
}


@pytest.mark.parametrize('case', sorted(BAD_FIELDS))
def test_coco_field_of_the_wrong_type_is_named(tmp_path, case):
    edit, problem = BAD_FIELDS[case]
    path = _coco(tmp_path, edit)
    with pytest.raises(CocoAnnotationError, match=problem) as info:
        check_coco_annotations(path)
    assert str(info.value).startswith(f'{path}: ') and '\n' not in str(info.value)


def test_coco_forms_mmdet_and_pycocotools_accept_pass(tmp_path):
    """String image / category ids, a float size, RLE (compressed or not) and an empty polygon list all load in
    mmdet and pycocotools: accepted. Annotation ids must be numbers where COCOeval reads them."""
    def edit(c):
        c['images'][0].update(id='img-a', height=8.0)
        c['categories'][0]['id'] = 'cat'
        c['annotations'][0].update(image_id='img-a', category_id='cat')
        c['annotations'].append(dict(c['annotations'][0], id=2, segmentation={'size': [8, 8], 'counts': 'P2'}))
        c['annotations'].append(dict(c['annotations'][0], id=3, segmentation={'size': [8, 8], 'counts': [8, 56]}))
        c['annotations'].append(dict(c['annotations'][0], id=4, segmentation=[]))
    path = _coco(tmp_path, edit)
    assert check_coco_annotations(path)['images'][0]['id'] == 'img-a'
    named = _coco(tmp_path, _ann(id='x'), 'named.json')
    check_coco_annotations(named)  # mmdet trains with it
    with pytest.raises(CocoAnnotationError, match=r"annotations\[0\] has the id 'x' \(a str\); expected an integer "
                                                  r"\(COCO evaluation stores annotation ids as numbers\)"):
        check_coco_annotations(named, evaluated=True)


def test_degenerate_polygons_pass_unless_pycocotools_evaluation_cannot_read_them(tmp_path):
    """mmdet's LoadAnnotations drops polygons with an odd count or fewer than 3 points, so a training file may hold
    them; only the ground truth of a segm COCOeval must not start with one of fewer than 4 values, nor hold an empty
    polygon list (frPyObjects refuses both; a bbox evaluation never converts them)."""
    path = _coco(tmp_path, _ann(segmentation=[[0, 0, 2]]))
    check_coco_annotations(path)
    check_coco_annotations(path, evaluated=True)
    with pytest.raises(CocoAnnotationError, match=r"annotations\[0\] \(id 1\) has a malformed segmentation: "
                                                  r"polygon 0 has 3 values, which pycocotools cannot read"):
        check_coco_annotations(path, evaluated=True, segm_evaluated=True)
    empty = _coco(tmp_path, _ann(segmentation=[]), 'empty.json')
    with pytest.raises(CocoAnnotationError, match=r"no polygon, which pycocotools cannot read in the segm"):
        check_coco_annotations(empty, evaluated=True, segm_evaluated=True)
    later = _coco(tmp_path, _ann(segmentation=[[0, 0, 2, 0, 2, 3], [0, 0, 2], [0, 0, 2, 0, 2, 3, 1]]), 'later.json')
    check_coco_annotations(later, evaluated=True, segm_evaluated=True)
    from pycocotools.mask import frPyObjects
    frPyObjects([[0, 0, 2, 0, 2, 3], [0, 0, 2], [0, 0, 2, 0, 2, 3, 1]], 8, 8)  # what COCOeval does with it
    for unreadable in ([[0, 0, 2]], [], [[0, 0, 2, 3]]):
        with pytest.raises(Exception):
            frPyObjects(unreadable, 8, 8)
    box_like = _coco(tmp_path, _ann(segmentation=[[0, 0, 2, 3]]), 'box_like.json')  # read as a box, then refused
    with pytest.raises(CocoAnnotationError, match=r"polygon 0 has 4 values, which pycocotools cannot read"):
        check_coco_annotations(box_like, evaluated=True, segm_evaluated=True)
    bare = _coco(tmp_path, lambda c: c['annotations'][0].pop('segmentation'), 'bare.json')
    check_coco_annotations(bare, evaluated=True)
    with pytest.raises(CocoAnnotationError, match=r"annotations\[0\] \(id 1\) has no segmentation, which the segm "
                                                  r"evaluation reads"):
        check_coco_annotations(bare, evaluated=True, segm_evaluated=True)


def test_rle_of_another_size_than_its_image(tmp_path):
    """mmdet reshapes a decoded RLE to its image's height and width without a check: a transposed or foreign mask
    would train silently scrambled, and COCOeval would compare masks of different sizes. Checked where masks are
    read: a pipeline that loads them, a segm evaluation of its category."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(np.ones((8, 16), np.uint8)))
    rle['counts'] = rle['counts'].decode()
    wide = _image(height=8, width=16)
    check_coco_annotations(_coco(tmp_path, lambda c: (wide(c), _ann(segmentation=rle)(c)), 'fits.json'))
    path = _coco(tmp_path, lambda c: (_image(height=16, width=8)(c), _ann(segmentation=rle)(c)))
    check_coco_annotations(path, evaluated=True)  # boxes only: the mask is never read
    with pytest.raises(CocoAnnotationError, match=r"annotations\[0\] \(id 1\) has an RLE segmentation of size "
                                                  r"\[8, 16\], but its image 'a\.png' is \[16, 8\]"):
        check_coco_annotations(path, evaluated=True, segm_evaluated=True)
    check_coco_annotations(path, evaluated=True, segm_evaluated=True, segm_classes=('other', ))  # not evaluated
    from stvit_det.datasets import DatasetCheckError
    with pytest.raises(DatasetCheckError, match=r"annotations\[0\] \(id 1\) has an RLE segmentation of size "
                                                r"\[8, 16\].*\(train_dataloader\.dataset\)"):
        _check(train_dataloader=_loader(tmp_path, path, with_mask=True))
    assert _check(train_dataloader=_loader(tmp_path, path))


def test_the_evaluator_metric_decides_whether_polygons_must_convert(tmp_path):
    """From a config: CocoMetric's default metric is bbox (polygons never converted), a segm metric converts them."""
    from stvit_det.datasets import check_dataset_cfgs

    path = _coco(tmp_path, _ann(segmentation=[[0, 0, 2]]))
    (tmp_path / 'a.png').write_bytes(b'')
    loader = dict(dataset=dict(type='CocoDataset', ann_file=path, data_prefix=dict(img=str(tmp_path)),
                               metainfo=dict(classes=('nucleus', ))))
    for metric, refused in ((None, False), ('bbox', False), (['bbox', 'segm'], True), ('segm', True)):
        cfg = dict(default_scope='mmdet', test_dataloader=loader, test_evaluator=dict(
            type='CocoMetric', ann_file=path, **({} if metric is None else dict(metric=metric))))
        if refused:
            with pytest.raises(CocoAnnotationError, match='polygon 0 has 3 values'):
                check_dataset_cfgs(cfg, phases=('test', ))
        else:
            assert ('test_evaluator', path) in check_dataset_cfgs(cfg, phases=('test', ))


# ------------------------------------------------------------------------------------------ CocoDataset configs
def _png(path, h=8, w=8, exif=None):
    from PIL import Image

    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(path, exif=exif or Image.Exif())


def _loader(tmp_path, ann, classes=('nucleus', ), with_mask=False, **dataset):
    if not (tmp_path / 'a.png').exists():
        _png(tmp_path / 'a.png')
    pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True, with_mask=with_mask)]
    return dict(dataset=dict(type='CocoDataset', ann_file=ann, data_prefix=dict(img=str(tmp_path)),
                             metainfo=dict(classes=classes), pipeline=pipeline, **dataset))


def _check(**cfg):
    from stvit_det.datasets import check_dataset_cfgs

    return check_dataset_cfgs(dict(default_scope='mmdet', **cfg), phases=('train', 'test'))


def _two_categories(c):
    c['categories'] = [{'id': 1, 'name': 'cat'}, {'id': 2, 'name': 'dog'}]


def test_classes_are_checked_as_mmdet_numbers_them(tmp_path):
    """mmdet picks the categories by name in the file's order: classes listed in another order name every label
    wrongly, a name two categories share makes two labels of one class; and no head may have fewer classes (training
    stops on a label out of range)."""
    from stvit_det.datasets import DatasetCheckError

    path = _coco(tmp_path, _two_categories)
    assert _check(train_dataloader=_loader(tmp_path, path, ('cat', 'dog')))
    with pytest.raises(DatasetCheckError, match=r"the classes of train_dataloader\.dataset are listed in another "
                                                r"order than the file's categories; .* list them as \('cat', 'dog'\)"):
        _check(train_dataloader=_loader(tmp_path, path, ('dog', 'cat')))
    shared = _coco(tmp_path, lambda c: c['categories'].append({'id': 2, 'name': 'nucleus'}), 'shared.json')
    with pytest.raises(DatasetCheckError, match=r"2 categories \(ids 1, 2\) are named 'nucleus', a class of "
                                                r"train_dataloader\.dataset: mmdet would make 2 labels of it"):
        _check(train_dataloader=_loader(tmp_path, shared))
    model = dict(roi_head=dict(bbox_head=[dict(num_classes=2), dict(num_classes=1)],
                               mask_head=dict(num_classes=1, class_agnostic=True)),  # one mask per box: no count
                 rpn_head=dict(num_classes=1))
    assert _check(train_dataloader=_loader(tmp_path, path, ('cat', 'dog')),
                  model=dict(model, roi_head=dict(model['roi_head'], bbox_head=[dict(num_classes=2)] * 2)))
    with pytest.raises(DatasetCheckError, match=r"^model\.roi_head\.bbox_head\.1\.num_classes is 1, but "
                                                r"train_dataloader\.dataset has 2 classes \('cat', 'dog'\): labels "
                                                r"from 1 on would be out of range; set "
                                                r"model\.roi_head\.bbox_head\.1\.num_classes=2"):
        _check(train_dataloader=_loader(tmp_path, path, ('cat', 'dog')), model=model)
    # more classes in the head than in the dataset: mmdet's open-vocabulary configs evaluate 80-class heads so
    assert _check(test_dataloader=_loader(tmp_path, path, ('cat', 'dog')), model=dict(bbox_head=dict(num_classes=80)))


def test_instances_without_masks_when_the_pipeline_loads_masks(tmp_path):
    """mmdet makes no mask of an empty or absent segmentation and LoadAnnotations(with_mask=True) then stops with
    KeyError 'mask'; annotations mmdet drops anyway (ignored, empty box, another class) may lack one."""
    from stvit_det.datasets import DatasetCheckError

    bare = _coco(tmp_path, lambda c: c['annotations'][0].pop('segmentation'))
    assert _check(train_dataloader=_loader(tmp_path, bare))  # boxes only: fine
    with pytest.raises(DatasetCheckError, match=r"annotations\[0\] \(id 1\) has no segmentation, but the pipeline "
                                                r"of train_dataloader\.dataset loads masks .*KeyError 'mask'"):
        _check(train_dataloader=_loader(tmp_path, bare, with_mask=True))
    empty = _coco(tmp_path, _ann(segmentation=[]), 'empty.json')
    with pytest.raises(DatasetCheckError, match=r"has an empty segmentation, but the pipeline of test_dataloader"):
        _check(test_dataloader=_loader(tmp_path, empty, with_mask=True, test_mode=True))
    for dropped in (dict(ignore=1), dict(bbox=[0, 0, 0.5, 3]), dict(area=0), dict(bbox=[9, 9, 2, 2])):
        _check(train_dataloader=_loader(tmp_path, _coco(tmp_path, lambda c: (_ann(segmentation=[])(c),
                                                                                _ann(**dropped)(c))), with_mask=True))


def test_filter_cfg_that_leaves_no_training_image(tmp_path):
    """mmdet's filter_cfg drops images without annotations of the classes and images under min_size; a dataset
    left empty stopped the Runner in numpy ('need at least one array to concatenate')."""
    from stvit_det.datasets import DatasetCheckError

    def other_class(c):
        _two_categories(c)
        c['categories'][0]['name'] = 'nucleus'
        c['annotations'][0]['category_id'] = 2

    path = _coco(tmp_path, other_class)
    keep_empty = _loader(tmp_path, path, filter_cfg=dict(filter_empty_gt=False))
    assert _check(train_dataloader=keep_empty)
    with pytest.raises(DatasetCheckError, match=r"no image has an annotation of the classes of "
                                                r"train_dataloader\.dataset, so its filter_cfg"):
        _check(train_dataloader=_loader(tmp_path, path, filter_cfg=dict(filter_empty_gt=True)))
    assert _check(test_dataloader=_loader(tmp_path, path, filter_cfg=dict(filter_empty_gt=True), test_mode=True))
    with pytest.raises(DatasetCheckError, match=r"every image is smaller than the min_size=32 of the filter_cfg"):
        _check(train_dataloader=_loader(tmp_path, path, filter_cfg=dict(filter_empty_gt=False, min_size=32)))
    none = _coco(tmp_path, lambda c: c.update(annotations=[]), 'none.json')
    with pytest.raises(DatasetCheckError, match=r"\(the file has no annotations\)"):
        _check(train_dataloader=_loader(tmp_path, none, filter_cfg=dict(filter_empty_gt=True)))


def test_image_info_files_and_other_formats(tmp_path):
    """A COCO test-dev image-info file (no annotations) serves a test_mode dataset and a format_only CocoMetric;
    training and scoring still need annotations. JSON files of other readers (mmdet's panoptic dataset, MMPretrain's
    OpenMMLab 2.0 lists) are only found, not read as COCO instances."""
    from stvit_det.datasets import DatasetCheckError

    info = _coco(tmp_path, lambda c: c.pop('annotations'), 'image_info.json')
    assert _check(test_dataloader=_loader(tmp_path, info, test_mode=True),
                  test_evaluator=dict(type='CocoMetric', ann_file=info, format_only=True, outfile_prefix='x'))
    with pytest.raises(DatasetCheckError, match=r"image_info\.json: not a COCO annotation file, lacks 'annotations'"):
        _check(test_dataloader=_loader(tmp_path, info, test_mode=True),
               test_evaluator=dict(type='CocoMetric', ann_file=info))
    with pytest.raises(DatasetCheckError, match=r"lacks 'annotations'"):
        _check(train_dataloader=_loader(tmp_path, info))
    listing = tmp_path / 'list.json'
    listing.write_text(json.dumps({'metainfo': {'classes': ['a']}, 'data_list': [{'img_path': 'a.png'}]}))
    panoptic = dict(type='CocoPanopticDataset', ann_file=str(listing), data_prefix=dict(img=str(tmp_path)))
    assert _check(train_dataloader=dict(dataset=panoptic),
                  test_evaluator=dict(type='CocoPanopticMetric', ann_file=str(listing)))
    (tmp_path / 'gone.json').write_text('{}')
    with pytest.raises(DatasetCheckError, match=r"not a COCO annotation file"):  # a CocoDataset still reads it
        _check(train_dataloader=_loader(tmp_path, str(tmp_path / 'gone.json')))


def test_classes_written_as_a_string(tmp_path):
    """('nucleus') is the string 'nucleus', not a tuple: mmengine would keep it and count 7 classes. A string that
    names a file of names stays allowed."""
    from stvit_det.datasets import DatasetCheckError

    path = _coco(tmp_path)
    with pytest.raises(DatasetCheckError, match=r"^train_dataloader\.dataset\.metainfo\.classes is the string "
                                                r"'nucleus', which names no file of class names: .*\('nucleus', \)"):
        _check(train_dataloader=_loader(tmp_path, path, classes='nucleus'))
    (tmp_path / 'names.txt').write_text('nucleus\n')
    assert _check(train_dataloader=_loader(tmp_path, path, classes=str(tmp_path / 'names.txt')))
    with pytest.raises(DatasetCheckError, match=r"^test_dataloader\.dataset\.classes is the string 'cat'"):
        _check(test_dataloader=dict(dataset=dict(type='mmpretrain.CustomDataset', data_prefix=str(tmp_path),
                                                 classes='cat')))


def test_image_link_whose_target_is_gone(tmp_path):
    from stvit_det.datasets import DatasetCheckError

    path = _coco(tmp_path, _ann(category_id=1))
    loader = _loader(tmp_path, path)
    (tmp_path / 'a.png').unlink()
    (tmp_path / 'a.png').symlink_to(tmp_path / 'moved' / 'a.png')
    with pytest.raises(DatasetCheckError, match=r"1 of its 1 images are not in .*images\[0\] file_name 'a\.png' "
                                                r"\(a link whose target is missing\)"):
        _check(train_dataloader=loader)
    (tmp_path / 'moved').mkdir()
    _png(tmp_path / 'moved' / 'a.png')
    assert _check(train_dataloader=loader)


def test_images_that_decode_to_another_size_than_listed(tmp_path, monkeypatch):
    """mmdet never compares an image with the height and width its file lists: a resized image, or a phone photo
    whose EXIF orientation cv2 applies, gets misplaced boxes and masks silently. Refused where a box reaches beyond
    the image as LoadImageFromFile decodes it (its color_type decides the EXIF turn); sizes are read from the
    headers, only of images with instances, and remembered by file stamp."""
    from PIL import Image

    from stvit_det.datasets import DatasetCheckError

    monkeypatch.setenv('STVIT_DATA_CHECK_CACHE', str(tmp_path / 'cache'))
    path = _coco(tmp_path, lambda c: (_image(height=8, width=12)(c), _ann(bbox=[0, 0, 12, 3], area=36)(c)))
    _png(tmp_path / 'a.png', 8, 12)
    assert _check(train_dataloader=_loader(tmp_path, path))
    _png(tmp_path / 'a.png', 8, 10)  # resized after annotation
    with pytest.raises(DatasetCheckError, match=r"ann\.json: 1 of its 1 images are not the size it gives and have "
                                                r"boxes beyond the image \(train_dataloader\.dataset\), e\.g\. "
                                                r"images\[0\] file_name 'a\.png': 8x12 \(HxW\) in the file, 8x10 as "
                                                r"the pipeline decodes it; its box \[0, 0, 12, 3\] would be misplaced"):
        _check(train_dataloader=_loader(tmp_path, path))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 8x12 (as annotated), shown (and decoded by cv2) 12x8
    _png(tmp_path / 'a.png', 8, 12, exif)
    with pytest.raises(DatasetCheckError, match=r"8x12 \(HxW\) in the file, 12x8 as the pipeline decodes it: its "
                                                r"EXIF orientation turns it; .*color_type='color_ignore_orientation'"):
        _check(train_dataloader=_loader(tmp_path, path))
    unturned = _loader(tmp_path, path)
    unturned['dataset']['pipeline'][0]['color_type'] = 'color_ignore_orientation'
    assert _check(train_dataloader=unturned)
    # boxes drawn on the turned photo while the file lists the stored size (some tools export so): they fit
    drawn_turned = _coco(tmp_path, lambda c: (_image(height=8, width=12)(c), _ann(bbox=[0, 0, 7, 11], area=77)(c)),
                         'turned.json')
    assert _check(train_dataloader=_loader(tmp_path, drawn_turned))
    background = _coco(tmp_path, lambda c: (_image(height=8, width=12)(c), c.update(annotations=[])), 'bg.json')
    assert _check(test_dataloader=_loader(tmp_path, background, test_mode=True))  # nothing to misplace
    reads = []
    monkeypatch.setattr('stvit_det.datasets.seg_check.image_size', lambda *a: reads.append(a) or (8, 12))
    assert _check(train_dataloader=unturned) and reads == []  # remembered
    (tmp_path / 'a.png').write_bytes(b'not a png')
    monkeypatch.undo()
    monkeypatch.setenv('STVIT_DATA_CHECK_CACHE', '')
    with pytest.raises(DatasetCheckError, match=r"ann\.json: image file cannot be read: .*a\.png .*"
                                                r"\(train_dataloader\.dataset\)"):
        _check(train_dataloader=unturned)


# ------------------------------------------------------------------------------------------ checkpoint files
def test_checkpoint_files_that_are_not_checkpoints(tmp_path):
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    with pytest.raises(CheckpointError, match=r'empty\.pth: .*the file is empty') as info:
        read_checkpoint(str(empty))
    assert 'EOFError' not in str(info.value)
    text = tmp_path / 'notes.pth'
    text.write_text('epochs = 12\n')
    with pytest.raises(CheckpointError, match=r'notes\.pth: .*a text file, not a PyTorch checkpoint') as info:
        read_checkpoint(str(text))
    assert 'KeyError' not in str(info.value)
    folder = tmp_path / 'run.pth'
    folder.mkdir()
    with pytest.raises(CheckpointError, match=r'run\.pth: a directory, not a checkpoint file'):
        read_checkpoint(str(folder))
    good = tmp_path / 'good.pth'
    torch.save({'state_dict': {'w': torch.ones(2)}}, good)
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(good.read_bytes()[:-200])
    with pytest.raises(CheckpointError, match=r'truncated\.pth: not a readable PyTorch checkpoint'):
        read_checkpoint(str(truncated))
    assert torch.equal(read_checkpoint(str(good), mmap=True)['state_dict']['w'], torch.ones(2))


def test_numpy_values_beside_the_weights(tmp_path):
    """Numeric numpy scalars and arrays of any width (a hook's logged np.float32, an int32 count) are plain values:
    read. A type the weights-only unpickler still refuses (complex numbers) is named, not called a truncated
    file."""
    ok = tmp_path / 'numpy_meta.pth'
    meta = {'lr': np.float32(0.5), 'n': np.int32(3), 'flag': np.bool_(True), 'hist': np.ones(3, np.float16)}
    torch.save({'state_dict': {'w': torch.ones(2)}, 'meta': meta}, ok)
    meta = read_checkpoint(str(ok))['meta']
    assert meta['lr'] == np.float32(0.5) and meta['n'] == 3 and meta['hist'].dtype == np.float16
    odd = tmp_path / 'complex.pth'
    torch.save({'state_dict': {'w': torch.ones(2)}, 'z': np.complex64(1j)}, odd)
    with pytest.raises(CheckpointError, match=r"complex\.pth: refused by the weights-only unpickler .*: it holds "
                                              r"<class 'numpy\.dtypes\.Complex64DType'>; if the file is trusted"):
        read_checkpoint(str(odd))


def test_safetensors_weights(tmp_path):
    """The hub's weight format (timm's Swin weights are model.safetensors), which torch.load reads: loaded by a
    backbone's init_cfg; a damaged one is named as such, not as 'neither a zip archive nor a pickle'."""
    from safetensors.torch import save_file

    from stvit_det import STViTR

    narrow = dict(embed_dims=16, depths=(1, 1, 6, 1), num_heads=(1, 1, 2, 2))
    src = STViTR(**narrow)
    torch.nn.init.normal_(src.layers[2].blocks[0].attn.qkv.weight)
    path = tmp_path / 'model.safetensors'
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    model = STViTR(**narrow, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in src.state_dict().items())
    damaged = tmp_path / 'damaged.safetensors'
    damaged.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r'damaged\.safetensors: not a readable PyTorch checkpoint \(truncated or '
                                              r'another kind of file\): a safetensors file torch cannot read'):
        read_checkpoint(str(damaged))


def test_plain_pickle_gives_the_error_without_a_warning_before_it(tmp_path):
    path = tmp_path / 'plain.pkl'
    path.write_bytes(pickle.dumps({'a': 1}, protocol=4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        with pytest.raises(CheckpointError, match=r'plain\.pkl: not a readable PyTorch checkpoint') as info:
            read_checkpoint(str(path))
    assert [str(w.message) for w in caught] == []
    # the unpickler's reason, not torch's advice to turn weights_only off
    assert 'UnpicklingError: Unsupported operand' in str(info.value) and 'weights_only' not in str(info.value)


# ------------------------------------------------------------------------------------------ STViTR init_cfg
def _cfg_options(*options):
    """``--cfg-options`` as the tools parse them (mmengine's DictAction)."""
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(['--cfg-options', *options]).cfg_options


BRACED = "model.backbone.init_cfg={'type':'Pretrained','checkpoint':'x.pth'}"


def test_init_cfg_split_by_cfg_options_is_refused_early():
    """DictAction splits a ``{...}`` value at its commas into a list of strings; STViTR's constructor refuses it
    inside the Runner, after the early check had built the backbone without its init_cfg."""
    from mmengine.config import Config

    options = _cfg_options(BRACED)
    assert options['model.backbone.init_cfg'] == ["{'type':'Pretrained", "checkpoint':'x.pth'}"]
    cfg = Config(dict(default_scope='mmdet', model=dict(type='MaskRCNN', backbone=dict(type='STViTR', init_cfg=None))))
    cfg.merge_from_dict(options)
    with pytest.raises(CheckpointError, match=r"model\.backbone\.init_cfg: STViTR's init_cfg is None or one "
                                              r"dict\(type='Pretrained', checkpoint=PATH\) .*got \[\"\{'type':"
                                              r".*--cfg-options splits a \{\.\.\.\} value at its commas"):
        check_backbone_init_checkpoint(cfg)
    cfg.model.backbone.init_cfg = dict(type='Kaiming', layer='Linear')
    with pytest.raises(CheckpointError, match=r"init_cfg is None or one dict.*got \{'type': 'Kaiming'"):
        check_backbone_init_checkpoint(cfg)
    cfg.model.backbone.init_cfg = [dict(type='Pretrained', checkpoint='/nope.pth')]  # the constructor takes it
    with pytest.raises(CheckpointError, match='nope.pth: checkpoint file not found'):
        check_backbone_init_checkpoint(cfg)


@pytest.mark.parametrize('script', ['train.py', 'test.py'])
def test_tools_stop_in_one_line_on_a_split_init_cfg(tmp_path, monkeypatch, script):
    import runpy

    ckpt = [str(tmp_path / 'fake.pth')] if script == 'test.py' else []
    if ckpt:
        (tmp_path / 'fake.pth').write_text('never loaded')
    monkeypatch.setattr(sys, 'argv', [script, DEMO_CONFIG, *ckpt, '--work-dir', str(tmp_path / 'wd'),
                                      '--cfg-options', BRACED])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(osp.join(ROOT, 'tools', script), run_name='__main__')
    msg = str(info.value.code)
    assert msg.startswith(f"{script}: error: ") and "STViTR's init_cfg is None or one dict" in msg, msg
    assert '\n' not in msg


# ------------------------------------------------------------------------------------------ benchmark_onnx.py
def _benchmark_tool():
    spec = importlib.util.spec_from_file_location('benchmark_onnx_tool',
                                                  osp.join(ROOT, 'tools', 'deployment', 'benchmark_onnx.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def _save_graph(path, nodes, inputs, initializers):
    import onnx
    from onnx import TensorProto, helper

    out = helper.make_tensor_value_info('y', TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, 'g', inputs, [out], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
    model.ir_version = 8  # what the installed ONNX Runtime reads
    onnx.save(model, str(path))
    return str(path)


def test_benchmark_onnx_graphs_that_cannot_be_timed(tmp_path, capfd):
    from onnx import TensorProto, helper, numpy_helper

    tool = _benchmark_tool()
    x = helper.make_tensor_value_info('x', TensorProto.FLOAT, [1, 6])
    good = _save_graph(tmp_path / 'good.onnx', [helper.make_node('Relu', ['x'], ['y'])], [x], [])
    shape = numpy_helper.from_array(np.array([4, 4], dtype=np.int64), 'shape')
    reshape = _save_graph(tmp_path / 'reshape.onnx', [helper.make_node('Reshape', ['x', 'shape'], ['y'])], [x],
                          [shape])
    const = numpy_helper.from_array(np.ones(2, dtype=np.float32), 'c')
    no_input = _save_graph(tmp_path / 'const.onnx', [helper.make_node('Identity', ['c'], ['y'])], [], [const])

    assert tool.main([good, '--repeats', '1', '--threads', '1']) == 0
    assert '| good.onnx | 1x6 ' in capfd.readouterr().out
    assert tool.main([good, reshape, '--repeats', '1', '--threads', '1']) == 1
    out, err = capfd.readouterr()  # ONNX Runtime's own log lines too
    assert err.startswith(f'error: ONNX Runtime cannot run {reshape}: ') and 'Reshape' in err, err
    assert err.count('\n') == 1 and out == ''
    assert tool.main([no_input, '--threads', '1']) == 1
    assert capfd.readouterr().err == (f'error: {no_input}: the graph has no inputs: there is nothing to give '
                                       'random data to\n')
    assert tool.main([good, '--warmup', '0', '--repeats', '1', '--threads', '1']) == 0


def test_a_checkpoint_the_user_may_not_read(tmp_path, monkeypatch):
    """torch.load's PermissionError (no read permission; root, as in CI, is never refused, hence the stand-in) is
    reported as such, not re-raised by the look at the file's first bytes."""
    path = tmp_path / 'locked.pth'
    path.write_bytes(b'PK\x03\x04')

    def refused(*args, **kwargs):
        raise PermissionError(13, 'Permission denied', str(path))

    monkeypatch.setattr(torch, 'load', refused)
    monkeypatch.setattr('builtins.open', refused)
    with pytest.raises(CheckpointError, match=r'locked\.pth: cannot read the file: Permission denied$'):
        read_checkpoint(str(path))


def test_checks_read_every_spelling_of_the_config(tmp_path):
    """The early checks read the same settings whatever their spelling: the model under ``test.py --tta``'s wrapper
    (``dict(type=TTA, module=model)``), a ``type`` given as the class (pure-Python configs), MMPretrain's
    ``data_prefix=dict(img_path=...)`` beside the plain string."""
    from mmengine.config import Config
    from mmpretrain.datasets import ImageNet

    from stvit_det import STViTR
    from stvit_det.datasets import DatasetCheckError
    from stvit_det.datasets import seg_check
    from stvit_det.datasets.coco_check import check_dataset_cfg, detector_head_classes

    def tta(cfg):
        wrapped = copy.deepcopy(cfg)
        wrapped.model = dict(type='DetTTAModel', module=wrapped.model)
        return wrapped

    det = Config.fromfile(DEMO_CONFIG)
    assert detector_head_classes(det) and detector_head_classes(tta(det)) == detector_head_classes(det)
    seg = Config.fromfile(osp.join(ROOT, 'configs', 'stvit-r-seg', 'stvit-r-demo_upernet_1xb4-400_nuclei-224x224.py'))
    seg.model.decode_head.ignore_index = 7
    assert seg_check._ignore_index(tta(seg)) == seg_check._ignore_index(seg) == 7
    assert seg_check._head_classes(seg) and seg_check._head_classes(tta(seg)) == seg_check._head_classes(seg)

    det.model.backbone.init_cfg = ['a', 'b']  # what --cfg-options makes of a {...} value
    for cfg in (det, tta(det)):
        for kind in ('STViTR', 'mmdet.STViTR', STViTR):
            cfg_kind = copy.deepcopy(cfg)
            (cfg_kind.model.get('module') or cfg_kind.model).backbone.type = kind
            with pytest.raises(CheckpointError, match=r"model\.backbone\.init_cfg: STViTR's init_cfg is None or one"):
                check_backbone_init_checkpoint(cfg_kind)

    for kind in ('ImageNet', ImageNet):  # MMPretrain's ImageNet reads data_root/split
        with pytest.raises(DatasetCheckError, match=r'image directory not found: .*val \(d\.data_root \+ split\)'):
            check_dataset_cfg(dict(type=kind, data_root=str(tmp_path), split='val'), 'd', scope='mmpretrain')
    (tmp_path / 'train' / 'cat').mkdir(parents=True)
    (tmp_path / 'train' / 'cat' / 'notes.txt').write_text('not an image')
    for prefix, where in (('train', 'data_prefix'), (dict(img_path='train'), 'data_prefix.img_path')):
        with pytest.raises(DatasetCheckError, match=rf'no image files .* \(d\.{re.escape(where)}\)'):
            check_dataset_cfg(dict(type='CustomDataset', data_root=str(tmp_path), data_prefix=prefix), 'd',
                              scope='mmpretrain')
