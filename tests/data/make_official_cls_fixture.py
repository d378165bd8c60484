"""Capture ``official_classifier.pt``: outputs of the RELEASED STViT-R ImageNet network (random weights), which
``tests/test_official_classifier_fixture.py`` compares with an MMPretrain ``ImageClassifier`` around
``STViTR(stage3_form='classification')`` after ``imagenet_to_classifier`` (what ``tools/convert_ckpt.py
--classifier`` runs).

The released code is imported from a checkout the caller gives, never copied: changsn/STViT-R at commit
b4a27a07fc282198466b3b688ebecc6f146cc9fd, ``models/swin_transformer.py`` (``SwinTransformer``; stage 3 is ``Deit``),
``models/layers.py`` and ``models/multi_scale.py``, imported unchanged (the checkout goes on ``sys.path``). Needs
timm (its ``timm.models.layers`` alias). It is built as its ImageNet logs ran it (``log/small.txt``: ``SHORTCUT``,
``USE_GLOBAL``, ``RELATIVE_POS`` and ``USE_CONV_POS`` all False, ``multi_scale_semantic_token1``, 3x3 samples).

Usage::

    git clone https://github.com/changsn/STViT-R /tmp/stvit_cls_official
    python tests/data/make_official_cls_fixture.py /tmp/stvit_cls_official

The network is narrow (C = 8, depths 2-2-6-2, heads 1-1-2-4, 10 classes) so the file stays small; weights (layer
scales and BatchNorm statistics included, so that every semantic branch counts) are drawn from a seeded normal
distribution, rounded to float16 and stored so, and run in float32. The released network takes 224x224 only (its
patch grid, shift masks and stage-3 unfold are built for it). Input: a batch of two 224x224 images (two, as in
``make_official_fixture.py``: PyTorch's CPU BatchNorm backward with a batch of one and channels-last output
gradient strides). The file holds the official-layout state dict (without the recomputed index buffers and shift
masks), the input (float16, exact), the features the head reads (after the final norm and the average pool) and
the logits in eval mode, and, for the first image, the input gradient of a fixed linear loss of the logits
(eval: samples are independent).
"""
import argparse
import os.path as osp
import sys

import torch

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))  # its sibling, also when a test loads this file
from make_official_fixture import randomize_float16_exact_, released_commit  # noqa: E402

ARCH = dict(img_size=224, num_classes=10, embed_dim=8, depths=[2, 2, 6, 2], num_heads=[1, 1, 2, 4], window_size=7,
            sample_window_size=3, drop_path_rate=0.0, multi_scale='multi_scale_semantic_token1', relative_pos=False,
            use_conv_pos=False, shortcut=False, use_global=False)
BATCH = 2


def load_official(repo: str) -> type:
    """The released ``SwinTransformer`` class, imported from the checkout ``repo`` as it is."""
    sys.path.insert(0, repo)
    from models.swin_transformer import SwinTransformer
    return SwinTransformer


def loss_weights(logits: torch.Tensor) -> torch.Tensor:
    """Fixed, non-uniform weights of the scalar loss sum(w * logits) whose input gradient is stored."""
    return torch.cos(torch.arange(logits.numel(), dtype=torch.float32) * 0.37).view_as(logits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('repo', help='checkout of changsn/STViT-R')
    parser.add_argument('--out', default=osp.join(osp.dirname(osp.abspath(__file__)), 'official_classifier.pt'))
    args = parser.parse_args()
    SwinTransformer = load_official(args.repo)
    torch.manual_seed(0)
    model = SwinTransformer(**ARCH)
    randomize_float16_exact_(model)
    model.eval()
    features = []
    model.head.register_forward_pre_hook(lambda module, inputs: features.append(inputs[0].detach()))
    x = (torch.randn(BATCH, 3, 224, 224) * 2).half().float().requires_grad_()
    logits = model(x)
    (logits * loss_weights(logits)).sum().backward()
    commit = released_commit(args.repo)
    state = {k: v.half() for k, v in model.state_dict().items()  # index buffers and shift masks are recomputed
             if not k.endswith(('relative_position_index', 'num_batches_tracked', 'attn_mask'))}
    torch.save(dict(arch=ARCH, state_dict=state, input=x.detach().half(), features=features[0],
                    logits=logits.detach(), input_grad=x.grad[:1].clone(), official_commit=commit), args.out)
    print(f'wrote {args.out} ({osp.getsize(args.out) / 1e3:.0f} kB) from the released code at {commit}')


if __name__ == '__main__':
    main()
