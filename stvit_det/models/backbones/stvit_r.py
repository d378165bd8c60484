"""STViT-R backbone for MMDetection: a Swin Transformer whose stage 3 sparsifies every 7x7 window to a few
semantic tokens and recovers the full-resolution map (dumbbell units), with four NCHW outputs for an FPN.

Paper: Chang et al., "Making Vision Transformers Efficient from A Token Sparsification View", CVPR 2023,
arXiv 2303.08685. Official code (Apache-2.0): changsn/STViT-R-Object-Detection
``mmdet/models/backbones/swin_transformer.py`` (``SwinTransformer`` + ``Deit``) and changsn/STViT-R. Swin:
microsoft/Swin-Transformer (MIT). mmdet's ``SwinTransformer`` (Apache-2.0) is the model for the detection duties
(out_indices, norms, frozen stages, init_cfg). Written anew here; parameter names follow the official checkpoints.
"""
import difflib
import inspect
import re
import warnings
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmengine.runner.checkpoint import CheckpointLoader
from mmdet.registry import MODELS
from mmdet.utils import OptMultiConfig

from ...utils.checkpoint_safety import allow_checkpoint_globals
from ...utils.ckpt_convert import convert_to_stvit, filter_ignorable, select_prefix, summarise_keys
from ...utils.ckpt_file import NO_CHECKPOINT, init_cfg_problem, pretrained_init, read_checkpoint
from ...utils.paths import is_remote
from ...utils.values import is_count, is_finite_number, is_int, is_sequence
from ..layers.attention import check_attn_impl
from ..layers.classification_form import STAGE3_FORMS, classification_pattern, classification_swin_pattern
from ..layers.stem import ConvStem, PatchStem
from ..layers.stvit_stage import SPARSIFIER_UNITS, STViTStage, dumbbell_pattern, swin_pattern
from ..layers.window_ops import check_pad_mask, tiles_fit

ARCH_SETTINGS: Dict[str, Dict] = {
    'tiny': dict(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2),
    'small': dict(embed_dims=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2),
    'base': dict(embed_dims=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.3),
}

SPARSE_STAGE = 2  # stage 3 (stride 16) is the sparsified one


# what a Swin setting that STViTR does not take becomes here (mmdet / mmseg SwinTransformer argument names)
SWIN_ARGUMENT_HINTS = {
    'convert_weights': 'Swin weights given by init_cfg are converted automatically',
    'patch_norm': "stem='patch' is Swin's Conv4x4 + LayerNorm stem",
    'use_abs_pos_embed': 'there is no absolute position embedding',
    'pretrain_img_size': 'there is no absolute position embedding',
}


def unknown_arguments_message(names: Sequence[str], known: Sequence[str]) -> str:
    """One message for every argument ``STViTR`` does not take (Python's own ``TypeError`` names the first only,
    so a Swin config with the backbone type swapped would fail once per inherited key): a near miss of one of the
    ``known`` names is a typo ("did you mean"); the others most likely come from another backbone's settings in a
    ``_base_`` config."""
    typos = {n: difflib.get_close_matches(n, known, n=1, cutoff=0.8) for n in names}
    parts = [f'{n} (did you mean {m[0]}?)' if m else n for n, m in typos.items()]
    message = f"STViTR got arguments it does not take: {', '.join(parts)}."
    foreign = [n for n, m in typos.items() if not m]
    if foreign:
        hints = [f'{n}: {SWIN_ARGUMENT_HINTS[n]}' for n in foreign if n in SWIN_ARGUMENT_HINTS]
        message += (" Inherited from another backbone's settings (e.g. mmdet's or mmseg's SwinTransformer in a "
                    "_base_ config)? Replace them with backbone=dict(_delete_=True, type='STViTR', ...)"
                    + (f" ({'; '.join(hints)})" if hints else ''))
    return message


@MODELS.register_module()
class STViTR(BaseModule):
    """STViT-R backbone: conv stem, Swin stages 1, 2, 4 and a sparsified stage 3 of dumbbell units
    (window attention -> semantic-token generation -> refinement -> local -> global -> recovery).

    Outputs: for every index in ``out_indices``, an NCHW map with channels C * 2**i at stride 4 * 2**i, each
    through its own LayerNorm ``norm{i}``.

    Args:
        arch: ``'tiny'`` (ours: Swin-T sizes, one dumbbell unit), ``'small'`` or ``'base'`` (official).
        embed_dims, depths, num_heads: override the arch's C, blocks per stage and heads per stage.
        window_size: Swin window (7).
        mlp_ratio: MLP hidden width / C.
        qkv_bias: bias in the q / kv / qkv projections.
        drop_path_rate: stochastic depth, linear over all blocks; None takes the arch's detection default.
        stem: ``'conv'`` (STViT-R) or ``'patch'`` (Swin's Conv4x4 + LayerNorm).
        sparsify: stage 3 made of dumbbell units (True) or plain alternating Swin blocks (False).
        sparsifier: what the dumbbell units pool and recover with: ``'stvit'`` (generate / recover, the paper) or
            ``'tokenlearner'`` (learn / fuse: per-window TokenLearner v1.1 and a TokenFuser, ``token_learner.py``);
            refine / local / global are shared. Used when ``sparsify``.
        stage3_form: ``'detection'`` (default: the windowed stage 3 of the released detectors, which is what the
            detection configs fine-tune) or ``'classification'`` (the released ImageNet network: fixed-unfold
            generation, global refinement and recovery, and Swin's no-shift rule for maps that fit one window, so
            released ImageNet weights evaluate as released; stage-3 sides of 14 or 21 only; see
            ``layers/classification_form.py``). Both forms have the same parameters.
        semantic_samples: semantic tokens per window side (3 -> 9 per window).
        regions: key-region sides (generate, refine, recover) = (14, 21, 27): the first two in image tokens, the
            last in semantic-grid cells.
        layer_scale_init: initial layer scale of the semantic blocks.
        pad_mask: ``'correct'`` (default: every padded key masked), ``'official'`` (the released code's partial
            mask, to reproduce released checkpoints exactly) or ``'none'``.
        attn_impl: ``'auto'`` (default: per block ``'tiled'``, or ``'dense'`` where one masked call over the
            whole map is cheaper by the cost model: where the key region covers at least a quarter of the map with 9
            queries per window, half of it with 49; ``layers/attention.py``, ``choose_region_impl``),
            ``'tiled'`` (each key region read in place as R x R neighbouring tiles: the paper's region
            arithmetic at any size, nothing duplicated), ``'dense'`` (every key under a region mask, one fused
            call), ``'sdpa'`` (key regions gathered per window, fused attention), ``'flex'`` (PyTorch's
            FlexAttention with a block mask from the region table: the GPU path; forward only on the CPU) or
            ``'reference'`` (gathered, written-out softmax: the oracle). See ``layers/attention.py``; Swin blocks
            pick their kernel per device (``layers/swin_block.py``).
        out_indices: stages whose outputs are returned, in [0, 3]; negative ones count from the end (-1 is stage
            3, as mmpretrain's Swin spells it). Later stages (and the last one's patch merging) are not run, and
            their parameters require no gradient (DDP refuses a parameter that requires one and gets none). A
            classifier reads the last output only: give it ``out_indices=(3, )`` (mmpretrain's Swin default).
        frozen_stages: -1 none; 0 the stem; k >= 1 the stem and stages 0..k-1 (with their patch merging and
            output norms), mmdet's and mmseg's Swin meaning (mmpretrain's Swin freezes stages 0..k). Frozen parts stay
            in eval mode after ``train()``.
        norm_eval: keep the stem BatchNorms in eval mode while training (the conv stem's; ``stem='patch'`` has
            none).
        with_cp: activation checkpointing of every block, stage 3 included.
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH)`` loads STViT-R weights (ImageNet or a detector's
            ``backbone.``) or converts Swin weights (official, timm or mmdet layout); missing and unexpected
            keys are logged. Nothing else: STViTR initialises itself (trunc-normal), and other initialisers
            (``'Kaiming'``, a misspelt ``'pretrained'``) would be ignored, so they are refused.
        pretrained: deprecated spelling of ``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` (a local file),
            which mmseg's ``EncoderDecoder`` passes on from ``model.pretrained``; a URL-like value (ResNet configs
            set ``'open-mmlab://resnet50_v1c'``: another backbone's weights, to download) is refused.
        **unknown: refused, all named in one ``TypeError``: typically the settings of mmdet's / mmseg's
            ``SwinTransformer`` that a config merging ``type='STViTR'`` into a Swin base inherits.
    """

    def __init__(self,
                 arch: str = 'tiny',
                 embed_dims: Optional[int] = None,
                 depths: Optional[Sequence[int]] = None,
                 num_heads: Optional[Sequence[int]] = None,
                 window_size: int = 7,
                 mlp_ratio: float = 4.0,
                 qkv_bias: bool = True,
                 drop_path_rate: Optional[float] = None,
                 stem: str = 'conv',
                 sparsify: bool = True,
                 sparsifier: str = 'stvit',
                 stage3_form: str = 'detection',
                 semantic_samples: int = 3,
                 regions: Sequence[int] = (14, 21, 27),
                 layer_scale_init: float = 1e-5,
                 pad_mask: str = 'correct',
                 attn_impl: str = 'auto',
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 init_cfg: OptMultiConfig = None,
                 pretrained: Optional[str] = None,
                 **unknown) -> None:
        if unknown:
            known = [p for p in inspect.signature(STViTR.__init__).parameters if p not in ('self', 'unknown')]
            raise TypeError(unknown_arguments_message(sorted(unknown), known))
        if pretrained is not None:
            if is_remote(pretrained):
                raise ValueError(f"STViTR got pretrained='{pretrained}' (from the config's model.pretrained, set by "
                                 'configs of other backbones): set model.pretrained=None, and give STViT-R weights '
                                 "as backbone init_cfg=dict(type='Pretrained', checkpoint=PATH) (a local file)")
            if init_cfg is not None:
                raise ValueError('STViTR: set init_cfg or pretrained (deprecated), not both')
            warnings.warn("STViTR: pretrained=PATH is deprecated, use init_cfg=dict(type='Pretrained', "
                          'checkpoint=PATH)')
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        problem = init_cfg_problem(init_cfg)
        if problem:
            raise ValueError(problem)
        super().__init__(init_cfg=init_cfg)
        if not isinstance(arch, str) or arch not in ARCH_SETTINGS:
            # mmpretrain's Swin takes arch=dict(embed_dims=..., depths=..., num_heads=...): here those are arguments
            hint = (' (for other sizes keep an arch and give embed_dims / depths / num_heads as arguments)'
                    if isinstance(arch, dict) else '')
            raise ValueError(f'arch must be one of {tuple(ARCH_SETTINGS)}, got {arch!r}{hint}')
        setting = ARCH_SETTINGS[arch]
        embed_dims = setting['embed_dims'] if embed_dims is None else embed_dims
        depths = setting['depths'] if depths is None else depths
        num_heads = setting['num_heads'] if num_heads is None else num_heads
        drop_path_rate = setting['drop_path_rate'] if drop_path_rate is None else drop_path_rate
        if not (is_sequence(depths, 4) and is_sequence(num_heads, 4)):
            raise ValueError(f'depths and num_heads need 4 entries, got {depths!r} and {num_heads!r}')
        depths, num_heads = tuple(depths), tuple(num_heads)
        if stem not in ('conv', 'patch'):
            raise ValueError(f"stem must be 'conv' or 'patch', got '{stem}'")
        check_pad_mask(pad_mask)
        if sparsifier not in SPARSIFIER_UNITS:
            raise ValueError(f"sparsifier must be one of {tuple(SPARSIFIER_UNITS)}, got '{sparsifier}'")
        check_attn_impl(attn_impl)
        if stage3_form not in STAGE3_FORMS:
            raise ValueError(f"stage3_form must be one of {STAGE3_FORMS}, got '{stage3_form}'")
        if stage3_form == 'classification' and (not sparsify or sparsifier != 'stvit'):
            raise ValueError("stage3_form='classification' is the released STViT-R ImageNet network: it needs "
                             f"sparsify=True and sparsifier='stvit', got sparsify={sparsify}, "
                             f"sparsifier='{sparsifier}'")
        for name, value in (('embed_dims', embed_dims), ('window_size', window_size)):
            if not is_count(value):
                raise ValueError(f'{name} must be a positive integer, got {value!r}')
        for name, values in (('depths', depths), ('num_heads', num_heads)):
            if not all(is_count(v) for v in values):
                raise ValueError(f'{name} must be 4 positive integers, got {values}')
        if stem == 'conv' and embed_dims < 2:
            raise ValueError(f"stem='conv' needs embed_dims >= 2 (its first convolution has embed_dims // 2 "
                             f'channels), got {embed_dims}')
        if not (is_finite_number(mlp_ratio) and int(embed_dims * mlp_ratio) >= 1):
            raise ValueError(f'mlp_ratio must be positive and give at least one hidden channel '
                             f'(int(embed_dims * mlp_ratio) >= 1), got {mlp_ratio!r} with embed_dims {embed_dims}')
        if not (is_finite_number(drop_path_rate) and 0 <= drop_path_rate < 1):
            raise ValueError(f'drop_path_rate must be in [0, 1), got {drop_path_rate!r}')
        if not is_finite_number(layer_scale_init):
            raise ValueError(f'layer_scale_init must be a finite number, got {layer_scale_init!r}')
        if not (is_count(semantic_samples) and semantic_samples <= window_size):
            raise ValueError(f'semantic_samples must be an integer in [1, window_size={window_size}], '
                             f'got {semantic_samples!r}')
        if not (is_sequence(regions, 3) and all(is_count(r) for r in regions)):
            raise ValueError(f'regions needs 3 integer sides (generate, refine, recover), got {regions!r}')
        if (not isinstance(out_indices, Sequence) or not out_indices
                or not all(is_int(i) and -4 <= i < 4 for i in out_indices)
                or len({i % 4 for i in out_indices}) != len(out_indices)):
            raise ValueError(f'out_indices must be a non-empty subset of (0, 1, 2, 3) without repeats (-1 .. -4 '
                             f'count from the end), got {out_indices!r}')
        out_indices = tuple(i % 4 for i in out_indices)  # -1 -> 3
        if not (is_int(frozen_stages) and -1 <= frozen_stages <= 4):
            raise ValueError(f'frozen_stages must be an integer in [-1, 4], got {frozen_stages!r}')
        for i, h in enumerate(num_heads):
            if (embed_dims * 2**i) % h:
                raise ValueError(f'stage {i}: {embed_dims * 2**i} channels not divisible by {h} heads')
        if attn_impl == 'tiled' and sparsify and stage3_form == 'detection':
            self._check_regions_tile(window_size, semantic_samples, regions, sparsifier)

        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.num_features = tuple(embed_dims * 2**i for i in range(4))

        self.patch_embed = ConvStem(embed_dims) if stem == 'conv' else PatchStem(embed_dims)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()  # also under a meta device
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            if stage3_form == 'classification':
                pattern = classification_pattern(depth) if i == SPARSE_STAGE else classification_swin_pattern(depth)
            elif sparsify and i == SPARSE_STAGE:
                pattern = dumbbell_pattern(depth, sparsifier)
            else:
                pattern = swin_pattern(depth)
            self.layers.append(
                STViTStage(
                    self.num_features[i],
                    pattern,
                    num_heads[i],
                    drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])],
                    downsample=i < 3,
                    window_size=window_size,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    samples=semantic_samples,
                    regions=tuple(regions),
                    layer_scale_init=layer_scale_init,
                    pad_mask=pad_mask,
                    attn_impl=attn_impl,
                    with_cp=with_cp))
        for i in out_indices:
            self.add_module(f'norm{i}', nn.LayerNorm(self.num_features[i]))
        self._freeze_stages()

    @staticmethod
    def _check_regions_tile(window_size: int, samples: int, regions: Sequence[int], sparsifier: str) -> None:
        """``attn_impl='tiled'`` reads every key region as whole tiles (``window_ops.tiles_fit``); say at build
        time which region side does not split (``'auto'`` runs such a region dense instead)."""
        sides = [('regions[1] (refinement)', regions[1], window_size, 'window_size')]
        if sparsifier == 'stvit':  # TokenLearner's learn / fuse blocks attend to no region
            sides = [('regions[0] (generation)', regions[0], window_size, 'window_size'), *sides,
                     ('regions[2] (recovery)', regions[2], samples, 'semantic_samples')]
        bad = [f'{name} = {side} is not a multiple of {unit_name} = {unit}'
               for name, side, unit, unit_name in sides if not tiles_fit(unit, side)]
        if bad:
            raise ValueError("attn_impl='tiled' splits each key region into whole tiles, but " + '; '.join(bad)
                             + " (attn_impl='auto' runs such regions dense)")

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """(B, 3, H, W) -> one (B, C * 2**i, ceil(H / 2**(i+2)), ceil(W / 2**(i+2))) map per out index."""
        if not torch.jit.is_tracing() and (x.dim() != 4 or x.shape[1] != 3 or x.numel() == 0):  # (traced: fixed)
            raise ValueError(f'STViTR takes a non-empty batch of RGB images (B, 3, H, W), got a tensor of shape '
                             f'{tuple(x.shape)}')
        if not x.is_floating_point():
            raise ValueError(f'STViTR takes floating-point images, got {x.dtype} (normalise the pixels first, as '
                             "the detector's data_preprocessor does)")
        x = self.patch_embed(x)  # (B, H/4, W/4, C)
        outs = []
        for i, layer in enumerate(self.layers[:max(self.out_indices) + 1]):
            if i:
                x = self.layers[i - 1].downsample_forward(x)  # (B, Hi, Wi, Ci): patch merging halves H, W
            x = layer(x)  # (B, Hi, Wi, Ci)
            if i in self.out_indices:
                outs.append(getattr(self, f'norm{i}')(x).permute(0, 3, 1, 2).contiguous())  # (B, Ci, Hi, Wi)
        return tuple(outs)

    # --------------------------------------------------------- frozen stages
    def _frozen_modules(self) -> List[nn.Module]:
        mods: List[nn.Module] = []
        if self.frozen_stages >= 0:
            mods.append(self.patch_embed)
        for i in range(min(self.frozen_stages, 4)):
            mods.append(self.layers[i])
            if hasattr(self, f'norm{i}'):
                mods.append(getattr(self, f'norm{i}'))
        return mods

    def _unused_modules(self) -> List[nn.Module]:
        """What ``forward`` never runs: the stages after the last output index and that stage's patch merging. They
        stay (checkpoint keys do not depend on ``out_indices``) but get no gradient, which DDP refuses for a
        parameter that requires one."""
        last = max(self.out_indices)
        mods: List[nn.Module] = list(self.layers[last + 1:])
        if self.layers[last].downsample is not None:
            mods.append(self.layers[last].downsample)
        return mods

    def _freeze_stages(self) -> None:
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad = False
        for m in self._unused_modules():
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True) -> 'STViTR':
        """Switch train/eval mode, keeping frozen parts (and the stem BNs if ``norm_eval``) in eval mode."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval and isinstance(self.patch_embed, ConvStem):
            for bn in self.patch_embed.batch_norms:
                bn.eval()
        return self

    # ---------------------------------------------------------------- weights
    def _init_random(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.modules.batchnorm._BatchNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for name, p in self.named_parameters():
            if name.endswith('relative_position_bias_table'):
                nn.init.trunc_normal_(p, std=0.02)

    def init_weights(self) -> None:
        """Random init (trunc-normal 0.02 Linear, LN/BN 1/0, layer scales kept), then, with a ``Pretrained``
        init_cfg, load / convert the checkpoint and log missing and unexpected keys."""
        self._init_random()
        cfg = pretrained_init(self.init_cfg)
        if cfg is None:
            return
        path = cfg.get('checkpoint')
        if not path:
            raise ValueError(NO_CHECKPOINT)
        if is_remote(path):  # a scheme mmengine resolves (s3://, open-mmlab://, ...)
            allow_checkpoint_globals()
            ckpt = CheckpointLoader.load_checkpoint(path, map_location='cpu', logger='current')
        else:  # a local file: one clear error for a missing, truncated or non-checkpoint file
            ckpt = read_checkpoint(str(path))  # ('~' expanded, as mmengine's loader does)
        self.load_pretrained(ckpt, source=str(path), prefix=cfg.get('prefix'))
        self._freeze_stages()

    def check_pretrained(self, checkpoint: Union[Dict, 'OrderedDict'], source: str = 'checkpoint',
                         prefix: Optional[str] = None) -> Tuple[Dict[str, torch.Tensor], Dict]:
        """Convert a checkpoint object and check that it fits, without loading it (works on the meta device).

        With ``prefix`` (``init_cfg=dict(type='Pretrained', checkpoint=..., prefix='teacher.backbone.')``, as
        mmengine's ``PretrainedInit``) only the keys under it are used, stripped of it; none there is an error.

        Returns:
            the converted state dict and the report of :meth:`load_pretrained`.

        Raises:
            ValueError: a tensor of another shape, or blocks this STViTR does not have (stages or blocks beyond
                its depths): another arch, which would otherwise load partly and silently. (Tensors of blocks it
                has but of another kind, e.g. STViT-R weights for the TokenLearner sparsifier, are reported as
                unexpected, not refused: the rest initialises it.)
        """
        if prefix:
            checkpoint = select_prefix(checkpoint, prefix, source)
        try:
            sd, report = convert_to_stvit(
                checkpoint, sparsify=any(p != 'window' and p != 'shifted' for p in self.layers[SPARSE_STAGE].pattern),
                patch_stem=isinstance(self.patch_embed, PatchStem))
        except ValueError as e:  # an unrecognised layout: named with its file
            raise ValueError(f'{source}: {e}') from None
        if tuple(self.out_indices) == (3, ) and 'norm.weight' in sd and 'norm3.weight' not in sd:
            # an ImageNet checkpoint's final LayerNorm is what a classifier's only output norm is (as
            # imagenet_to_classifier maps it); detection's norm3 starts from its initialisation, as released
            sd = OrderedDict((f'norm3.{k[5:]}' if k.startswith('norm.') else k, v) for k, v in sd.items())
        own = self.state_dict()
        shape_mismatch = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]
        if shape_mismatch:
            raise ValueError(f'{source}: {len(shape_mismatch)} tensors do not fit this STViTR (wrong arch?): ' +
                             ', '.join(f'{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}'
                                       for k in shape_mismatch[:5]))
        report['missing'] = filter_ignorable([k for k in own if k not in sd])
        report['unexpected'] = filter_ignorable([k for k in sd if k not in own])
        depths = tuple(len(s.blocks) for s in self.layers)
        foreign = [k for k in report['unexpected'] if not self._has_block_of(k)]
        if foreign:
            raise ValueError(f'{source}: {len(foreign)} backbone tensors have no place in this STViTR (blocks beyond '
                             f'its depths {depths}: another arch?): '
                             f'{summarise_keys(foreign, depth=3)}; e.g. {", ".join(foreign[:3])}')
        blocks = {'.'.join(k.split('.')[:4]) for k in sd if re.match(r'layers\.\d+\.blocks\.\d+\.', k)}
        absent = [f'layers.{i}.blocks.{k}' for i, depth in enumerate(depths) for k in range(depth)
                  if f'layers.{i}.blocks.{k}' not in blocks]
        if blocks and absent:  # a shallower arch: those blocks would silently keep their random initialisation
            raise ValueError(f'{source}: holds no tensor of {len(absent)} blocks of this STViTR (depths {depths}: '
                             f'another, shallower arch?), e.g. {", ".join(absent[:3])}')
        frozen = self._frozen_prefixes()
        # (an output norm an ImageNet checkpoint lacks freezes at LayerNorm's identity, as mmdet's Swin does)
        stuck = [k for k in report['missing'] if k.startswith(frozen) and not re.match(r'norm\d\.', k)]
        if stuck:  # e.g. Swin's weights for the conv stem: random, then frozen for the whole run
            stem = (' (a Swin checkpoint has no conv stem: stem=\'patch\' takes its patch embedding)'
                    if any(k.startswith('patch_embed.') for k in stuck) else '')
            raise ValueError(f'{source}: lacks {len(stuck)} tensors of what frozen_stages={self.frozen_stages} '
                             f'freezes: {summarise_keys(stuck, depth=2)}, e.g. {", ".join(stuck[:3])}; they would '
                             'stay at their initialisation (random, for weights) for the whole run: load weights '
                             f'that have them{stem} or freeze fewer stages')
        return sd, report

    def _frozen_prefixes(self) -> Tuple[str, ...]:
        """State-dict prefixes of what ``frozen_stages`` freezes (the names of :meth:`_frozen_modules`)."""
        frozen = {id(m) for m in self._frozen_modules()}
        return tuple(f'{name}.' for name, m in self.named_modules() if id(m) in frozen)

    def get_layer_depth(self, param_name: str, prefix: str = '') -> Tuple[int, int]:
        """(depth, number of depths) of a parameter for layer-wise learning-rate decay (MMPretrain's
        ``LearningRateDecayOptimWrapperConstructor``, fine-tuning recipes), counted as for MMPretrain's Swin: the
        stem 0, block ``k`` of stage ``i`` ``sum(depths[:i]) + k + 1``, the patch merging after stage ``i`` with that
        stage's last block, and the output norms and anything outside the backbone (``prefix``: its name in the
        whole model, e.g. ``'backbone.'``) the last, ``sum(depths) + 1``."""
        depths = [len(layer.blocks) for layer in self.layers]
        num_layers = sum(depths) + 2
        if not param_name.startswith(prefix):
            return num_layers - 1, num_layers
        parts = param_name[len(prefix):].split('.')
        if parts[0] == 'patch_embed':
            return 0, num_layers
        if parts[0] == 'layers' and len(parts) > 3 and parts[2] == 'blocks':
            stage = int(parts[1])
            return sum(depths[:stage]) + int(parts[3]) + 1, num_layers
        if parts[0] == 'layers' and len(parts) > 2 and parts[2] == 'downsample':
            return sum(depths[:int(parts[1]) + 1]), num_layers
        return num_layers - 1, num_layers

    def _has_block_of(self, key: str) -> bool:
        """Whether the stage / block that ``key`` names (``layers.i[.blocks.k].*``) exists here (other keys: True)."""
        parts = key.split('.')
        if parts[0] != 'layers' or len(parts) < 2 or not parts[1].isdigit():
            return True
        stage = int(parts[1])
        if stage >= len(self.layers):
            return False
        return not (len(parts) > 3 and parts[2] == 'blocks' and parts[3].isdigit()
                    and int(parts[3]) >= len(self.layers[stage].blocks))

    def load_pretrained(self, checkpoint: Union[Dict, 'OrderedDict'], source: str = 'checkpoint',
                        prefix: Optional[str] = None) -> Dict:
        """Load (converting if needed) a checkpoint object that fits (:meth:`check_pretrained`, which raises
        otherwise); logs and returns the report with ``missing`` and ``unexpected`` keys (recomputed buffers such
        as ``relative_position_index`` left out)."""
        sd, report = self.check_pretrained(checkpoint, source, prefix)
        self.load_state_dict(sd, strict=False)
        msg = (f'STViTR: loaded {source} ({report["layout"]} layout): {len(report["missing"])} missing, '
               f'{len(report["unexpected"])} unexpected, {len(report["dropped"])} without counterpart, '
               f'{report["split_qkv"]} qkv split into q/kv')
        for name in ('missing', 'unexpected', 'dropped'):
            if report[name]:
                msg += f'\n  {name} keys: ' + ', '.join(report[name])
        if report['outside_backbone']:  # a whole detector or classifier: its neck / heads are not loaded here
            msg += '\n  outside the backbone, not loaded: ' + summarise_keys(report['outside_backbone'])
        print_log(msg, logger='current', level=30 if report['missing'] or report['unexpected'] else 20)
        return report
