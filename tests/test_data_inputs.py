"""Malformed inputs end in one clear line naming the file and the problem, not in a library's traceback: COCO
annotation fields of the wrong type, checkpoint files that are empty / text / a directory / a plain pickle, an
STViTR init_cfg that --cfg-options split into a list, and ONNX graphs that fail at run time or take no input."""
import argparse
import copy
import importlib.util
import json
import os.path as osp
import pickle
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
    for unreadable in ([[0, 0, 2]], []):
        with pytest.raises(Exception):
            frPyObjects(unreadable, 8, 8)


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
