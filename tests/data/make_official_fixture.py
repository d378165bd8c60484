"""Capture ``official_backbone.pt``: outputs of the RELEASED STViT-R detection backbone (random weights, two
inputs), which ``tests/test_official_fixture.py`` compares with ``STViTR(pad_mask='official')``.

The released code is imported from a checkout the caller gives, never copied: changsn/STViT-R-Object-Detection at
commit 8b8eb1e113701cf52cdd88de71ed3332c0b4eea8, modules ``mmdet/models/backbones/swin_transformer.py``
(``SwinTransformer``; stage 3 is ``Deit``) and ``layers.py``. Their mmdet 2.x imports (``..builder``,
``mmcv_custom``, ``mmdet.utils.get_root_logger``) are stubbed; nothing else is changed. Needs timm (its
``timm.models.layers`` alias).

Usage::

    git clone https://github.com/changsn/STViT-R-Object-Detection /tmp/stvit_det_official
    python tests/data/make_official_fixture.py /tmp/stvit_det_official

The network is narrow (C = 8, depths 2-2-6-2, heads 1-1-2-4) so the file stays small; weights are drawn from a
seeded normal distribution, rounded to float16 and stored so, and run in float32. Inputs: a batch of two
120x168 images (stage-3 map 8x11: bottom and right padding) and a batch of two 112x150 images (stage 3 7x10: no
bottom padding, where the released mask ``pad_mask[:, -0:, -pad_r:]`` marks every row). Batches of two, because
PyTorch 2.13's CPU BatchNorm backward is wrong for a batch of ONE whose output gradient has channels-last strides,
which the released stem meets (``x.flatten(2).transpose(1, 2)`` after its BatchNorm): its input gradient then
disagrees with finite differences (our stem, which permutes to NHWC, is not affected). The file holds the
official-layout state dict (without the recomputed index buffers), the inputs (float16, exact), the four stage outputs
in eval mode and, for the first 112x150 image, the input gradient of a fixed linear loss.
"""
import argparse
import importlib
import logging
import os
import os.path as osp
import subprocess
import sys
import tempfile
import types

import torch

ARCH = dict(embed_dim=8, depths=[2, 2, 6, 2], num_heads=[1, 1, 2, 4], window_size=7, window_sample_size=3,
            k_window_size_1=14, k_window_size_2=21, restore_k_window_size=27, drop_path_rate=0.0, pad_mask=True)
SIZES = [(2, 120, 168), (2, 112, 150)]


def load_official(repo: str) -> type:
    """The released ``SwinTransformer`` class, imported from ``repo`` with its mmdet 2.x imports stubbed."""
    src = osp.join(repo, 'mmdet', 'models', 'backbones')
    pkg = tempfile.mkdtemp(prefix='stvit_official_')
    os.makedirs(osp.join(pkg, 'stvit_official', 'backbones'))
    open(osp.join(pkg, 'stvit_official', '__init__.py'), 'w').close()
    open(osp.join(pkg, 'stvit_official', 'backbones', '__init__.py'), 'w').close()
    with open(osp.join(pkg, 'stvit_official', 'builder.py'), 'w') as f:
        f.write('class _Registry:\n    def register_module(self):\n        return lambda cls: cls\n\n\n'
                'BACKBONES = _Registry()\n')
    for name in ('layers.py', 'swin_transformer.py'):
        os.symlink(osp.join(src, name), osp.join(pkg, 'stvit_official', 'backbones', name))
    sys.modules['mmcv_custom'] = types.SimpleNamespace(load_checkpoint=None)
    import mmdet.utils
    mmdet.utils.get_root_logger = logging.getLogger
    sys.path.insert(0, pkg)
    return importlib.import_module('stvit_official.backbones.swin_transformer').SwinTransformer


def randomize_float16_exact_(model: torch.nn.Module) -> None:
    """Random weights and BatchNorm statistics, rounded to float16 (so the stored float16 file is exact): a seeded
    normal of std 0.3 around 0, around 1 for norm / BN weights, 1 + |.| for running variances. Recomputed shift
    masks (``attn_mask`` buffers) are left as built."""
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point() and not name.endswith('attn_mask'):
                value = torch.randn_like(t) * 0.3
                if name.endswith('running_var') or name.split('.')[-2].startswith(('norm', 'bn')) and \
                        name.endswith('.weight'):
                    value = 1 + value.abs() if name.endswith('running_var') else 1 + value
                t.copy_(value.half().float())


def released_commit(repo: str) -> str:
    """The commit of the checkout the released code was imported from ('unknown' without git)."""
    try:
        return subprocess.run(['git', '-C', repo, 'rev-parse', 'HEAD'], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'


def loss_weights(outs):
    """Fixed, non-uniform weights of the scalar loss sum(w * out) whose input gradient is stored."""
    return [torch.cos(torch.arange(o.numel(), dtype=torch.float32) * 0.37).view_as(o) for o in outs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('repo', help='checkout of changsn/STViT-R-Object-Detection')
    parser.add_argument('--out', default=osp.join(osp.dirname(osp.abspath(__file__)), 'official_backbone.pt'))
    args = parser.parse_args()
    SwinTransformer = load_official(args.repo)
    torch.manual_seed(0)
    model = SwinTransformer(**ARCH)
    model.init_weights()
    randomize_float16_exact_(model)
    model.eval()
    cases = []
    for batch, h, w in SIZES:
        x = (torch.randn(batch, 3, h, w) * 2).half().float().requires_grad_()
        outs = model(x)
        case = dict(input=x.detach().half(), outputs=[o.detach() for o in outs])
        if h == 112:  # the quirk case; image 0 only (eval: samples are independent): float32 images are the bulk
            sum((o * wt).sum() for o, wt in zip(outs, loss_weights(outs))).backward()
            case['input_grad'] = x.grad[:1].clone()
        cases.append(case)
    commit = released_commit(args.repo)
    state = {k: v.half() for k, v in model.state_dict().items()  # (Swin's index buffers are recomputed)
             if not k.endswith(('relative_position_index', 'num_batches_tracked'))}
    torch.save(dict(arch=ARCH, state_dict=state, cases=cases, official_commit=commit), args.out)
    print(f'wrote {args.out} ({osp.getsize(args.out) / 1e3:.0f} kB) from the released code at {commit}')


if __name__ == '__main__':
    main()
