"""Distributed training and resuming, end to end through the user-facing scripts on the CPU, with the nuclei demo
config shrunk to a few iterations on 128x128 crops:

- ``tools/dist_train.sh CONFIG 2``: two DDP processes (torchrun, gloo) train 2 iterations and save a checkpoint,
  which ``tools/dist_test.sh CONFIG CKPT 2`` then evaluates (COCO bbox / segm metrics on the held-out image);
- ``tools/train.py`` killed (SIGKILL) after its first checkpoint, then ``tools/train.py --resume``: the iteration
  count, optimizer state, LR schedulers and message hub continue from the checkpoint instead of restarting.

Every checkpoint is deleted at the end (a demo Mask R-CNN checkpoint is ~100 MB).
"""
import json
import os
import os.path as osp
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import yaml
from mmengine.config import Config

from stvit_det.utils import allow_checkpoint_globals

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOLS = osp.join(ROOT, 'tools')
DEMO = osp.join(ROOT, 'configs', 'stvit-r', 'mask-rcnn_stvit-r-demo_fpn_nuclei.py')
CROP = 128


@pytest.fixture(scope='module')
def demo_root(tmp_path_factory):
    """A directory whose ``data/nuclei_demo`` holds the demo dataset (the config's relative data_root)."""
    root = tmp_path_factory.mktemp('demo_run')
    proc = subprocess.run(
        [sys.executable, osp.join(TOOLS, 'make_demo_dataset.py'), '--out', str(root / 'data' / 'nuclei_demo')],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    yield root
    shutil.rmtree(root, ignore_errors=True)


def tiny_options(max_iters: int, ckpt_interval: int):
    """--cfg-options: `max_iters` iterations of batch 1 on CROP x CROP crops, no validation, checkpoints every
    `ckpt_interval` iterations. The resize / crop transforms are found by type, not by position."""
    pipeline = Config.fromfile(DEMO).train_dataloader.dataset.pipeline
    opts = [
        f'train_cfg.max_iters={max_iters}', f'default_hooks.checkpoint.interval={ckpt_interval}',
        'default_hooks.logger.interval=1', 'val_cfg=None', 'val_dataloader=None', 'val_evaluator=None',
        'train_dataloader.batch_size=1', 'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False'
    ]
    resized = 0
    for i, t in enumerate(pipeline):
        if t.type in ('RandomResize', 'Resize'):
            opts.append(f'train_dataloader.dataset.pipeline.{i}.scale=({CROP},{CROP})')
            resized += 1
        elif t.type == 'RandomCrop':
            opts.append(f'train_dataloader.dataset.pipeline.{i}.crop_size=({CROP},{CROP})')
            resized += 1
    assert resized, f'no resize / crop transform to shrink in {DEMO}'
    return opts


def env():
    return dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore', PYTHON=sys.executable)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def load_ckpt(path):
    allow_checkpoint_globals()
    return torch.load(path, map_location='cpu', weights_only=True)


def optimizer_steps(ckpt):
    return {int(s['step']) for s in ckpt['optimizer']['state'].values()}


def test_dist_train_two_processes(demo_root):
    """Also: a head with SyncBN (as the Cascade and UperNet configs have) trains on CPU processes as BatchNorm."""
    work_dir = demo_root / 'work_ddp'
    config = demo_root / 'demo_syncbn.py'
    config.write_text(f"_base_ = '{DEMO}'\n"
                      "model = dict(roi_head=dict(mask_head=dict(norm_cfg=dict(type='SyncBN', requires_grad=True))))\n")
    try:
        proc = subprocess.run(
            ['bash', osp.join(TOOLS, 'dist_train.sh'), str(config), '2', '--work-dir', str(work_dir),
             '--cfg-options', *tiny_options(max_iters=2, ckpt_interval=2)],
            cwd=demo_root, env=dict(env(), PORT=str(free_port())), capture_output=True, text=True, timeout=420)
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-5000:]
        assert 'Distributed training: True' in log and 'GPU number: 2' in log  # world size 2
        assert ('SyncBN needs GPUs, so these layers use BatchNorm with per-process statistics: '
                'model.roi_head.mask_head.norm_cfg') in log
        assert 'Iter(train) [2/2]' in log
        ckpt = load_ckpt(work_dir / 'iter_2.pth')
        assert ckpt['meta']['iter'] == 2
        assert optimizer_steps(ckpt) == {2}
        assert not any(k.startswith('module.') for k in ckpt['state_dict'])  # saved unwrapped from DDP

        # without PYTHON: the scripts default to the environment tools/install.sh made (no `python` on PATH here)
        bare = {k: v for k, v in env().items() if k != 'PYTHON'}
        bare['PATH'] = '/usr/bin:/bin'
        proc = subprocess.run(
            ['bash', osp.join(TOOLS, 'dist_test.sh'), str(config), str(work_dir / 'iter_2.pth'), '2', '--work-dir',
             str(work_dir), '--out', str(work_dir / 'metrics.yaml'), '--out-item', 'metrics',
             '--cfg-options', 'test_dataloader.num_workers=0',
             'test_dataloader.persistent_workers=False'],
            cwd=demo_root, env=dict(bare, PORT=str(free_port())), capture_output=True, text=True, timeout=300)
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-5000:]
        assert 'Distributed training: True' in log
        assert 'coco/bbox_mAP:' in log and 'coco/segm_mAP:' in log
        metrics = yaml.safe_load((work_dir / 'metrics.yaml').read_text())  # written by rank 0 alone
        assert f"coco/segm_mAP: {metrics['coco/segm_mAP']:.4f}" in log
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def test_dist_scripts_refuse_a_bad_process_count(tmp_path):
    """A missing NUM_PROCS (or the checkpoint path in its place) ends with the usage line before torchrun starts:
    no torchrun traceback about --nproc_per_node, no work directory."""
    cases = [('dist_train.sh', ['cfg.py'], "not ''", 'dist_train.sh CONFIG NUM_PROCS'),
             ('dist_train.sh', ['cfg.py', '0', '--work-dir', str(tmp_path / 'w')], "not '0'", 'NUM_PROCS'),
             ('dist_test.sh', ['cfg.py', '2', 'ckpt.pth'], "not 'ckpt.pth'",
              'dist_test.sh CONFIG CHECKPOINT NUM_PROCS')]
    for script, args, got, usage in cases:
        proc = subprocess.run(['bash', osp.join(TOOLS, script), *args], env=env(), capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 2, (script, args, proc.stderr)
        assert proc.stderr.startswith('error: NUM_PROCS must be a positive integer (or auto, cpu, gpu, xpu), ')
        assert got in proc.stderr
        assert usage in proc.stderr and 'Traceback' not in proc.stderr
    assert not (tmp_path / 'w').exists()


def test_slurm_train_passes_arguments_whole(tmp_path):
    """tools/slurm_train.sh hands train.py's options to srun as given: an option with spaces stays one argument
    (a stand-in `srun` on PATH prints its arguments, one per line)."""
    fake = tmp_path / 'bin'
    fake.mkdir()
    (fake / 'srun').write_text('#!/bin/sh\nfor a in "$@"; do echo "[$a]"; done\n')
    (fake / 'srun').chmod(0o755)
    proc = subprocess.run(
        ['bash', osp.join(TOOLS, 'slurm_train.sh'), 'part', 'job', 'cfg.py', 'work dir', '--cfg-options', 'a="x y"',
         'b=1'], env=dict(env(), PATH=f'{fake}:/usr/bin:/bin', GPUS='2'), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    args = proc.stdout.splitlines()
    assert args[-6:] == ['[cfg.py]', '[--work-dir=work dir]', '[--launcher=slurm]', '[--cfg-options]', '[a="x y"]',
                         '[b=1]']
    assert args[args.index('[--kill-on-bad-exit=1]') + 1] == f'[{sys.executable}]'  # PYTHON from env()
    # without PYTHON: the environment tools/install.sh made (tools/_python.sh)
    bare = {k: v for k, v in env().items() if k != 'PYTHON'}
    proc = subprocess.run(['bash', osp.join(TOOLS, 'slurm_train.sh'), 'part', 'job', 'cfg.py', 'w'],
                          env=dict(bare, PATH=f'{fake}:/usr/bin:/bin'), capture_output=True, text=True, timeout=60)
    venv = os.environ.get('STVIT_VENV') or osp.join(osp.dirname(TOOLS), '.venv')
    args = proc.stdout.splitlines()
    assert proc.returncode == 0 and args[args.index('[--kill-on-bad-exit=1]') + 1] == f'[{venv}/bin/python]'


def test_slurm_test_passes_arguments_whole(tmp_path):
    """tools/slurm_test.sh (mmdet's shape): CONFIG CHECKPOINT, the slurm launcher, test.py's options whole."""
    fake = tmp_path / 'bin'
    fake.mkdir()
    (fake / 'srun').write_text('#!/bin/sh\nfor a in "$@"; do echo "[$a]"; done\n')
    (fake / 'srun').chmod(0o755)
    proc = subprocess.run(
        ['bash', osp.join(TOOLS, 'slurm_test.sh'), 'part', 'job', 'cfg.py', 'my ckpt.pth', '--out', 'r s.pkl'],
        env=dict(env(), PATH=f'{fake}:/usr/bin:/bin', GPUS='2', PORT='29611'), capture_output=True, text=True,
        timeout=60)
    assert proc.returncode == 0, proc.stderr
    args = proc.stdout.splitlines()
    assert args[:2] == ['[-p]', '[part]'] and '[--job-name=job]' in args and '[--ntasks=2]' in args
    assert args[-6:] == [f'[{osp.join(TOOLS, "test.py")}]', '[cfg.py]', '[my ckpt.pth]', '[--launcher=slurm]',
                         '[--out]', '[r s.pkl]']


@pytest.mark.parametrize('script,args,message', [
    ('slurm_train.sh', ['part', 'job', 'cfg.py'], 'error: WORK_DIR is missing; usage: bash tools/slurm_train.sh '
                                                   'PARTITION JOB_NAME CONFIG WORK_DIR'),
    # mmseg's slurm_train.sh has no WORK_DIR: its users' options would land in --work-dir=--amp
    ('slurm_train.sh', ['part', 'job', 'cfg.py', '--amp'], "error: WORK_DIR expected, got the option '--amp'"),
    ('slurm_train.sh', [], 'error: PARTITION is missing'),
    ('slurm_test.sh', ['part', 'job', 'cfg.py'], 'error: CHECKPOINT is missing; usage: bash tools/slurm_test.sh '
                                                  'PARTITION JOB_NAME CONFIG CHECKPOINT'),
    ('slurm_test.sh', ['part', 'job', 'cfg.py', '--out', 'r.pkl'],
     "error: CHECKPOINT expected, got the option '--out'"),
])
def test_slurm_scripts_refuse_missing_arguments(tmp_path, script, args, message):
    """A missing or misplaced leading argument ends with the usage line before srun is called (srun here would
    print that it ran)."""
    fake = tmp_path / 'bin'
    fake.mkdir()
    (fake / 'srun').write_text('#!/bin/sh\necho SRUN-RAN\n')
    (fake / 'srun').chmod(0o755)
    proc = subprocess.run(['bash', osp.join(TOOLS, script), *args], env=dict(env(), PATH=f'{fake}:/usr/bin:/bin'),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and 'SRUN-RAN' not in proc.stdout
    assert proc.stderr.strip().startswith(message), proc.stderr


def test_resume_after_kill(demo_root):
    work_dir = demo_root / 'work_resume'
    train = [sys.executable, osp.join(TOOLS, 'train.py'), DEMO, '--work-dir', str(work_dir)]
    try:
        # run 1: far more iterations than it will live; killed once its first checkpoint is complete
        # (CheckpointHook writes `last_checkpoint` after the .pth file)
        with open(demo_root / 'run1.log', 'w') as log1:
            run1 = subprocess.Popen(
                [*train, '--cfg-options', *tiny_options(max_iters=50, ckpt_interval=1)],
                cwd=demo_root, env=env(), stdout=log1, stderr=subprocess.STDOUT)
            deadline = time.time() + 300
            while not (work_dir / 'last_checkpoint').exists() and run1.poll() is None and time.time() < deadline:
                time.sleep(0.1)
            run1.send_signal(signal.SIGKILL)
            run1.wait(timeout=60)
        assert run1.returncode == -signal.SIGKILL, (demo_root / 'run1.log').read_text()[-5000:]
        last = (work_dir / 'last_checkpoint').read_text().strip()
        k = load_ckpt(last)['meta']['iter']
        assert k >= 1 and osp.basename(last) == f'iter_{k}.pth'

        # run 2: --resume (the latest checkpoint of the work dir) and one more iteration
        proc = subprocess.run([*train, '--resume', '--cfg-options', *tiny_options(max_iters=k + 1, ckpt_interval=1)],
                              cwd=demo_root, env=env(), capture_output=True, text=True, timeout=300)
        log2 = proc.stdout + proc.stderr
        assert proc.returncode == 0, log2[-5000:]
        assert f'resumed epoch: 0, iter: {k}' in log2
        assert f'Iter(train) [{k + 1}/{k + 1}]' in log2 and 'Iter(train) [1/' not in log2

        ckpt = load_ckpt(work_dir / f'iter_{k + 1}.pth')
        assert ckpt['meta']['iter'] == k + 1
        assert optimizer_steps(ckpt) == {k + 1}  # AdamW moments continued (a fresh optimizer would be at 1)
        assert all(s['last_step'] == k + 1 for s in ckpt['param_schedulers'])
        loss_history = ckpt['message_hub']['log_scalars']['train/loss']
        assert len(loss_history.data[0]) == k + 1  # the message hub kept run 1's history
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def test_tta_on_a_box_detector_takes_mmdets_defaults(demo_root):
    """tools/test.py --tta on a detection config without tta_model / tta_pipeline (mmdet's test configs state none)
    fills in mmdet's defaults as its own tool does (DetTTAModel, the image and its mirror, boxes merged by NMS; it
    was refused), and evaluates COCO boxes. The box-only demo detector, seeded random weights, every score kept.
    Also --out-item metrics (MMPretrain's option): the metrics the run printed, in a JSON file."""
    import stvit_det  # noqa: F401
    from mmengine.registry import MODELS, init_default_scope

    config = demo_root / 'demo_boxes.py'
    config.write_text(f"_base_ = '{DEMO}'\n"
                      "model = dict(roi_head=dict(mask_roi_extractor=None, mask_head=None),\n"
                      "             test_cfg=dict(rcnn=dict(score_thr=0.0)))\n"
                      "test_evaluator = dict(metric='bbox')\n")
    init_default_scope('mmdet')
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(str(config)).model)
    ckpt = demo_root / 'demo_boxes.pth'
    torch.save({'state_dict': model.state_dict()}, ckpt)
    work_dir = demo_root / 'work_tta'
    try:
        proc = subprocess.run(
            [sys.executable, osp.join(TOOLS, 'test.py'), str(config), str(ckpt), '--tta', '--work-dir', str(work_dir),
             '--out', str(work_dir / 'metrics.json'), '--out-item', 'metrics', '--cfg-options',
             'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False'],
            cwd=demo_root, env=dict(env(), PYTHONWARNINGS='default'), capture_output=True, text=True, timeout=300)
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-5000:]
        assert 'Cannot find ``tta_model`` in config, we will set it as default.' in log
        assert 'Cannot find ``tta_pipeline`` in config, we will set it as default.' in log
        assert 'coco/bbox_mAP:' in log and 'segm' not in log.split('Evaluating bbox')[-1]
        metrics = json.loads((work_dir / 'metrics.json').read_text())
        assert sorted(metrics) == sorted(f'coco/bbox_{k}' for k in ('mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m',
                                                                      'mAP_l'))
        assert f"coco/bbox_mAP: {metrics['coco/bbox_mAP']:.4f}" in log
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
        ckpt.unlink()
