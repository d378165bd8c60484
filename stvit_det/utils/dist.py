"""Distributed training without a GPU (CPU + gloo), for tools/train.py and tools/test.py.

mmengine 0.10.7 assumes CUDA for its ``pytorch`` launcher: ``init_dist`` calls ``torch.cuda.set_device`` (absent
from CPU builds of torch) and the Runner wraps the model in DDP with ``device_ids=[LOCAL_RANK]`` (refused for a CPU
module). When no CUDA device is present, :func:`prepare_cpu_distributed` starts the gloo process group itself (the
Runner then skips ``init_dist``) and asks for a DDP wrapper without device ids. ``SyncBatchNorm`` runs on GPUs
only ("SyncBatchNorm expected input tensor to be on GPU", torch 2.13), so the config's ``SyncBN`` layers (the
heads of the Cascade and UperNet configs) become ``BN`` with per-process statistics, and a ``sync_bn`` conversion
is dropped; the change is printed. With CUDA it does nothing.
"""
import os
from typing import Any, List

import torch
import torch.distributed as dist
from mmengine.config import Config


#: what torchrun sets for every process it starts, and ``--launcher pytorch`` (env:// initialisation) reads
TORCHRUN_ENV = ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')


def prepare_cpu_distributed(cfg: Config, launcher: str, tool: str = 'train.py') -> bool:
    """Make ``cfg`` run with ``launcher`` on CPU processes; returns True when it changed anything.

    Raises:
        SystemExit: ``TOOL: error: ...`` for ``--launcher pytorch`` in a process torchrun did not start (on GPUs
            too: the process group would fail on the missing ``RANK``), and for a CPU run with a launcher other
            than ``pytorch`` (torchrun) or ``none``.
    """
    script = 'tools/dist_test.sh CONFIG CHECKPOINT' if tool == 'test.py' else 'tools/dist_train.sh CONFIG'
    missing = [name for name in TORCHRUN_ENV if name not in os.environ] if launcher == 'pytorch' else []
    if missing:
        raise SystemExit(f'{tool}: error: --launcher pytorch needs the environment torchrun gives each process it '
                         f'starts ({", ".join(missing)} not set): run through torchrun, e.g. bash {script} '
                         'NUM_PROCS, or drop --launcher')
    if launcher == 'none' or torch.cuda.is_available():
        return False
    if launcher != 'pytorch':
        raise SystemExit(f"{tool}: error: launcher '{launcher}' needs CUDA devices here; on CPU use torchrun "
                         f'(--launcher pytorch, bash {script} NUM_PROCS)')
    cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = 'gloo'
    where = sync_bn_to_bn(cfg.get('model'))
    if cfg.get('sync_bn'):
        cfg.sync_bn = None
        where.append('sync_bn')
    if where:
        print(f'CPU processes: SyncBN needs GPUs, so these layers use BatchNorm with per-process statistics: '
              f'{", ".join(where)}', flush=True)
    if cfg.get('model_wrapper_cfg') is None:
        cfg.model_wrapper_cfg = dict(
            type='MMDistributedDataParallel',
            device_ids=None,
            broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')  # env:// from torchrun: RANK, WORLD_SIZE, MASTER_ADDR/PORT
    return True


#: norm layer types that synchronise statistics across processes on GPUs only
SYNC_BN_TYPES = ('SyncBN', 'MMSyncBN')


def sync_bn_to_bn(node: Any, path: str = 'model') -> List[str]:
    """Set every ``norm_cfg`` (any dict with ``type``) of :data:`SYNC_BN_TYPES` in a model config to ``'BN'``, in
    place; returns where (config paths)."""
    changed = []
    if isinstance(node, dict):
        if node.get('type') in SYNC_BN_TYPES:
            node['type'] = 'BN'
            changed.append(path)
        for key, value in node.items():
            changed += sync_bn_to_bn(value, f'{path}.{key}')
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            changed += sync_bn_to_bn(value, f'{path}.{i}')
    return changed
