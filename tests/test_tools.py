"""Bad input gives clear errors: COCO annotation checks, the config dataset walk, and tools/train.py, tools/test.py
run as subprocesses (no training: every case stops before the Runner is built). Also: mmengine checkpoints load
under ``torch.load(weights_only=True)`` after ``allow_checkpoint_globals()``.
"""
import copy
import json
import os
import os.path as osp
import pickle
import subprocess
import sys

import pytest
import torch

from stvit_det.datasets import CocoAnnotationError, DatasetCheckError, check_coco_annotations, check_dataset_cfgs
from stvit_det.utils import allow_checkpoint_globals

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO_CONFIG = osp.join(ROOT, 'configs', 'stvit-r', 'mask-rcnn_stvit-r-demo_fpn_nuclei.py')

VALID = {
    'images': [{'id': 1, 'file_name': 'a.png', 'height': 8, 'width': 8}],
    'annotations': [{'id': 1, 'image_id': 1, 'category_id': 1, 'bbox': [0, 0, 2, 3], 'area': 6, 'iscrowd': 0}],
    'categories': [{'id': 1, 'name': 'nucleus'}],
}


def _write(path, content):
    with open(path, 'w') as f:
        f.write(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def _variant(edit):
    coco = copy.deepcopy(VALID)
    edit(coco)
    return coco


# ------------------------------------------------------------------------------------------ check_coco_annotations
def test_valid_file_passes(tmp_path):
    assert check_coco_annotations(_write(tmp_path / 'ok.json', VALID)) == VALID


BAD_FILES = {
    'not JSON': ('{"images": [1, 2', 'not a valid JSON file'),
    'a list': ('[]', 'expected an object'),
    'no categories': (_variant(lambda c: c.pop('categories')), "lacks 'categories'"),
    'no images key': (_variant(lambda c: c.pop('images')), "lacks 'images'"),
    'no images': (_variant(lambda c: c.update(images=[])), '"images" is empty'),
    'unknown image': (_variant(lambda c: c['annotations'][0].update(image_id=7)), 'unknown image_id 7'),
    'unknown category': (_variant(lambda c: c['annotations'][0].update(category_id=3)), 'unknown category_id 3'),
    'short bbox': (_variant(lambda c: c['annotations'][0].update(bbox=[0, 0, 2])), 'malformed bbox'),
    'negative bbox': (_variant(lambda c: c['annotations'][0].update(bbox=[0, 0, -2, 3])), 'malformed bbox'),
    'string bbox': (_variant(lambda c: c['annotations'][0].update(bbox='0 0 2 3')), 'malformed bbox'),
    'image lacks size': (_variant(lambda c: c['images'][0].pop('height')), "lacks 'height'"),
    'repeated id': (_variant(lambda c: c['annotations'].append(dict(c['annotations'][0]))), 'repeats id 1'),
    'bad segmentation': (_variant(lambda c: c['annotations'][0].update(segmentation={'x': 1})), 'segmentation'),
}


@pytest.mark.parametrize('case', sorted(BAD_FILES))
def test_bad_file_names_itself_and_the_problem(tmp_path, case):
    content, problem = BAD_FILES[case]
    path = _write(tmp_path / 'instances_bad.json', content)
    with pytest.raises(CocoAnnotationError) as info:
        check_coco_annotations(path)
    assert path in str(info.value) and problem in str(info.value)


def test_missing_file_names_itself(tmp_path):
    path = str(tmp_path / 'nope.json')
    with pytest.raises(CocoAnnotationError, match='not found') as info:
        check_coco_annotations(path)
    assert path in str(info.value)


# ------------------------------------------------------------------------------------------ check_dataset_cfgs
def _dataset(root, ann='ann.json', img='imgs/', classes=('nucleus', )):
    return dict(type='CocoDataset', data_root=str(root) + '/', ann_file=ann, data_prefix=dict(img=img),
                metainfo=dict(classes=classes))


@pytest.fixture
def good_root(tmp_path):
    (tmp_path / 'imgs').mkdir()
    (tmp_path / 'imgs' / 'a.png').write_bytes(b'')
    _write(tmp_path / 'ann.json', VALID)
    return tmp_path


def test_coco_dataset_classes_images_and_evaluation_fields(good_root):
    """What mmdet / pycocotools would otherwise stop on late or get silently wrong: config classes that are not
    category names of the file (mmdet drops them and shifts the remaining labels, or finds no image: the default
    COCO classes on a custom file), a listed image that is not on disk, an annotation without ``area``, and a
    ground truth for COCO evaluation without ``iscrowd``."""
    def cfg(**kw):
        return dict(train_dataloader=dict(dataset=_dataset(good_root, **kw)))

    assert check_dataset_cfgs(cfg(), phases=('train', ))
    with pytest.raises(DatasetCheckError, match=r"ann\.json: 1 of the 2 classes of train_dataloader\.dataset are not "
                                                r"category names of the file: 'cell' "
                                                r"\(its categories: \['nucleus'\]\)"):
        check_dataset_cfgs(cfg(classes=('nucleus', 'cell')), phases=('train', ))
    default = _dataset(good_root)
    default.pop('metainfo')
    with pytest.raises(DatasetCheckError, match=r"80 of the 80 classes .*'person', 'bicycle'"):
        check_dataset_cfgs(dict(train_dataloader=dict(dataset=default)), phases=('train', ))
    no_area = _write(good_root / 'no_area.json', _variant(lambda c: c['annotations'][0].pop('area')))
    with pytest.raises(CocoAnnotationError, match=r"no_area\.json: annotations\[0\] lacks 'area'"):
        check_coco_annotations(no_area)
    no_crowd = _write(good_root / 'no_crowd.json', _variant(lambda c: c['annotations'][0].pop('iscrowd')))
    check_coco_annotations(no_crowd)  # mmdet trains without it
    with pytest.raises(CocoAnnotationError, match=r"no_crowd\.json: annotations\[0\] lacks 'iscrowd'"):
        check_dataset_cfgs(dict(test_dataloader=dict(dataset=_dataset(good_root)),
                                test_evaluator=dict(type='CocoMetric', ann_file=no_crowd)), phases=('test', ))
    (good_root / 'imgs' / 'a.png').unlink()
    with pytest.raises(DatasetCheckError, match=r"ann\.json: 1 of its 1 images are not in .*imgs/ \(train_dataloader"
                                                r"\.dataset\), e\.g\. images\[0\] file_name 'a\.png'"):
        check_dataset_cfgs(cfg(), phases=('train', ))


def test_dataset_walk_checks_wrapped_datasets(good_root, tmp_path):
    bad = tmp_path / 'bad'
    (bad / 'imgs').mkdir(parents=True)
    _write(bad / 'ann.json', '{oops')
    wrapped = dict(
        type='RepeatDataset',
        times=2,
        dataset=dict(type='ConcatDataset', datasets=[_dataset(good_root), _dataset(bad)]))
    cfg = dict(train_dataloader=dict(dataset=wrapped), val_dataloader=None)
    with pytest.raises(CocoAnnotationError, match='not a valid JSON') as info:
        check_dataset_cfgs(cfg)
    assert str(bad / 'ann.json') in str(info.value)
    # the good one alone passes, and every path was looked at
    cfg['train_dataloader']['dataset']['dataset']['datasets'].pop()
    checked = [p for _, p in check_dataset_cfgs(cfg)]
    assert checked == [str(good_root / 'ann.json'), str(good_root) + '/imgs/']


def test_dataset_walk_reports_missing_image_dir_and_evaluator_file(good_root):
    cfg = dict(test_dataloader=dict(dataset=_dataset(good_root, img='missing/')))
    with pytest.raises(DatasetCheckError, match='image directory not found') as info:
        check_dataset_cfgs(cfg, phases=('test', ))
    assert str(good_root / 'missing/') in str(info.value)
    cfg = dict(
        test_dataloader=dict(dataset=_dataset(good_root)),
        test_evaluator=dict(type='CocoMetric', ann_file=str(good_root / 'gone.json')))
    with pytest.raises(CocoAnnotationError, match='annotation file not found'):
        check_dataset_cfgs(cfg, phases=('test', ))
    assert check_dataset_cfgs(cfg, phases=('train', )) == []  # phases without a dataloader are skipped


def test_classification_dataset_folders(tmp_path):
    """MMPretrain layouts: one image folder (``data_prefix`` string); ImageNet's ``data_root/split``; other types
    with ``split`` (CIFAR's batch files) keep their own layout and are not asked for a folder."""
    (tmp_path / 'train').mkdir()
    folder = dict(train_dataloader=dict(dataset=dict(type='CustomDataset', data_root=str(tmp_path),
                                                     data_prefix='train')))
    with pytest.raises(DatasetCheckError, match=r'image directory is empty: .*train \(train_dataloader\.dataset\.'
                                                r'data_prefix\)'):
        check_dataset_cfgs(folder, phases=('train', ))
    (tmp_path / 'train' / 'cat').mkdir()
    (tmp_path / 'train' / 'dog' / 'sub').mkdir(parents=True)
    (tmp_path / 'train' / 'dog' / 'notes.txt').write_text('')
    # class folders without a file of MMPretrain's extensions: its "Found 0 files" RuntimeError, here one line
    with pytest.raises(DatasetCheckError, match=r"no image files \(.jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif\) in "
                                                r'its class subfolders: .*train \(train_dataloader'):
        check_dataset_cfgs(folder, phases=('train', ))
    (tmp_path / 'train' / 'dog' / 'sub' / 'a.PNG').write_bytes(b'')  # found recursively, any case
    assert check_dataset_cfgs(folder, phases=('train', )) != []
    # classes named in the config: one subfolder each (MMPretrain asserts it)
    named = copy.deepcopy(folder)
    named['train_dataloader']['dataset']['metainfo'] = dict(classes=('cat', 'dog', 'bird'))
    with pytest.raises(DatasetCheckError, match=r'train has 2 class subfolders but the dataset has 3 classes'):
        check_dataset_cfgs(named, phases=('train', ))
    unlabelled = copy.deepcopy(folder)
    unlabelled['train_dataloader']['dataset'].update(with_label=False, extensions=('.jpg', ))
    with pytest.raises(DatasetCheckError, match=r"no image files \(.jpg\) in it: "):
        check_dataset_cfgs(unlabelled, phases=('train', ))
    with pytest.raises(DatasetCheckError, match=r'image directory not found: .*val \(val_dataloader\.dataset\.'
                                                r'data_root \+ split\)'):
        check_dataset_cfgs(dict(val_dataloader=dict(dataset=dict(
            type='mmpretrain.ImageNet', data_root=str(tmp_path), split='val'))), phases=('val', ))
    # ImageNet without an ann_file: MMPretrain needs its 1000 class folders, unless data_root/meta/{split}.txt
    # lists the images (its standard layout: val/ holds the images flat)
    imagenet = dict(train_dataloader=dict(dataset=dict(type='ImageNet', data_root=str(tmp_path), split='train')))
    with pytest.raises(DatasetCheckError, match=r'train has 2 class subfolders but the dataset has 1000 classes'):
        check_dataset_cfgs(imagenet, phases=('train', ))
    (tmp_path / 'meta').mkdir()
    (tmp_path / 'meta' / 'train.txt').write_text('dog/sub/a.PNG 1\n')
    assert check_dataset_cfgs(imagenet, phases=('train', )) != []
    assert check_dataset_cfgs(dict(train_dataloader=dict(dataset=dict(
        type='CIFAR10', data_root=str(tmp_path), split='train'))), phases=('train', )) == []


def test_demo_config_matches_the_built_dataset(tmp_path):
    """Every dataset path of the demo config exists once make_demo_dataset has built its layout."""
    from mmengine.config import Config

    from stvit_det.datasets import make_demo_dataset

    root = str(tmp_path / 'nuclei_demo') + '/'
    make_demo_dataset(root)
    cfg = Config.fromfile(DEMO_CONFIG)
    old_root = cfg.data_root
    for phase in ('train', 'val', 'test'):
        cfg[f'{phase}_dataloader'].dataset.data_root = root
    for phase in ('val', 'test'):
        cfg[f'{phase}_evaluator'].ann_file = cfg[f'{phase}_evaluator'].ann_file.replace(old_root, root)
    checked = check_dataset_cfgs(cfg)
    assert {p for _, p in checked} == {
        root + 'annotations/instances_train.json', root + 'train/', root + 'annotations/instances_val.json',
        root + 'val/'
    }
    assert len(checked) == 8  # train: ann + img; val, test: ann + img + evaluator


# ------------------------------------------------------------------------------------------ tools as subprocesses
def _run_tool(*args, cwd=ROOT):
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stderr.strip()


def _assert_one_line_error(rc, stderr, *fragments):
    assert rc != 0
    assert 'Traceback' not in stderr, stderr
    last = stderr.splitlines()[-1]
    assert 'error:' in last
    for fragment in fragments:
        assert fragment in last, last


@pytest.fixture
def corrupt_root(tmp_path):
    """A data root laid out like data/nuclei_demo whose train and val annotation files are not JSON."""
    for split in ('train', 'val'):
        (tmp_path / split).mkdir()
    (tmp_path / 'annotations').mkdir()
    for split in ('train', 'val'):
        _write(tmp_path / 'annotations' / f'instances_{split}.json', '{"images": [')
    return tmp_path


def _data_root_options(root, phases=('train', 'val', 'test')):
    opts = [f'{p}_dataloader.dataset.data_root={root}/' for p in phases]
    opts += [f'{p}_evaluator.ann_file={root}/annotations/instances_val.json' for p in ('val', 'test')]
    return ['--cfg-options', *opts]


def test_train_missing_config(tmp_path):
    missing = str(tmp_path / 'no_such_config.py')
    rc, err = _run_tool('tools/train.py', missing, '--work-dir', str(tmp_path / 'wd'))
    _assert_one_line_error(rc, err, 'config file not found', missing)


def test_train_corrupt_annotation_file(corrupt_root, tmp_path):
    rc, err = _run_tool('tools/train.py', DEMO_CONFIG, '--work-dir', str(tmp_path / 'wd'),
                        *_data_root_options(corrupt_root))
    _assert_one_line_error(rc, err, 'not a valid JSON file', str(corrupt_root / 'annotations' / 'instances_train.json'))
    assert not (tmp_path / 'wd').exists()  # stopped before the Runner


def test_train_missing_image_dir(corrupt_root, tmp_path):
    _write(corrupt_root / 'annotations' / 'instances_train.json', VALID)
    os.rmdir(corrupt_root / 'train')
    rc, err = _run_tool('tools/train.py', DEMO_CONFIG, '--work-dir', str(tmp_path / 'wd'),
                        *_data_root_options(corrupt_root))
    _assert_one_line_error(rc, err, 'image directory not found', str(corrupt_root / 'train'))


def test_test_missing_checkpoint(tmp_path):
    missing = str(tmp_path / 'epoch_1.pth')
    rc, err = _run_tool('tools/test.py', DEMO_CONFIG, missing)
    _assert_one_line_error(rc, err, 'checkpoint file not found', missing)


def test_test_corrupt_annotation_file(corrupt_root, tmp_path):
    ckpt = _write(tmp_path / 'fake.pth', 'never loaded')
    rc, err = _run_tool('tools/test.py', DEMO_CONFIG, ckpt, '--work-dir', str(tmp_path / 'wd'),
                        *_data_root_options(corrupt_root))
    _assert_one_line_error(rc, err, 'not a valid JSON file', str(corrupt_root / 'annotations' / 'instances_val.json'))


# ------------------------------------------------------------------------------------------ checkpoint safety
@pytest.fixture(scope='module')
def runner_checkpoint(tmp_path_factory):
    """A checkpoint written by a real mmengine Runner (tiny model, two iterations)."""
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class Tiny(BaseModel):

        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(2, 1)

        def forward(self, inputs, data_samples=None, mode='tensor'):
            out = self.fc(inputs)  # (B, 2) -> (B, 1)
            return {'loss': out.pow(2).mean()} if mode == 'loss' else out

    work_dir = str(tmp_path_factory.mktemp('runner'))
    runner = Runner(
        model=Tiny(),
        work_dir=work_dir,
        train_dataloader=dict(
            dataset=[dict(inputs=torch.randn(2)) for _ in range(4)],
            sampler=dict(type='DefaultSampler', shuffle=False),
            collate_fn=dict(type='default_collate'),
            batch_size=2,
            num_workers=0),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3)),
        param_scheduler=dict(type='LinearLR', start_factor=0.5, by_epoch=False, begin=0, end=2),
        train_cfg=dict(by_epoch=False, max_iters=2),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False)),
        default_scope='mmengine')
    runner.train()
    return osp.join(work_dir, 'iter_2.pth')


def test_runner_checkpoint_loads_with_weights_only(runner_checkpoint):
    allow_checkpoint_globals()
    ckpt = torch.load(runner_checkpoint, map_location='cpu', weights_only=True)
    assert set(ckpt) >= {'meta', 'state_dict', 'message_hub', 'optimizer'}
    assert torch.serialization.get_unsafe_globals_in_checkpoint(runner_checkpoint) == []
    buffer = ckpt['message_hub']['log_scalars']['train/loss']
    assert buffer.mean() == pytest.approx(buffer.data[0].mean())


@pytest.mark.parametrize('import_package', [True, False])
def test_importing_the_package_lets_plain_openmmlab_apis_read_runner_checkpoints(runner_checkpoint, import_package):
    """mmdet's ``init_detector`` / ``DetInferencer`` and a plain Runner's ``load_from`` load with torch's default
    ``weights_only=True``; they import ``stvit_det`` through the config's ``custom_imports``, which allow-lists the
    message hub's globals, so a checkpoint our training wrote loads there too (in a fresh process: without the
    import it does not)."""
    code = ('import torch\n'
            + ('import stvit_det\n' if import_package else '')
            + f'ckpt = torch.load({runner_checkpoint!r}, map_location="cpu")\n'
            'print(sorted(ckpt["message_hub"]["log_scalars"]))')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONWARNINGS='ignore'))
    if import_package:
        assert proc.returncode == 0 and 'train/loss' in proc.stdout, proc.stderr[-2000:]
    else:
        assert proc.returncode != 0 and 'Unsupported global' in proc.stderr


class _GetAttr:
    """Pickles as ``getattr(owner, name)``, the way HistoryBuffer's statistics methods are pickled."""

    def __init__(self, owner, name):
        self.owner, self.name = owner, name

    def __reduce__(self):
        return getattr, (self.owner, self.name)


@pytest.mark.parametrize('owner, name', [('HistoryBuffer', '__init__'), ('HistoryBuffer', 'update'),
                                         ('OrderedDict', 'fromkeys')])
def test_getattr_stays_refused_for_anything_else(tmp_path, owner, name):
    from collections import OrderedDict

    from mmengine.logging import HistoryBuffer

    allow_checkpoint_globals()
    path = str(tmp_path / 'other.pth')
    torch.save({'x': _GetAttr({'HistoryBuffer': HistoryBuffer, 'OrderedDict': OrderedDict}[owner], name)}, path)
    with pytest.raises(pickle.UnpicklingError, match='refusing getattr'):
        torch.load(path, weights_only=True)
    torch.save({'x': _GetAttr(HistoryBuffer, 'mean')}, path)
    assert torch.load(path, weights_only=True)['x'] is HistoryBuffer.mean


def test_resumed_checkpoint_is_checked_before_training(tmp_path):
    """--resume CKPT and --resume (the work dir's last checkpoint) are checked like test.py's checkpoint: one line
    for a file that is not a checkpoint, instead of a traceback after the Runner is built."""
    bad = _write(tmp_path / 'iter_10.pth', 'not a checkpoint')
    no_data = ['--cfg-options', 'train_dataloader=None', 'val_cfg=None']
    rc, err = _run_tool('tools/train.py', DEMO_CONFIG, '--resume', bad, '--work-dir', str(tmp_path / 'wd1'), *no_data)
    _assert_one_line_error(rc, err, 'iter_10.pth: not a readable PyTorch checkpoint', 'a text file, not a PyTorch '
                           'checkpoint')
    assert 'weights_only' not in err.splitlines()[-1]  # the unpickler's reason, not torch's advice to turn it off
    work_dir = tmp_path / 'wd2'
    work_dir.mkdir()
    _write(work_dir / 'last_checkpoint', bad)
    rc, err = _run_tool('tools/train.py', DEMO_CONFIG, '--resume', '--work-dir', str(work_dir), *no_data)
    _assert_one_line_error(rc, err, 'iter_10.pth: not a readable PyTorch checkpoint')
    # weights without a run's epoch / iteration (a converted file): mmengine's resume stopped in a KeyError
    converted = tmp_path / 'converted.pth'
    torch.save({'state_dict': {'backbone.norm3.weight': torch.ones(4)}, 'meta': {'epoch': 3}}, converted)
    rc, err = _run_tool('tools/train.py', DEMO_CONFIG, '--resume', str(converted), '--work-dir',
                        str(tmp_path / 'wd3'), *no_data)
    _assert_one_line_error(rc, err, 'converted.pth is not the checkpoint of a training run (no epoch and iteration '
                           'in its meta', f'give them as load_from (--cfg-options load_from={converted})')
    # a published model (mmdet's publish_model.py keeps state_dict and meta): Runner.resume stopped in a
    # KeyError: 'message_hub' after the Runner was built
    published = tmp_path / 'published.pth'
    torch.save({'state_dict': {'backbone.norm3.weight': torch.ones(4)}, 'meta': {'epoch': 0, 'iter': 240}}, published)
    rc, err = _run_tool('tools/train.py', DEMO_CONFIG, '--resume', str(published), '--work-dir',
                        str(tmp_path / 'wd4'), *no_data)
    _assert_one_line_error(rc, err, "published.pth is not the checkpoint of a training run (no 'message_hub': "
                           'weights alone, a published model or a converted file)')


def test_resuming_without_optimizer_state_is_said(tmp_path, monkeypatch, capsys):
    """A run's checkpoint saved without its optimizer (CheckpointHook(save_optimizer=False)) resumes, as mmengine
    allows, but not silently: the states it lacks, which the Runner starts afresh, are named; a full one says
    nothing."""
    from mmengine.config import Config

    from stvit_det.utils.ckpt_file import model_tensor_shapes

    monkeypatch.syspath_prepend(osp.join(ROOT, 'tools'))
    from _launch import check_inputs

    cfg = Config.fromfile(DEMO_CONFIG)
    state = {k: torch.zeros(shape) for k, shape in model_tensor_shapes(cfg).items()}
    run = {'state_dict': state, 'meta': {'epoch': 0, 'iter': 240}, 'message_hub': {}}
    path = str(tmp_path / 'iter_240.pth')
    for saved, said in ((run, None), ({**run, 'optimizer': {}}, 'no param_schedulers state'),
                        ({**run, 'optimizer': {}, 'param_schedulers': []}, None)):
        torch.save(saved, path)
        capsys.readouterr()
        check_inputs('train.py', cfg, (), checkpoint=path, strict=True, resume=True)
        out = capsys.readouterr().out
        if saved is run:
            assert f'train.py: warning: {path} has no optimizer and no param_schedulers state' in out, out
            assert 'AdamW moments from zero' in out
        elif said:
            assert said in out and 'no optimizer' not in out, out
        else:
            assert 'warning' not in out, out


def test_model_the_config_cannot_build_and_unwritable_results(tmp_path):
    rc, err = _run_tool('tools/train.py', DEMO_CONFIG, '--work-dir', str(tmp_path / 'wd'), '--cfg-options',
                        'model.backbone.window_size=0')
    _assert_one_line_error(rc, err, "the config's model cannot be built", 'window_size must be a positive integer')
    assert not (tmp_path / 'wd').exists()
    ckpt = _write(tmp_path / 'fake.pth', 'never loaded')
    _write(tmp_path / 'a_file', '')
    rc, err = _run_tool('tools/test.py', DEMO_CONFIG, ckpt, '--out', str(tmp_path / 'a_file' / 'results.pkl'))
    _assert_one_line_error(rc, err, 'cannot write', 'results.pkl')
    rc, err = _run_tool('tools/test.py', DEMO_CONFIG, ckpt, '--work-dir', str(tmp_path / 'a_file' / 'wd'))
    _assert_one_line_error(rc, err, f'work dir {tmp_path}/a_file/wd: {tmp_path}/a_file is a file')


def test_inference_pipeline_drops_annotation_loaders_in_every_spelling():
    """The image demo and the ONNX export's --image path remove annotation loading from the test pipeline however
    the config names the transform (plain, scoped, the class itself, panoptic); the rest stays in order."""
    from mmdet.datasets.transforms import LoadAnnotations, LoadPanopticAnnotations

    from stvit_det.datasets.pipelines import find_step, without_annotation_loading

    load, resize, pack = dict(type='LoadImageFromFile'), dict(type='Resize', scale=(64, 64)), dict(type='PackDetInputs')
    for loader in ('LoadAnnotations', 'mmdet.LoadAnnotations', LoadAnnotations, LoadPanopticAnnotations):
        steps = [load, resize, dict(type=loader, with_bbox=True), pack]
        assert without_annotation_loading(steps) == [load, resize, pack]
    tta = [load, dict(type='TestTimeAug', transforms=[[resize], [dict(type='mmseg.LoadAnnotations')]])]
    assert find_step(tta, 'LoadAnnotations') == dict(type='mmseg.LoadAnnotations')  # found inside wrappers
    assert find_step(tta, 'RandomFlip') is None


def test_output_probe_leaves_nothing_behind(tmp_path):
    """The early check of an output path creates nothing that stays (a tool stopped by a later check leaves no
    empty folders), and still finds what cannot be written."""
    from stvit_det.utils.paths import make_parent_dir, unwritable_reason

    out = tmp_path / 'a' / 'b' / 'result.pkl'
    assert unwritable_reason(str(out)) is None
    assert list(tmp_path.iterdir()) == []
    (tmp_path / 'keep.txt').write_text('x')
    assert unwritable_reason(str(tmp_path / 'keep.txt')) is None and (tmp_path / 'keep.txt').read_text() == 'x'
    assert unwritable_reason(str(tmp_path / 'keep.txt' / 'inside.pkl'))  # a file where a folder must be
    assert unwritable_reason(str(tmp_path)) == 'it is a directory'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['keep.txt']
    # a link to a file not yet there (the tool writes through it): the link stays, no empty target is left
    (tmp_path / 'link.pkl').symlink_to(tmp_path / 'target.pkl')
    assert unwritable_reason(str(tmp_path / 'link.pkl')) is None
    assert (tmp_path / 'link.pkl').is_symlink() and not (tmp_path / 'target.pkl').exists()
    (tmp_path / 'dead.pkl').symlink_to(tmp_path / 'nowhere' / 'target.pkl')  # into a folder that is not there
    assert unwritable_reason(str(tmp_path / 'dead.pkl')) and not (tmp_path / 'nowhere').exists()
    make_parent_dir(str(out))
    assert (tmp_path / 'a' / 'b').is_dir()


def _tool_exit(monkeypatch, script, *args):
    """Run a tool's ``__main__`` in this process (no interpreter start-up) and return its SystemExit message; any
    other exception (a traceback for the user) fails the test."""
    import runpy

    monkeypatch.setattr(sys, 'argv', [script, *args])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(osp.join(ROOT, 'tools', script), run_name='__main__')
    return str(info.value.code)


def test_test_time_augmentation_takes_the_plain_model_checkpoint(tmp_path):
    """test.py --tta wraps the model (DetTTAModel(module=model)); MMEngine loads the checkpoint into the wrapped
    model, so the early check compares with its tensors, not the wrapper's 'module.' names (it refused every
    checkpoint)."""
    from mmengine.config import Config, ConfigDict

    from stvit_det.utils.ckpt_file import check_checkpoint_for_config, model_tensor_shapes

    cfg = Config.fromfile(DEMO_CONFIG)
    shapes = model_tensor_shapes(cfg)
    ckpt = str(tmp_path / 'plain.pth')
    torch.save({'state_dict': {k: torch.zeros(()).expand(s) for k, s in shapes.items()}}, ckpt)  # one element each
    cfg.model = ConfigDict(type='DetTTAModel', module=cfg.model,
                           tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
    assert model_tensor_shapes(cfg) == shapes
    assert check_checkpoint_for_config(cfg, ckpt) == dict(missing=[], unexpected=[], mismatched=[])


def test_storage_backend_checkpoints_are_left_to_mmengine(monkeypatch):
    """An s3:// (petrel://, ...) checkpoint is read by mmengine's file backends, as the README says: no local 'file
    not found' for it in test.py / train.py (load_from, --resume); a download URL stays refused."""
    from mmengine.config import Config

    from stvit_det.utils.paths import missing_file_error

    assert missing_file_error('checkpoint', 's3://bucket/run/epoch_12.pth') is None
    assert 'is a download URL' in missing_file_error('checkpoint', 'https://example.org/epoch_12.pth')
    monkeypatch.syspath_prepend(osp.join(ROOT, 'tools'))
    from _launch import check_inputs

    cfg = Config.fromfile(DEMO_CONFIG)
    check_inputs('test.py', cfg, (), checkpoint='s3://bucket/run/epoch_12.pth')  # nothing local to check
    with pytest.raises(SystemExit, match=r'^test\.py: error: https://example\.org/x\.pth: a download URL'):
        check_inputs('test.py', cfg, (), checkpoint='https://example.org/x.pth')


def test_data_is_checked_by_torchrun_rank_0_only(tmp_path, monkeypatch):
    """Under torchrun every process ran the data checks (each GPU's process read every label map and image header
    on a first launch, and each printed the same error); rank 0 checks, and torchrun stops the others if it
    fails."""
    from mmengine.config import Config

    monkeypatch.syspath_prepend(osp.join(ROOT, 'tools'))
    from _launch import check_inputs

    cfg = Config.fromfile(DEMO_CONFIG)
    cfg.train_dataloader.dataset.data_root = str(tmp_path / 'nowhere') + '/'
    monkeypatch.setenv('RANK', '1')
    check_inputs('train.py', cfg, ('train', ))
    for rank in ('0', None):
        if rank is None:
            monkeypatch.delenv('RANK')
        else:
            monkeypatch.setenv('RANK', rank)
        with pytest.raises(SystemExit, match=r'^train\.py: error: annotation file not found: .*nowhere'):
            check_inputs('train.py', cfg, ('train', ))


def test_launch_options_that_cannot_work_stop_in_one_line(tmp_path, monkeypatch):
    """Before the Runner: --cfg-options that cannot merge into the config (a key under a None or into a tuple),
    mixed precision without a GPU, --tta on a Mask R-CNN (mmdet's DetTTAModel merges no masks) and on a config
    with a tta_model but no tta_pipeline where the toolbox has no default (mmseg), a --show-dir that cannot be made."""
    ckpt = _write(tmp_path / 'fake.pth', 'never loaded')
    _write(tmp_path / 'a_file', '')
    wd = ['--work-dir', str(tmp_path / 'wd')]
    msg = _tool_exit(monkeypatch, 'train.py', DEMO_CONFIG, *wd, '--cfg-options',
                     'model.backbone.init_cfg.checkpoint=/x.pth')
    assert msg.startswith('train.py: error: --cfg-options model.backbone.init_cfg.checkpoint=/x.pth cannot be '
                          'applied to this config: init_cfg=') and '\n' not in msg, msg
    msg = _tool_exit(monkeypatch, 'test.py', DEMO_CONFIG, ckpt, *wd, '--cfg-options', 'model.backbone.depths.9=2')
    assert msg.startswith('test.py: error: --cfg-options model.backbone.depths.9=2 cannot be applied'), msg
    if not torch.cuda.is_available():
        msg = _tool_exit(monkeypatch, 'train.py', DEMO_CONFIG, *wd, '--amp')
        assert msg.startswith("train.py: error: mixed precision (--amp, or the config's AmpOptimWrapper) needs a GPU")
    if not torch.cuda.is_available():
        msg = _tool_exit(monkeypatch, 'test.py', DEMO_CONFIG, ckpt, *wd, '--amp')
        assert msg.startswith("test.py: error: --amp without a GPU runs bfloat16 (mmengine's CPU autocast), which "
                              "mmcv's compiled detection ops (RoIAlign, NMS) do not take"), msg
    msg = _tool_exit(monkeypatch, 'test.py', DEMO_CONFIG, ckpt, *wd, '--tta')  # mmdet: an assertion at batch 1
    assert msg.startswith("test.py: error: --tta: mmdet's DetTTAModel merges boxes only, and this detector predicts "
                          'instance masks') and '\n' not in msg, msg
    seg = osp.join(ROOT, 'configs', 'stvit-r-seg', 'stvit-r-demo_upernet_1xb4-400_nuclei-224x224.py')
    msg = _tool_exit(monkeypatch, 'test.py', seg, ckpt, *wd, '--tta')  # a tta_model, no tta_pipeline (mmseg: none)
    assert msg == 'test.py: error: --tta needs `tta_model` and `tta_pipeline` in the config', msg
    msg = _tool_exit(monkeypatch, 'test.py', DEMO_CONFIG, ckpt, *wd, '--show-dir', str(tmp_path / 'a_file' / 'vis'))
    assert msg == f'test.py: error: --show-dir {tmp_path}/a_file/vis: {tmp_path}/a_file is a file', msg
    msg = _tool_exit(monkeypatch, 'test.py', DEMO_CONFIG, ckpt, *wd, '--out', str(tmp_path / 'preds'))
    assert msg == f'test.py: error: --out must be a .pkl or .pickle file, got {tmp_path}/preds', msg
    msg = _tool_exit(monkeypatch, 'test.py', DEMO_CONFIG, ckpt, *wd, '--out-item', 'metrics')
    assert msg == 'test.py: error: --out-item needs --out, the file to write', msg
    msg = _tool_exit(monkeypatch, 'test.py', DEMO_CONFIG, ckpt, *wd, '--out-item', 'metrics', '--out', 'm.txt')
    assert msg == ('test.py: error: --out-item metrics writes .json / .yaml / .yml / .pkl / .pickle files, got '
                   '--out m.txt'), msg
    msg = _tool_exit(monkeypatch, 'test.py', DEMO_CONFIG, ckpt, *wd, '--show-dir', 'vis', '--interval', '0')
    assert msg == 'test.py: error: --interval must be a positive integer, got 0', msg
    msg = _tool_exit(monkeypatch, 'test.py', seg, ckpt, *wd, '--out', str(tmp_path / 'a_file' / 'preds'))
    assert msg == f'test.py: error: --out {tmp_path}/a_file/preds: {tmp_path}/a_file is a file', msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a_file', 'fake.pth']


def test_read_image_names_what_it_cannot_read(tmp_path, monkeypatch):
    """The image the demo tools read: ``~`` is the home folder (as in the checks before it); an empty file or one
    that is not an image is named in one line."""
    import numpy as np
    from mmcv import imwrite

    from stvit_det.utils.paths import read_image

    monkeypatch.setenv('HOME', str(tmp_path))
    imwrite(np.full((5, 7, 3), 9, np.uint8), str(tmp_path / 'img.png'))
    assert read_image('~/img.png').shape == (5, 7, 3)
    (tmp_path / 'empty.png').write_bytes(b'')
    (tmp_path / 'text.png').write_text('not an image')
    for name, problem in (('empty.png', ': the file is empty'), ('text.png', ''), ('none.png', '')):
        with pytest.raises(ValueError, match=rf'cannot read image ~/{name}{problem}'):
            read_image(f'~/{name}')


def test_tta_reaches_every_dataset_and_knows_the_tta_class():
    """--tta (tools/test.py ``apply_tta``): the TTA pipeline goes to every dataset that reads data, through wrappers
    and a ConcatDataset (a traceback before); a DetTTAModel given as the class itself (a pure-Python config) is
    recognised for the mask refusal like its registry name."""
    import importlib.util

    from mmdet.models.test_time_augs import DetTTAModel
    from mmengine.config import Config, ConfigDict

    spec = importlib.util.spec_from_file_location('stvit_test_tool', osp.join(ROOT, 'tools', 'test.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)

    cfg = Config.fromfile(DEMO_CONFIG)
    cfg.model.roi_head.mask_head = cfg.model.roi_head.mask_roi_extractor = None
    cfg.test_evaluator.metric = 'bbox'
    plain = copy.deepcopy(cfg.test_dataloader.dataset)
    cfg.test_dataloader.dataset = ConfigDict(type='ConcatDataset', datasets=[
        copy.deepcopy(plain), dict(type='RepeatDataset', times=2, dataset=copy.deepcopy(plain))])
    with pytest.warns(UserWarning, match='Cannot find ``tta_pipeline`` in config'):
        tool.apply_tta(cfg, 'mmdet')
    assert cfg.model.type == 'DetTTAModel' and cfg.model.module.type == 'MaskRCNN'
    leaves = [cfg.test_dataloader.dataset.datasets[0], cfg.test_dataloader.dataset.datasets[1].dataset]
    for leaf in leaves:
        assert leaf.pipeline[-1].type == 'TestTimeAug' and leaf.pipeline[:-1] == plain.pipeline[:-1]

    cfg = Config.fromfile(DEMO_CONFIG)
    cfg.tta_model = dict(type=DetTTAModel, tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
    with pytest.raises(SystemExit, match="DetTTAModel merges boxes only, and this detector predicts instance masks"):
        with pytest.warns(UserWarning):
            tool.apply_tta(cfg, 'mmdet')
