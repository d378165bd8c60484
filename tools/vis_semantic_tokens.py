"""Show what the semantic tokens of an STViT-R backbone do on one image: one PNG, one row per dumbbell unit.

    python tools/vis_semantic_tokens.py IMAGE CONFIG [--checkpoint CKPT] --out OUT.png [--windows 1,1 3,3]
        [--scale 512] [--device cpu] [--cfg-options k=v ...]

Columns: (a) generation ('generate', or TokenLearner's 'learn') and (b) refinement: where the semantic tokens of the
chosen windows (outlined) attend, averaged over heads and over the window's ss*ss tokens, each map scaled to its
maximum; (c) recovery: every stage-3 image token coloured by the window that owns the semantic token it attends to
most (a token drawing from its own window takes its own window's colour); (d) recovery: the attention of the centre
token of each chosen window (star) over the semantic grid, spread over the image area of each semantic token.

The backbone is built from ``CONFIG`` (``model.backbone``) with random weights, then, with ``--checkpoint``, loaded
from a detector or backbone checkpoint (``STViTR.load_pretrained``). The image is resized so that its short side is
``--scale`` pixels and normalised with the config's ``data_preprocessor`` mean / std. The maps come from
:mod:`stvit_det.utils.attention_maps`; this script only draws them. Runs on CPU.
"""
import argparse
import copy
import os
import os.path as osp
import sys

import matplotlib

matplotlib.use('Agg')
import matplotlib.figure  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import mmcv  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

import stvit_det  # noqa: E402,F401  (registers STViTR)
from mmdet.registry import MODELS  # noqa: E402
from stvit_det.utils.attention_maps import (collect_attention, default_windows, peak_over_uniform,  # noqa: E402
                                            semantic_to_tokens, tokens_to_pixels, unit_maps)
from stvit_det.utils.ckpt_file import read_checkpoint  # noqa: E402
from stvit_det.toolboxes.scope import CfgOptionsAction, ConfigError, load_config, resolve_config_path  # noqa: E402
from stvit_det.utils.paths import make_parent_dir, read_image  # noqa: E402
from stvit_det.utils.values import positive_int  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _launch import check_device, check_output_file  # noqa: E402

WINDOW_COLOURS = ('#00e5ff', '#ff9100', '#76ff03', '#ff4081', '#ffff00', '#b388ff')
TITLES = {
    'generate': 'generate (max-pool + attention, {r}x{r} region)',
    'learn': 'learn (TokenLearner v1.1, own window)',
    'refine': 'refine ({r}x{r} region)',
    'recover': 'recover: owner of the arg-max token',
    'fuse': 'fuse: owner of the arg-max gated token',
}


def parse_args():
    parser = argparse.ArgumentParser(description='Draw where the semantic tokens of an STViT-R backbone attend')
    parser.add_argument('image', help='image file')
    parser.add_argument('config', help='detector config with an STViTR backbone')
    parser.add_argument('--checkpoint', help='detector or backbone checkpoint (default: random weights)')
    parser.add_argument('--out', required=True, help='output image (PNG, or another format matplotlib '
                        'writes, from the extension; none: .png is appended)')
    parser.add_argument('--windows', nargs='+', default=None, metavar='I,J',
                        help='windows (row,col of the 7x7 window grid of stage 3) to follow (default: up to 3 on '
                        'the diagonal)')
    parser.add_argument('--scale', type=positive_int, default=512, help='short side of the resized image in pixels')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--dpi', type=positive_int, default=80)
    parser.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction, help='override config settings')
    return parser.parse_args()


def parse_windows(items):
    cells = []
    for item in items:
        try:
            i, j = (int(v) for v in item.split(','))
        except ValueError:
            raise SystemExit(f"vis_semantic_tokens.py: error: --windows takes I,J pairs, got '{item}'")
        cells.append((i, j))
    return cells


def build_backbone(cfg, checkpoint, device):
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    bb_cfg = copy.deepcopy(cfg.model.backbone)
    bb_cfg['init_cfg'] = None  # weights come from --checkpoint, never from the config
    try:
        backbone = MODELS.build(bb_cfg)
    except (KeyError, TypeError, ValueError) as e:  # an unknown type, an argument or value STViTR refuses
        raise SystemExit(f"vis_semantic_tokens.py: error: the config's backbone cannot be built: "
                         f'{type(e).__name__}: {e}') from None
    backbone.init_weights()
    if checkpoint:
        try:
            report = backbone.load_pretrained(read_checkpoint(checkpoint), source=checkpoint)
        except ValueError as e:  # unreadable (CheckpointError), not an STViT-R / Swin checkpoint, or another arch
            raise SystemExit(f'vis_semantic_tokens.py: error: {e}')
        if len(report['missing']) == len(list(backbone.state_dict())):
            raise SystemExit(f'vis_semantic_tokens.py: error: {checkpoint} holds no weights of this backbone')
        # what the drawing runs: the stem and stages 1-3 (the output norms and stage 4 are not drawn; an ImageNet
        # checkpoint has no norms 0-2)
        drawn = [k for k in report['missing'] if not k.startswith(('norm', 'layers.3.'))]
        if drawn:
            named = ', '.join(drawn[:3]) + (', ...' if len(drawn) > 3 else '')
            raise SystemExit(f'vis_semantic_tokens.py: error: {checkpoint} lacks {len(drawn)} tensors of the '
                             f'backbone that the drawing runs ({named}): they would be random')
    backbone.to(device)
    backbone.eval()  # not `return backbone.eval()`: mmdet's backbones override train() and return None
    return backbone


def load_image(path, cfg, scale):
    """(resized RGB uint8 image (H, W, 3), normalised tensor (1, 3, H, W))."""
    try:
        img = read_image(path)  # (H, W, 3) BGR
    except ValueError as e:
        raise SystemExit(f'vis_semantic_tokens.py: error: {e}') from None
    h, w = img.shape[:2]
    factor = scale / min(h, w)
    img = mmcv.imresize(img, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation='bilinear')
    dp = cfg.model.get('data_preprocessor', {})
    mean = np.array(dp.get('mean', [123.675, 116.28, 103.53]), dtype=np.float32)
    std = np.array(dp.get('std', [58.395, 57.12, 57.375]), dtype=np.float32)
    rgb = img[..., ::-1]
    net_in = rgb if dp.get('bgr_to_rgb', True) else img  # mmdet: mean / std are given in the network's order
    x = torch.from_numpy(((net_in.astype(np.float32) - mean) / std).transpose(2, 0, 1).copy())[None]
    return np.ascontiguousarray(rgb), x


def heat_rgba(values, cmap='inferno', max_alpha=0.85):
    """Map values in [0, 1] to RGBA with alpha growing with the value, so the image stays visible."""
    rgba = plt.get_cmap(cmap)(np.clip(values, 0, 1))
    rgba[..., 3] = max_alpha * np.clip(values, 0, 1)
    return rgba


def outline(ax, cell, geom, colour, lw=2.0):
    s = geom.window * geom.stride
    ax.add_patch(Rectangle((cell[1] * s - 0.5, cell[0] * s - 0.5), s, s, fill=False, ec=colour, lw=lw))


def window_grid(ax, geom, hw):
    s = geom.window * geom.stride
    for i in range(1, geom.nh):
        ax.axhline(i * s - 0.5, color='white', lw=0.6, alpha=0.7)
    for j in range(1, geom.nw):
        ax.axvline(j * s - 0.5, color='white', lw=0.6, alpha=0.7)
    ax.set_xlim(-0.5, hw[1] - 0.5)
    ax.set_ylim(hw[0] - 0.5, -0.5)


def draw_source(ax, image, geom, maps, kind, region, windows):
    """(a), (b): where the semantic tokens of each chosen window attend, max-scaled per window."""
    ax.imshow(image.mean(axis=2), cmap='gray', vmin=0, vmax=255)
    combined = np.zeros(image.shape[:2])
    for cell in windows:
        px = tokens_to_pixels(maps[cell], geom, image.shape[:2], preserve_mass=False)
        combined = np.maximum(combined, px / max(px.max(), 1e-12))
    ax.imshow(heat_rgba(combined))
    for k, cell in enumerate(windows):
        outline(ax, cell, geom, WINDOW_COLOURS[k % len(WINDOW_COLOURS)])
    window_grid(ax, geom, image.shape[:2])
    peak = np.mean([peak_over_uniform(maps[cell]) for cell in windows])
    ax.set_title(TITLES[kind].format(r=region) + f'\noutlined windows (peak {peak:.2f}x uniform)', fontsize=9)


def window_colours(geom):
    """(nh*nw + 1, 3): a colour per window id (neighbours differ: 3 x 3 tiling of tab10) and grey for -1."""
    tab = plt.get_cmap('tab10').colors
    cols = [tab[(3 * (g // geom.nw % 3) + g % geom.nw % 3) % 10] for g in range(geom.nh * geom.nw)]
    return np.array(cols + [(0.5, 0.5, 0.5)])


def draw_recovery_argmax(ax, image, geom, rec, kind):
    """(c): every image token coloured by the window owning its arg-max semantic token."""
    palette = window_colours(geom)
    owner = rec['argmax_window']  # (Hp, Wp), -1 = border
    colours = palette[np.where(owner < 0, len(palette) - 1, owner)]  # (Hp, Wp, 3)
    own = np.arange(geom.nh * geom.nw).reshape(geom.nh, geom.nw)
    own = np.kron(own, np.ones((geom.window, geom.window), dtype=int))  # (Hp, Wp) own window id
    ax.imshow(image.mean(axis=2), cmap='gray', vmin=0, vmax=255)
    ax.imshow(tokens_to_pixels(colours, geom, image.shape[:2], preserve_mass=False), alpha=0.5)
    window_grid(ax, geom, image.shape[:2])
    valid = np.zeros_like(owner, dtype=bool)
    valid[:geom.H, :geom.W] = True
    same = float((owner == own)[valid].mean())
    mass = float(rec['own_mass'][valid].mean())
    ax.set_title(f'{TITLES[kind]}\n(own window: arg-max {same:.0%}, mass {mass:.0%})', fontsize=9)


def draw_recovery_tokens(ax, image, geom, rec, windows):
    """(d): attention of the centre token of each chosen window over the semantic grid."""
    ax.imshow(image.mean(axis=2), cmap='gray', vmin=0, vmax=255)
    combined = np.zeros(image.shape[:2])
    peaks = []
    for cell in windows:
        _, grid, _ = rec['tokens'][cell]
        peaks.append(peak_over_uniform(grid))  # (Hs, Ws) distribution over the semantic grid
        on_tokens = semantic_to_tokens(grid, geom, preserve_mass=False)  # each cell's weight over its area
        px = tokens_to_pixels(on_tokens, geom, image.shape[:2], preserve_mass=False)
        combined = np.maximum(combined, px / max(px.max(), 1e-12))
    ax.imshow(heat_rgba(combined, cmap='viridis'))
    for k, cell in enumerate(windows):
        colour = WINDOW_COLOURS[k % len(WINDOW_COLOURS)]
        tok = rec['tokens'][cell][0]
        ax.plot((tok[1] + 0.5) * geom.stride, (tok[0] + 0.5) * geom.stride, marker='*', ms=13, mfc=colour,
                mec='black', mew=0.8)
        outline(ax, cell, geom, colour, lw=1.0)
    window_grid(ax, geom, image.shape[:2])
    peak = np.mean(peaks)
    ax.set_title(f'{rec["kind"]}: semantic tokens read by the starred\nimage tokens (peak {peak:.1f}x uniform)',
                 fontsize=9)


def output_path(out):
    """The file ``savefig(out)`` writes: ``out`` if its extension is a format matplotlib writes; without an
    extension, ``out`` + '.' + matplotlib's default format (png), which savefig appends; SystemExit otherwise."""
    canvas = matplotlib.figure.Figure().canvas
    ext = osp.splitext(out)[1][1:]
    if not ext:
        return out.rstrip('.') + '.' + canvas.get_default_filetype()
    formats = canvas.get_supported_filetypes()
    if ext.lower() not in formats:
        raise SystemExit(f"vis_semantic_tokens.py: error: cannot write {out}: matplotlib cannot write '.{ext}' files "
                         f"(supported: {', '.join(sorted(formats))})")
    return out


#: the figure: panels per row (unit) and the width of one, in inches
FIGURE_COLUMNS, PANEL_INCHES = 4, 3.2
#: matplotlib's Agg canvas takes fewer than 2**16 pixels per side
MAX_FIGURE_PIXELS = 2**16


def figure_size_check(size_inches, dpi: int) -> None:
    """One line for a figure of ``size_inches`` at ``dpi`` that matplotlib cannot draw (too many pixels per side),
    instead of its MemoryError / ValueError at ``savefig``."""
    side = round(max(size_inches) * dpi)
    if side >= MAX_FIGURE_PIXELS:
        raise SystemExit(f'vis_semantic_tokens.py: error: --dpi {dpi} makes a figure {side} px on its longest side; '
                         f'matplotlib draws fewer than {MAX_FIGURE_PIXELS} px per side: use a smaller --dpi')


def main():
    args = parse_args()
    figure_size_check((FIGURE_COLUMNS * PANEL_INCHES, ), args.dpi)  # the width, before any work
    requested = parse_windows(args.windows) if args.windows else None
    args.out = output_path(args.out)
    check_output_file('vis_semantic_tokens.py', args.out, inputs={'image': args.image, 'config': args.config,
                                                                  'checkpoint': args.checkpoint})
    check_device('vis_semantic_tokens.py', args.device)
    try:
        if not osp.isfile(resolve_config_path(args.config)):
            raise SystemExit(f'vis_semantic_tokens.py: error: config file not found: {args.config}')
        cfg = load_config(args.config, args.cfg_options, need_model=True)  # also mmdet:: paths
    except ConfigError as e:
        raise SystemExit(f'vis_semantic_tokens.py: error: {e}') from None
    torch.manual_seed(0)  # random weights (no --checkpoint) give the same picture every run
    image, x = load_image(args.image, cfg, args.scale)
    backbone = build_backbone(cfg, args.checkpoint, args.device)
    try:
        geom, units = collect_attention(backbone, x.to(args.device))
    except ValueError as e:  # e.g. sparsify=False: no semantic tokens to draw
        raise SystemExit(f'vis_semantic_tokens.py: error: {e}') from None
    windows = requested or default_windows(geom)
    for cell in windows:
        if not (0 <= cell[0] < geom.nh and 0 <= cell[1] < geom.nw):
            raise SystemExit(f'vis_semantic_tokens.py: error: window {cell} is outside the {geom.nh} x {geom.nw} '
                             f'window grid of this image (stage 3: {geom.H} x {geom.W} tokens)')
    regions = dict(zip(('generate', 'refine'), cfg.model.backbone.get('regions', (14, 21, 27))))

    ncols, panel = FIGURE_COLUMNS, PANEL_INCHES
    h, w = image.shape[:2]
    row_height = panel * h / w + 0.5  # panel + two title lines
    size = (ncols * panel, len(units) * row_height + 0.7)  # inches
    figure_size_check(size, args.dpi)  # a tall image: the height
    fig, axes = plt.subplots(len(units), ncols, figsize=size, squeeze=False)
    for u, unit in enumerate(units):
        maps = unit_maps(geom, unit, windows)
        row = axes[u]
        for c, (kind, per_window) in enumerate(maps['source'].items()):
            draw_source(row[c], image, geom, per_window, kind, regions.get(kind), windows)
        if 'recovery' in maps:
            draw_recovery_argmax(row[2], image, geom, maps['recovery'], maps['recovery']['kind'])
            draw_recovery_tokens(row[3], image, geom, maps['recovery'], windows)
        row[0].set_ylabel(f'unit {u + 1}', fontsize=10)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    handles = [Line2D([], [], color=WINDOW_COLOURS[k % len(WINDOW_COLOURS)], lw=2.5, label=f'window {cell}')
               for k, cell in enumerate(windows)]
    weights = osp.basename(args.checkpoint) if args.checkpoint else 'random weights'
    fig.suptitle(f'{osp.basename(args.config)} ({weights}), {w}x{h} px: stage 3 = {geom.H}x{geom.W} tokens, '
                 f'{geom.nh}x{geom.nw} windows, {geom.samples}x{geom.samples} semantic tokens each; heat maps '
                 'scaled to their maximum per window', fontsize=9)
    fig.legend(handles=handles, loc='lower center', ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.35 / fig.get_figheight(), 1, 1 - 0.35 / fig.get_figheight()))
    make_parent_dir(args.out)
    fig.savefig(args.out, dpi=args.dpi)
    print(f'wrote {args.out}: {len(units)} unit(s), windows {windows}')


if __name__ == '__main__':
    sys.exit(main())
