"""Convert Swin (official / timm / mmdet layout) or STViT-R checkpoints into an STViTR backbone state dict.

    python tools/convert_ckpt.py swin_small_patch4_window7_224.pth stvit-r-s_from-swin.pth --arch small

The output holds ``{'state_dict': ..., 'meta': {...}}`` and loads with
``model.backbone.init_cfg=dict(type='Pretrained', checkpoint=OUT)``. Every source key without a counterpart and
every STViTR key the source cannot fill is printed. The conversion itself is
``stvit_det.utils.ckpt_convert.convert_to_stvit`` (also used by ``STViTR.init_weights``).
"""
import argparse
import os
import sys

import torch

import stvit_det  # noqa: F401
from stvit_det import STViTR
from stvit_det.utils import allow_mmengine_checkpoints
from stvit_det.utils.ckpt_convert import convert_to_stvit


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('src', help='source checkpoint (.pth)')
    p.add_argument('dst', help='output checkpoint (.pth)')
    p.add_argument('--arch', default='tiny', choices=['tiny', 'small', 'base'], help='target STViTR variant')
    p.add_argument('--no-sparsify', action='store_true', help='target has plain Swin blocks in stage 3')
    p.add_argument('--stem', default='conv', choices=['conv', 'patch'], help='target stem')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not os.path.isfile(args.src):
        sys.exit(f'convert_ckpt: source checkpoint not found: {args.src}')
    allow_mmengine_checkpoints()
    try:
        ckpt = torch.load(args.src, map_location='cpu', weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any unreadable file by name
        sys.exit(f'convert_ckpt: cannot read {args.src}: {type(e).__name__}: {e}')
    sparsify = not args.no_sparsify
    model = STViTR(arch=args.arch, sparsify=sparsify, stem=args.stem)
    try:
        sd, report = convert_to_stvit(ckpt, sparsify=sparsify, patch_stem=args.stem == 'patch')
        loaded = model.load_pretrained(sd, source=args.src)  # validates names and shapes
        report.update(missing=loaded['missing'], unexpected=loaded['unexpected'])
    except (TypeError, ValueError) as e:
        sys.exit(f'convert_ckpt: {args.src}: {e}')
    os.makedirs(os.path.dirname(os.path.abspath(args.dst)), exist_ok=True)
    meta = dict(source=os.path.basename(args.src), source_layout=report['layout'], arch=args.arch,
                missing=report['missing'], dropped=report['dropped'])
    torch.save(dict(state_dict=sd, meta=meta), args.dst)  # only converted tensors: the rest keeps its init
    print(f'{args.src} ({report["layout"]}) -> {args.dst}: {len(report["missing"])} STViTR keys not in the source '
          f'(they keep their initialisation), {len(report["dropped"])} source keys without counterpart, '
          f'{report["split_qkv"]} qkv tensors split into q/kv')
    for name in ('missing', 'unexpected', 'dropped'):
        for k in report[name]:
            print(f'  {name}: {k}')


if __name__ == '__main__':
    main()
