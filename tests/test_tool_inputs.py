"""Bad input to the tools ends in one ``error:`` line naming the problem, with nothing the user had lost: an output
that is the same file as an input, a config that is not Python or has no model, ``--cfg-options`` that cannot be
parsed or merged, ``--launcher pytorch`` outside torchrun, a device this machine has not, a forward that fails an
assertion, a work dir that cannot be made (also as root), and the order of the training checks.

Every tool runs in this process (its ``__main__`` through runpy) and stops before building or running a model,
except the forward-failure cases, which run the narrow demo config at 64 x 64.
"""
import hashlib
import os
import os.path as osp
import re
import runpy
import sys

import cv2
import numpy as np
import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO_CONFIG = osp.join(ROOT, 'configs', 'stvit-r', 'mask-rcnn_stvit-r-demo_fpn_nuclei.py')
COCO_T = osp.join(ROOT, 'configs', 'stvit-r', 'mask-rcnn_stvit-r-t_fpn_1x_coco.py')
FRAGMENT = osp.join(ROOT, 'configs', '_base_', 'datasets', 'nuclei-demo.py')  # defines no model
NO_FPN_INPUTS = 'model.backbone.out_indices=[0,1]'  # the FPN expects 4 maps: an assertion in its forward


def _log_to_current_stderr():
    """Point mmengine's loggers at this test's stderr: they keep the stream of the test that created them, which
    pytest has closed since (a warning then printed '--- Logging error ---' with a traceback)."""
    import logging

    from mmengine.logging import MMLogger

    for logger in MMLogger._instance_dict.values():
        for handler in logger.handlers:
            if type(handler) is logging.StreamHandler:
                handler.stream = sys.stderr  # not setStream: it flushes the closed one


def _run(monkeypatch, capsys, script, *args):
    """Run ``tools/SCRIPT`` as ``__main__`` in this process: (exit status, last line of its error output). Any
    exception other than SystemExit (a traceback for the user) fails the test."""
    monkeypatch.setattr(sys, 'argv', [osp.basename(script), *args])
    _log_to_current_stderr()
    capsys.readouterr()
    code = 0
    try:
        runpy.run_path(osp.join(ROOT, 'tools', script), run_name='__main__')
    except SystemExit as e:
        code = e.code or 0
    err = capsys.readouterr().err
    if isinstance(code, str):
        err, code = err + code + '\n', 1
    assert 'Traceback' not in err, err
    lines = err.strip().splitlines()
    return code, lines[-1] if lines else ''


def _assert_error(result, prefix, *fragments):
    code, last = result
    assert code != 0 and last.startswith(prefix), last
    for fragment in fragments:
        assert fragment in last, last


def _md5(path):
    return hashlib.md5(open(path, 'rb').read()).hexdigest()


@pytest.fixture
def scratch(tmp_path):
    """A tiny image, a file posing as a checkpoint and a config inheriting the demo one, with their md5 sums."""
    photo, ckpt, config = str(tmp_path / 'photo.png'), str(tmp_path / 'ck.pth'), str(tmp_path / 'cfg.py')
    cv2.imwrite(photo, np.random.RandomState(0).randint(0, 255, (32, 32, 3), dtype=np.uint8))
    torch.save({'state_dict': {'backbone.x': torch.zeros(1)}}, ckpt)  # a detector's, for convert_ckpt
    with open(config, 'w') as f:
        f.write(f'_base_ = {DEMO_CONFIG!r}\n')
    return dict(photo=photo, ckpt=ckpt, config=config, md5={p: _md5(p) for p in (photo, ckpt, config)})


def _unchanged(scratch):
    return all(_md5(p) == digest for p, digest in scratch['md5'].items())


# ---------------------------------------------------------------------------------------------- 1. outputs
def test_an_output_that_is_an_input_is_refused(monkeypatch, capsys, scratch, tmp_path):
    photo, ckpt, config = scratch['photo'], scratch['ckpt'], scratch['config']
    pkl = str(tmp_path / 'ck.pkl')  # test.py writes .pkl only: a checkpoint named so
    os.link(ckpt, pkl)  # another name of the same file
    ck_onnx, cfg_onnx = str(tmp_path / 'ck.onnx'), str(tmp_path / 'cfg.onnx')  # export_onnx writes .onnx only
    os.link(ckpt, ck_onnx)
    os.link(config, cfg_onnx)
    cases = [
        ('convert_ckpt.py', (ckpt, ckpt, '--detector', config), 'convert_ckpt: error: ', ckpt),
        ('convert_ckpt.py', (ckpt, config, '--detector', config), 'convert_ckpt: error: ', config),
        ('deployment/export_onnx.py', (config, ckpt, '--shape', '32', '32', '--part', 'backbone', '--out',
                                       ck_onnx), 'error: ', ckpt),
        ('deployment/export_onnx.py', (config, '--shape', '32', '32', '--part', 'backbone', '--out', cfg_onnx),
         'error: ', config),
        ('image_demo.py', (photo, config, ckpt, '--out', photo), 'image_demo.py: error: ', photo),
        ('vis_semantic_tokens.py', (photo, config, '--out', photo), 'vis_semantic_tokens.py: error: ', photo),
        ('test.py', (config, ckpt, '--out', pkl, '--work-dir', str(tmp_path / 'wd')), 'test.py: error: ', ckpt),
    ]
    for script, args, prefix, source in cases:
        out = args[args.index('--out') + 1] if '--out' in args else args[1]
        _assert_error(_run(monkeypatch, capsys, script, *args), prefix, 'cannot write', out,
                      'is the same file as the', source)
        assert _unchanged(scratch), script
    assert sorted(os.listdir(tmp_path)) == ['cfg.onnx', 'cfg.py', 'ck.onnx', 'ck.pkl', 'ck.pth', 'photo.png']


def test_convert_ckpt_saves_atomically(monkeypatch, capsys, tmp_path):
    """An interrupted save leaves an existing output as it was (and no temporary file); a finished one replaces
    it (overwriting an output that is no input stays allowed)."""
    tool = runpy.run_path(osp.join(ROOT, 'tools', 'convert_ckpt.py'))
    src, dst = str(tmp_path / 'swin.pth'), str(tmp_path / 'out.pth')
    torch.save({'w': torch.zeros(1)}, src)
    torch.save({'old': torch.ones(1)}, dst)
    before = _md5(dst)
    report = dict(layout='swin', missing=[], unexpected=[], dropped=[], split_qkv=0, outside_backbone=[])
    monkeypatch.setitem(tool['main'].__globals__, 'convert_backbone',
                        lambda args: ({'x': torch.zeros(3)}, {}, report))
    real_save = torch.save

    def interrupted(obj, f, *a, **kw):
        with open(f, 'wb') as fh:
            fh.write(b'PK\x03\x04 half a zip')
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(torch, 'save', interrupted)
    with pytest.raises(SystemExit) as info:
        tool['main']([src, dst])
    assert str(info.value.code) == f'convert_ckpt: error: cannot write {dst}: No space left on device'
    assert _md5(dst) == before and sorted(os.listdir(tmp_path)) == ['out.pth', 'swin.pth']
    monkeypatch.setattr(torch, 'save', real_save)
    tool['main']([src, dst])
    assert torch.equal(torch.load(dst, weights_only=True)['state_dict']['x'], torch.zeros(3))
    assert sorted(os.listdir(tmp_path)) == ['out.pth', 'swin.pth']

    def full_disk(obj, f, *a, **kw):  # what torch 2.13 raises when the disk fills up (checked with /dev/full)
        raise RuntimeError('[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0')

    monkeypatch.setattr(torch, 'save', full_disk)
    before = _md5(dst)
    with pytest.raises(SystemExit) as info:
        tool['main']([src, dst])
    assert str(info.value.code).startswith(f'convert_ckpt: error: cannot write {dst}: [enforce fail')
    assert re.search(r'unexpected pos 64 vs 0 \(\d+\.\d MiB free on its file system: is the disk full\?\)$',
                     str(info.value.code))
    assert _md5(dst) == before and sorted(os.listdir(tmp_path)) == ['out.pth', 'swin.pth']
    deep = str(tmp_path / 'new' / 'folders' / 'out.pth')  # made for the output, removed with the failed write
    with pytest.raises(SystemExit, match='is the disk full'):
        tool['main']([src, deep])
    assert sorted(os.listdir(tmp_path)) == ['out.pth', 'swin.pth']


def test_home_folder_in_checkpoint_paths(tmp_path, monkeypatch):
    """'~' (quoted, or in a config's load_from) is the home folder, as mmengine's loader reads it: found by the
    tools' checks, never replaced by the converter's output spelt with '~', and never a folder named '~'."""
    from stvit_det.utils.paths import missing_file_error

    tool = runpy.run_path(osp.join(ROOT, 'tools', 'convert_ckpt.py'))
    monkeypatch.setenv('HOME', str(tmp_path))
    monkeypatch.chdir(tmp_path)
    torch.save({'w': torch.zeros(1)}, tmp_path / 'det.pth')
    before = _md5(str(tmp_path / 'det.pth'))
    assert missing_file_error('checkpoint', '~/det.pth') is None
    assert missing_file_error('checkpoint', '~/gone.pth') == 'checkpoint file not found: ~/gone.pth'
    with pytest.raises(SystemExit) as info:
        tool['main'](['~/det.pth', str(tmp_path / 'det.pth')])
    assert str(info.value.code).endswith('it is the same file as the source checkpoint ' + str(tmp_path / 'det.pth'))
    report = dict(layout='swin', missing=[], unexpected=[], dropped=[], split_qkv=0, outside_backbone=[])
    monkeypatch.setitem(tool['main'].__globals__, 'convert_backbone', lambda args: ({'x': torch.zeros(3)}, {}, report))
    tool['main'](['~/det.pth', '~/out.pth'])
    assert sorted(os.listdir(tmp_path)) == ['det.pth', 'out.pth'] and _md5(str(tmp_path / 'det.pth')) == before


def test_atomic_output_through_a_link_replaces_its_target(tmp_path):
    """A link to a checkpoint stays a link: the file it points to gets the new content, as a plain write would."""
    from stvit_det.utils.paths import atomic_output

    target, link = tmp_path / 'real.pth', tmp_path / 'latest.pth'
    target.write_bytes(b'old')
    link.symlink_to(target)
    with atomic_output(str(link)) as part:
        with open(part, 'wb') as f:
            f.write(b'new')
    assert link.is_symlink() and target.read_bytes() == b'new'
    assert sorted(os.listdir(tmp_path)) == ['latest.pth', 'real.pth']


# ---------------------------------------------------------------------------------------------- 2., 3. configs
@pytest.mark.parametrize('kind', ['syntax', 'no-model'])
def test_a_config_that_is_not_python_or_has_no_model(monkeypatch, capsys, scratch, tmp_path, kind):
    if kind == 'syntax':
        config = str(tmp_path / 'broken.py')
        with open(config, 'w') as f:
            f.write('model = dict(type=\n')
        message = f'{config}: not a readable config: SyntaxError'
    else:
        config, message = FRAGMENT, f'{FRAGMENT} defines no `model`'
    photo, ckpt, wd = scratch['photo'], scratch['ckpt'], str(tmp_path / 'wd')
    cases = [('train.py', (config, '--work-dir', wd), 'train.py: error: '),
             ('test.py', (config, ckpt, '--work-dir', wd), 'test.py: error: '),
             ('image_demo.py', (photo, config, ckpt, '--out', str(tmp_path / 'o.png')), 'image_demo.py: error: '),
             ('vis_semantic_tokens.py', (photo, config, '--out', str(tmp_path / 'o.png')),
              'vis_semantic_tokens.py: error: '),
             ('analysis/get_flops.py', (config, '--shape', '32', '32'), 'error: '),
             ('analysis/benchmark.py', (config, '--shape', '32', '32', '--device', 'cpu'), 'error: '),
             ('convert_ckpt.py', (ckpt, str(tmp_path / 'o.pth'), '--detector', config), 'convert_ckpt: error: ')]
    if kind == 'syntax':
        cases.append(('deployment/export_onnx.py', (config, '--shape', '32', '32', '--part', 'backbone', '--out',
                                                    str(tmp_path / 'o.onnx')), 'error: '))
    for script, args, prefix in cases:
        _assert_error(_run(monkeypatch, capsys, script, *args), prefix, message)
    assert not any(osp.exists(tmp_path / name) for name in ('wd', 'o.png', 'o.pth', 'o.onnx'))


def test_image_demo_with_a_config_without_a_test_dataset(monkeypatch, capsys, scratch, tmp_path):
    """A model-only file (``_base_/models``) has no test pipeline or class names for the demo to take."""
    model_only = osp.join(ROOT, 'configs', '_base_', 'models', 'mask-rcnn_stvit-r-t_fpn.py')
    _assert_error(_run(monkeypatch, capsys, 'image_demo.py', scratch['photo'], model_only, scratch['ckpt'], '--out',
                       str(tmp_path / 'o.png')), 'image_demo.py: error: ', 'defines no test_dataloader.dataset')


# ---------------------------------------------------------------------------------------------- 4., 5. options
@pytest.mark.parametrize('option,message', [('model.backbone.depths=[1,1', 'Imbalanced brackets'),
                                            ('noequals', "must be key=value, got 'noequals'"),
                                            ('model.backbone.init_cfg=dict(type=Pretrained,checkpoint=x)',
                                             'give dict keys one by one'),
                                            ('model.backbone=dict(depths=1)',  # one key: mmengine kept a string
                                             'it would stay a string): give dict keys one by one '
                                             '(model.backbone.a=1'),
                                            ('custom_hooks=[dict(type=EMAHook)]',  # a list of one string
                                             'a list item: custom_hooks.0.a=1')])
def test_cfg_options_that_cannot_be_parsed(monkeypatch, capsys, scratch, tmp_path, option, message):
    photo, ckpt, out = scratch['photo'], scratch['ckpt'], str(tmp_path / 'o.png')
    cases = [('train.py', (DEMO_CONFIG, ), 'train.py: error: '),
             ('test.py', (DEMO_CONFIG, ckpt), 'test.py: error: '),
             ('image_demo.py', (photo, DEMO_CONFIG, ckpt, '--out', out), 'image_demo.py: error: '),
             ('vis_semantic_tokens.py', (photo, DEMO_CONFIG, '--out', out), 'vis_semantic_tokens.py: error: '),
             ('analysis/get_flops.py', (DEMO_CONFIG, ), 'get_flops.py: error: '),
             ('analysis/benchmark.py', (DEMO_CONFIG, ), 'benchmark.py: error: '),
             ('deployment/export_onnx.py', (DEMO_CONFIG, '--shape', '32', '32', '--part', 'backbone', '--out',
                                            out), 'error: ')]
    for script, args, prefix in cases:
        _assert_error(_run(monkeypatch, capsys, script, *args, '--cfg-options', option), prefix,
                      'argument --cfg-options', message)
    # the same after '@' of get_flops / benchmark
    _assert_error(_run(monkeypatch, capsys, 'analysis/get_flops.py', f'{DEMO_CONFIG}@{option}', '--shape', '32',
                       '32'), 'error: ', message)
    assert not osp.exists(out)


def test_cfg_options_that_cannot_be_merged(monkeypatch, capsys, scratch, tmp_path):
    photo, ckpt, out = scratch['photo'], scratch['ckpt'], str(tmp_path / 'o.png')
    bad = ('--cfg-options', 'model.backbone.depths.9=2')
    cases = [('image_demo.py', (photo, DEMO_CONFIG, ckpt, '--out', out, *bad), 'image_demo.py: error: '),
             ('vis_semantic_tokens.py', (photo, DEMO_CONFIG, '--out', out, *bad), 'vis_semantic_tokens.py: error: '),
             ('analysis/get_flops.py', (DEMO_CONFIG, '--shape', '32', '32', *bad), 'error: '),
             ('deployment/export_onnx.py', (DEMO_CONFIG, '--shape', '32', '32', '--part', 'backbone', '--out',
                                            str(tmp_path / 'o.onnx'), *bad), 'error: ')]
    for script, args, prefix in cases:
        _assert_error(_run(monkeypatch, capsys, script, *args), prefix,
                      '--cfg-options model.backbone.depths.9=2 cannot be applied to this config')
    assert not osp.exists(out) and not osp.exists(tmp_path / 'o.onnx')


# ---------------------------------------------------------------------------------------------- 6., 7. launch
def test_launcher_pytorch_outside_torchrun(monkeypatch, capsys, tmp_path):
    for var in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT', 'LOCAL_RANK'):
        monkeypatch.delenv(var, raising=False)
    _assert_error(_run(monkeypatch, capsys, 'train.py', DEMO_CONFIG, '--launcher', 'pytorch', '--work-dir',
                       str(tmp_path / 'wd')), 'train.py: error: --launcher pytorch', 'torchrun',
                  'tools/dist_train.sh')
    if not torch.cuda.is_available():
        _assert_error(_run(monkeypatch, capsys, 'train.py', DEMO_CONFIG, '--launcher', 'slurm', '--work-dir',
                           str(tmp_path / 'wd')), "train.py: error: launcher 'slurm' needs CUDA devices")
    assert not osp.exists(tmp_path / 'wd')


def test_devices_that_do_not_exist(monkeypatch, capsys, scratch, tmp_path):
    photo, ckpt, out = scratch['photo'], scratch['ckpt'], str(tmp_path / 'o.png')
    tools = [('image_demo.py', (photo, DEMO_CONFIG, ckpt, '--out', out)),
             ('vis_semantic_tokens.py', (photo, DEMO_CONFIG, '--out', out))]
    for script, args in tools:
        _assert_error(_run(monkeypatch, capsys, script, *args, '--device', 'tpu'), f'{script}: error: --device tpu')
        if not torch.cuda.is_available():
            _assert_error(_run(monkeypatch, capsys, script, *args, '--device', 'cuda'),
                          f'{script}: error: --device cuda: no CUDA device available')
    assert not osp.exists(out)


# ---------------------------------------------------------------------------------------------- 8. forwards
def test_a_forward_failing_an_assertion_names_where(monkeypatch, capsys, tmp_path):
    """mmdet's FPN asserts (no message) that it gets as many maps as its in_channels: the error says the
    exception and where it was raised, not an empty string. (The early check of the neck against the backbone,
    tested below, is switched off here to reach that forward: it stands for any assertion without a message.)"""
    from stvit_det.deployment import parts
    from stvit_det.toolboxes import feature_fit

    for module in (feature_fit, parts):
        monkeypatch.setattr(module, 'feature_fit_problem', lambda model: None)
    where = 'AssertionError (raised at mmdet/models/necks/fpn.py:'
    _assert_error(_run(monkeypatch, capsys, 'analysis/get_flops.py', DEMO_CONFIG, '--shape', '64', '64', '--mode',
                       'detector', '--device', 'meta', '--cfg-options', NO_FPN_INPUTS), 'error: ', where)
    out = str(tmp_path / 'x.onnx')
    _assert_error(_run(monkeypatch, capsys, 'deployment/export_onnx.py', DEMO_CONFIG, '--shape', '64', '64',
                       '--part', 'backbone+neck', '--out', out, '--cfg-options', NO_FPN_INPUTS), 'error: ',
                  'the backbone+neck does not run on a (1, 3, 64, 64) input: ' + where)
    assert not osp.exists(out)
    monkeypatch.setattr(sys, 'argv', ['benchmark.py', DEMO_CONFIG, '--shape', '64', '64', '--mode', 'detector',
                                      '--warmup', '0', '--repeats', '1', '--device', 'cpu', '--no-memory',
                                      '--cfg-options', NO_FPN_INPUTS])
    with pytest.raises(SystemExit):
        runpy.run_path(osp.join(ROOT, 'tools', 'analysis', 'benchmark.py'), run_name='__main__')
    row = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith('| mask-rcnn')]
    assert len(row) == 1 and where in row[0], row


def test_a_neck_that_does_not_read_the_backbone_maps(monkeypatch, capsys, tmp_path):
    """A neck whose in_channels do not match the maps STViTR returns (fewer out_indices, or a stock ResNet config's
    widths) is named with the value that fits when the model is built, by every tool, before the Runner, the data
    and the first batch (it was a bare AssertionError or a channel error in the FPN's first forward); the backbone
    alone is still measured and exported."""
    fits = 'set model.neck.in_channels=[96, 192, 384]'
    bad = 'model.neck.in_channels=[48, 96, 192, 384] does not fit the backbone: STViTR (out_indices (1, 2, 3)) ' \
          'returns 3 maps of [96, 192, 384] channels; ' + fits
    wd = str(tmp_path / 'wd')
    _assert_error(_run(monkeypatch, capsys, 'train.py', DEMO_CONFIG, '--work-dir', wd, '--cfg-options',
                       'model.backbone.out_indices=[1,2,3]'), 'train.py: error: ', bad)
    assert not osp.exists(wd)
    _assert_error(_run(monkeypatch, capsys, 'analysis/get_flops.py', DEMO_CONFIG, '--shape', '64', '64', '--device',
                       'meta', '--cfg-options', 'model.backbone.out_indices=[1,2,3]'), 'error: ', bad)
    _assert_error(_run(monkeypatch, capsys, 'deployment/export_onnx.py', DEMO_CONFIG, '--shape', '64', '64',
                       '--part', 'backbone+neck', '--out', str(tmp_path / 'b.onnx'), '--cfg-options',
                       'model.neck.in_channels=[48,96,192,400]'), 'error: ',
                  'model.neck.in_channels=[48, 96, 192, 400] does not fit the backbone',
                  'set model.neck.in_channels=[48, 96, 192, 384]')
    # the backbone alone needs no neck: it is measured and exported whatever the neck says
    code, last = _run(monkeypatch, capsys, 'analysis/get_flops.py', DEMO_CONFIG, '--shape', '64', '64', '--device',
                      'meta', '--mode', 'backbone', '--cfg-options', 'model.backbone.out_indices=[1,2,3]')
    assert code == 0, last
    # the same widths with the right out_indices build: the check reads the built modules, not the config text
    _assert_error(_run(monkeypatch, capsys, 'train.py', DEMO_CONFIG, '--work-dir', wd, '--cfg-options',
                       'model.backbone.out_indices=[1,2,3]', 'model.neck.in_channels=[96,192,384]',
                       'train_cfg.max_iters=ten'), 'train.py: error: ', 'train_cfg.max_iters must be')


def test_heads_that_do_not_read_the_backbone_maps():
    """Segmentation heads read the maps at their in_index, a classifier's head the last one: a width or an index
    that does not fit is named with the value that fits; the shipped configs fit."""
    from mmengine.config import Config

    from stvit_det.toolboxes.scope import build_bare_model

    seg = Config.fromfile(osp.join(ROOT, 'configs', 'stvit-r-seg', 'stvit-r-demo_upernet_1xb4-400_nuclei-224x224.py'))
    widths = build_bare_model(seg, meta=True).backbone.num_features  # the shipped config builds
    seg.model.decode_head.in_channels = [w + 1 for w in widths]
    with pytest.raises(ValueError, match=r'model.decode_head.in_channels=\[.*\] does not fit the maps it reads '
                       rf'\(in_index=\[0, 1, 2, 3\]\): STViTR \(out_indices \(0, 1, 2, 3\)\) returns '
                       rf'{re.escape(str(list(widths)))} channels there'):
        build_bare_model(seg, meta=True)
    seg.model.decode_head.in_channels = list(widths)
    seg.model.auxiliary_head.in_index = 4
    with pytest.raises(ValueError, match=r'model.auxiliary_head.in_index=4, but .* returns 4 maps'):
        build_bare_model(seg, meta=True)
    seg.model.auxiliary_head.in_index = 1
    with pytest.raises(ValueError, match=rf'model.auxiliary_head.in_channels={seg.model.auxiliary_head.in_channels} '
                       rf'.*so model.auxiliary_head.in_channels={widths[1]}$'):
        build_bare_model(seg, meta=True)
    # mmseg's input_transform='resize_concat' keeps the sum of in_channels: it fits when the maps' widths do
    seg.model.auxiliary_head = dict(type='FCNHead', in_channels=list(widths), in_index=[0, 1, 2, 3], channels=8,
                                    input_transform='resize_concat', num_convs=1, num_classes=2)
    assert build_bare_model(seg, meta=True).auxiliary_head.in_channels == sum(widths)
    seg.model.auxiliary_head.in_channels = [w + 1 for w in widths]
    with pytest.raises(ValueError, match=rf"model.auxiliary_head's in_channels sum to {sum(widths) + 4} .*resize_concat"
                       rf".*so model.auxiliary_head.in_channels={re.escape(str(list(widths)))}$"):
        build_bare_model(seg, meta=True)
    cls = Config.fromfile(osp.join(ROOT, 'configs', 'stvit-r-cls', 'stvit-r-t_16xb64_in1k.py'))
    cls.model.backbone.update(embed_dims=32, depths=[1, 1, 6, 1], num_heads=[1, 2, 4, 8])  # narrow: 256 channels
    with pytest.raises(ValueError, match='model.head.in_channels=768 does not fit the backbone: STViTR '
                       r'\(out_indices \(3,\)\) returns 256 channels in its last map.*in_channels=256$'):
        build_bare_model(cls, meta=True)
    cls.model.head.in_channels = 256
    assert build_bare_model(cls, meta=True).head.in_channels == 256


# ---------------------------------------------------------------------------------------------- 9., 10. train
def test_work_dir_is_probed_by_creating_it(monkeypatch, capsys, tmp_path):
    """os.access says yes to root (CI) for any folder, /proc too: the probe writes a file into the nearest existing
    folder and removes it, creating no folder (the ranks of a distributed run probe the same work dir at once)."""
    from stvit_det.utils import paths

    monkeypatch.setattr(paths.os, 'access', lambda *args, **kwargs: True)  # what root is told
    _assert_error(_run(monkeypatch, capsys, 'train.py', DEMO_CONFIG, '--work-dir', '/proc/wd'),
                  'train.py: error: work dir /proc/wd: no file can be made in /proc: ')  # (not "/proc is not writable:
    # No such file or directory", the probe's own error read as the folder's)
    assert paths.uncreatable_dir_reason('/proc') is not None  # an existing folder nothing can be written into
    assert paths.uncreatable_dir_reason(str(tmp_path / 'a' / 'b')) is None and os.listdir(tmp_path) == []
    assert paths.uncreatable_dir_reason(str(tmp_path)) is None and os.listdir(tmp_path) == []
    (tmp_path / 'wd').mkdir()
    (tmp_path / 'wd' / 'old.log').write_text('kept')
    assert paths.uncreatable_dir_reason(str(tmp_path / 'wd')) is None
    assert os.listdir(tmp_path / 'wd') == ['old.log']
    (tmp_path / 'a_file').write_text('')
    assert paths.uncreatable_dir_reason(str(tmp_path / 'a_file' / 'wd')) == f'{tmp_path / "a_file"} is a file'


@pytest.mark.parametrize('script,option,message', [
    ('train.py', 'train_cfg.max_iters=ten', "train_cfg.max_iters must be a positive integer, got 'ten'"),
    ('train.py', 'train_cfg.val_interval=0', 'train_cfg.val_interval must be a positive integer, got 0'),
    ('train.py', 'optim_wrapper.optimizer.lr=fast', "optim_wrapper.optimizer.lr must be a number >= 0, got 'fast'"),
    ('train.py', 'train_dataloader.num_workers=-1', 'train_dataloader.num_workers must be an integer >= 0, got -1'),
    ('train.py', 'train_dataloader.batch_size=2.5', 'train_dataloader.batch_size must be a positive integer, got 2.5'),
    ('train.py', 'default_hooks.checkpoint.interval=[1]', 'default_hooks.checkpoint.interval must be an integer'),
    ('test.py', 'test_dataloader.batch_size=0', 'test_dataloader.batch_size must be a positive integer, got 0'),
])
def test_run_settings_of_the_wrong_type(monkeypatch, capsys, scratch, tmp_path, script, option, message):
    """Values mmengine and torch use deep in the Runner (a traceback there, for val_interval after a whole training
    interval): one line naming the key and the value, before any work and without a work dir."""
    wd = str(tmp_path / 'wd')
    args = (DEMO_CONFIG, ) if script == 'train.py' else (DEMO_CONFIG, scratch['ckpt'])
    _assert_error(_run(monkeypatch, capsys, script, *args, '--work-dir', wd, '--cfg-options', option),
                  f'{script}: error: ', message)
    assert not osp.exists(wd)


SEG_DEMO_CONFIG = osp.join(ROOT, 'configs', 'stvit-r-seg', 'stvit-r-demo_upernet_1xb4-400_nuclei-224x224.py')


@pytest.mark.parametrize('script,config,option,message', [
    # merged in, read by nothing: the run would go on as configured
    ('train.py', DEMO_CONFIG, 'trian_cfg.max_iters=2', "--cfg-options trian_cfg.max_iters: the config has no "
     "'trian_cfg', and the Runner reads no such setting: a typo? (did you mean 'train_cfg'?)"),
    # mmengine's CheckpointHook hands it to Runner.save_checkpoint: a TypeError at the first save, after training
    ('train.py', DEMO_CONFIG, 'default_hooks.checkpoint.intervl=2', "default_hooks.checkpoint.intervl: "
     "CheckpointHook takes no 'intervl' (did you mean 'interval'?); mmengine would pass it on to "
     'Runner.save_checkpoint, which fails at the first save'),
    ('train.py', DEMO_CONFIG, 'default_hooks.chekpoint.interval=2', "default_hooks.chekpoint has no type: the "
     "config's default hooks are timer, logger, param_scheduler, checkpoint, sampler_seed, visualization (did you "
     "mean 'checkpoint'?)"),
    ('train.py', DEMO_CONFIG, 'train_cfg.max_iter=2',
     "train_cfg.max_iter: IterBasedTrainLoop takes no 'max_iter' (did you mean 'max_iters'?)"),
    ('train.py', DEMO_CONFIG, 'val_cfg.fp61=True', "val_cfg.fp61: ValLoop takes no 'fp61' (did you mean 'fp16'?)"),
    ('test.py', DEMO_CONFIG, 'test_cfg.fp61=True', "test_cfg.fp61: TestLoop takes no 'fp61' (did you mean 'fp16'?)"),
    ('train.py', SEG_DEMO_CONFIG, 'default_hooks.visualization.draww=True',  # a hook of mmseg's registry
     "default_hooks.visualization.draww: SegVisualizationHook takes no 'draww' (did you mean 'draw'?)"),
])
def test_misspelt_settings_are_named(monkeypatch, capsys, scratch, tmp_path, script, config, option, message):
    """A setting that nothing reads, or that the loop / hook it configures does not take: one line naming it and
    the likely meant one, before any work (mmdet's tools would go on, or fail once the Runner is up)."""
    wd = str(tmp_path / 'wd')
    args = (config, ) if script == 'train.py' else (config, scratch['ckpt'])
    _assert_error(_run(monkeypatch, capsys, script, *args, '--work-dir', wd, '--cfg-options', option),
                  f'{script}: error: ', message)
    assert not osp.exists(wd)


def test_settings_that_are_read_are_not_refused():
    """The settings check refuses nothing that the Runner reads: every config here, and settings the Runner reads
    without a config stating them (randomness, a hook's priority, the checkpoint hook's own arguments)."""
    import glob

    sys.path.insert(0, osp.join(ROOT, 'tools'))
    import _launch
    from stvit_det.toolboxes.scope import load_config

    _log_to_current_stderr()
    configs = sorted(glob.glob(osp.join(ROOT, 'configs', 'stvit-r*', '*.py')))
    assert len(configs) >= 20
    for path in configs:
        assert _launch.settings_problem(load_config(path, need_model=True), ('train', 'val', 'test')) is None, path
    options = {'randomness.seed': 1, 'default_hooks.checkpoint.max_keep_ckpts': 1, 'find_unused_parameters': True,
               'default_hooks.checkpoint.priority': 'VERY_LOW', 'env_cfg.cudnn_benchmark': True,
               'custom_hooks': [dict(type='EMAHook', momentum=0.001, priority=49)]}
    cfg = load_config(DEMO_CONFIG, need_model=True)
    assert _launch.new_run_key_problem(cfg, options) is None
    cfg.merge_from_dict(options)
    assert _launch.settings_problem(cfg, ('train', 'val', 'test')) is None
    cfg.train_cfg = dict(type='IterBasedTrainLoop', by_epoch=False, max_iters=10)  # given to the loop itself
    assert _launch.settings_problem(cfg, ('train', )) == "train_cfg.by_epoch: IterBasedTrainLoop takes no 'by_epoch'"
    cfg.train_cfg = dict(by_epoch=False, max_iters=10, val_interval=5)  # no type: the Runner picks the loop
    assert _launch.settings_problem(cfg, ('train', )) is None
    cfg.custom_hooks = [dict(type='CheckInvalidLossHook', intervl=50)]  # a hook of mmdet's registry, misspelt
    assert _launch.settings_problem(cfg, ('train', )) == ("custom_hooks[0].intervl: CheckInvalidLossHook takes no "
                                                          "'intervl' (did you mean 'interval'?)")
    cfg.custom_hooks = []
    # a CheckpointHook subclass passing its parent's arguments on by **kwargs: they are its arguments too; what
    # neither takes is refused for training only (a test run never saves)
    from mmengine.hooks import CheckpointHook
    from mmengine.runner import Runner

    class KeepingCheckpointHook(CheckpointHook):
        def __init__(self, keep_best=False, **kwargs):
            super().__init__(**kwargs)

    cfg.default_hooks.checkpoint = dict(type=KeepingCheckpointHook, interval=1, keep_best=True, max_keep_ckpts=2)
    assert _launch.settings_problem(cfg, ('train', )) is None
    cfg.default_hooks.checkpoint.intervl = 1
    assert _launch.settings_problem(cfg, ('train', )).startswith(
        "default_hooks.checkpoint.intervl: KeepingCheckpointHook takes no 'intervl' (did you mean 'interval'?); "
        'mmengine would pass it on to Runner.save_checkpoint')
    assert _launch.settings_problem(cfg, ('test', )) is None
    # settings that another Runner reads: FlexibleRunner's own, and a Runner subclass's loops and top-level keys
    cfg = load_config(DEMO_CONFIG, need_model=True)
    cfg.runner_type = 'FlexibleRunner'
    assert _launch.new_run_key_problem(cfg, {'init_weights_for_test_or_val': False, 'strategy.type': 'X'}) is None

    class OwnLoopRunner(Runner):
        def build_train_loop(self, loop):
            return super().build_train_loop({k: v for k, v in loop.items() if k != 'warmup'})

    cfg.runner_type = OwnLoopRunner
    cfg.train_cfg.warmup = 5
    assert _launch.new_run_key_problem(cfg, {'own_setting': 1}) is None
    assert _launch.settings_problem(cfg, ('train', )) is None


def test_a_download_url_given_for_a_checkpoint_is_refused(monkeypatch, capsys, tmp_path):
    """Weights come from a file the user gives: a URL as test.py's checkpoint or as a config's load_from (read by
    train.py's checks) is named as one (not 'file not found'), nothing is fetched and no work dir is made."""
    from stvit_det.utils import paths
    from stvit_det.utils.ckpt_file import CheckpointError, read_checkpoint  # how train.py reads load_from

    url = 'https://download.openmmlab.com/mmdetection/v3.0/x.pth'
    assert 'is a download URL' in paths.missing_file_error('checkpoint', url)
    assert paths.missing_file_error('checkpoint', 's3://bucket/x.pth') is None  # a storage backend: mmengine's
    wd = str(tmp_path / 'wd')
    _assert_error(_run(monkeypatch, capsys, 'test.py', DEMO_CONFIG, url, '--work-dir', wd), 'test.py: error: ',
                  f'checkpoint {url} is a download URL', 'never downloaded')
    assert not osp.exists(wd)
    with pytest.raises(CheckpointError, match=f'{url}: a download URL, not a checkpoint file: .*never downloaded'):
        read_checkpoint(url)


def test_config_whose_custom_imports_fail_names_the_module(monkeypatch, capsys, tmp_path):
    """mmengine wraps the import error of custom_imports; the message gives the module that is missing."""
    config = tmp_path / 'cfg.py'
    config.write_text(f"_base_ = '{DEMO_CONFIG}'\ncustom_imports = dict(imports=['no_such_module_xyz'])\n")
    _assert_error(_run(monkeypatch, capsys, 'train.py', str(config), '--work-dir', str(tmp_path / 'wd')),
                  'train.py: error: ', f'{config}: its custom_imports fail: ModuleNotFoundError: ',
                  "No module named 'no_such_module_xyz'")


def test_get_flops_names_the_overrides_after_at_that_cannot_merge(monkeypatch, capsys, tmp_path):
    """``CONFIG@key=value`` overrides are not --cfg-options: the message says which ones failed."""
    spec = f'{DEMO_CONFIG}@model.backbone.depths.9=2'
    _assert_error(_run(monkeypatch, capsys, 'analysis/get_flops.py', spec, '--shape', '32', '32'), 'error: ',
                  f"the overrides after '@' in {spec}: model.backbone.depths.9=2 cannot be applied")


def test_training_checks_the_backbone_checkpoint_before_the_data(monkeypatch, capsys, tmp_path):
    """The COCO config without data and without ImageNet weights: the missing weights are named first, as the
    README says."""
    data = [f'{p}_dataloader.dataset.data_root={tmp_path}/coco/' for p in ('train', 'val', 'test')]
    _assert_error(_run(monkeypatch, capsys, 'train.py', COCO_T, '--work-dir', str(tmp_path / 'wd'), '--cfg-options',
                       *data), "train.py: error: model.backbone.init_cfg is type='Pretrained' without a checkpoint "
                  'path')
    assert not osp.exists(tmp_path / 'wd')


def test_a_folder_given_as_the_checkpoint_is_named_as_a_folder(monkeypatch, capsys, tmp_path):
    """A directory is not a missing file: test.py, train.py --resume and the ONNX exporter say which it is."""
    folder = str(tmp_path / 'work_dirs')
    os.makedirs(folder)
    expected = f'checkpoint {folder} is a directory, not a file'
    _assert_error(_run(monkeypatch, capsys, 'test.py', DEMO_CONFIG, folder), 'test.py: error:', expected)
    _assert_error(_run(monkeypatch, capsys, 'train.py', DEMO_CONFIG, '--resume', folder, '--work-dir',
                       str(tmp_path / 'wd')), 'train.py: error:', expected)
    _assert_error(_run(monkeypatch, capsys, 'deployment/export_onnx.py', DEMO_CONFIG, folder, '--shape', '64', '64',
                       '--part', 'backbone', '--out', str(tmp_path / 'b.onnx')), 'error:', expected)
