"""tools/vis_semantic_tokens.py and tools/image_demo.py run on CPU on a real image of the nuclei demo dataset and
write a PNG of the expected size; the maps that stvit_det.utils.attention_maps hands to the plot are distributions
(they sum to 1 over their support) located where the blocks may look."""
import glob
import os
import os.path as osp
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from stvit_det.utils.attention_maps import (AttentionRecord, StageGeometry, collect_attention, default_windows,
                                            peak_over_uniform, recovery_argmax_window, recovery_own_window_mass,
                                            recovery_token_map, scatter_to_grid, semantic_to_tokens, tokens_to_pixels,
                                            unit_maps, window_source_map)

from conftest import randomize_, small_stvit

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO_CONFIG = osp.join(ROOT, 'configs', 'stvit-r', 'mask-rcnn_stvit-r-demo_fpn_nuclei.py')
TL_CONFIG = osp.join(ROOT, 'configs', 'stvit-r', 'mask-rcnn_tokenlearner-t_fpn_1x_coco.py')
# key-region margins (rows / cols before the window) and sides on the padded token grid, per source kind
REGIONS = {'generate': (3, 14), 'refine': (7, 21), 'learn': (0, 7)}


def run_tool(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope='module')
def real_image(tmp_path_factory):
    """A 256 x 256 crop of the stardist nuclei image, from a fresh build of the demo dataset (seed 0; not the
    repository's data folder, which may hold another build)."""
    out = tmp_path_factory.mktemp('nuclei_demo')
    proc = run_tool(osp.join('tools', 'make_demo_dataset.py'), '--out', str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return sorted(glob.glob(osp.join(str(out), 'val', '*.png')))[0]


@pytest.fixture(scope='module')
def demo_checkpoint(tmp_path_factory):
    """A randomly initialised demo Mask R-CNN saved like a Runner checkpoint; removed after the module."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS

    cfg = Config.fromfile(DEMO_CONFIG)
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    path = str(tmp_path_factory.mktemp('ckpt') / 'random_demo.pth')
    torch.save(dict(state_dict=model.state_dict(), meta=dict(dataset_meta=dict(classes=('nucleus', )))), path)
    yield path
    os.remove(path)


def image_tensor(path):
    rgb = np.asarray(Image.open(path).convert('RGB'), dtype=np.float32)
    mean, std = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
    return torch.from_numpy(((rgb - mean) / std).transpose(2, 0, 1)).float()[None]


@pytest.fixture(scope='module', params=['stvit', 'tokenlearner'])
def collected(request, real_image):
    torch.manual_seed(0)
    model = randomize_(small_stvit(sparsifier=request.param), std=0.3)  # sharper, non-uniform attention
    x = image_tensor(real_image)
    geom, units = collect_attention(model, x)
    return request.param, x.shape[2:], geom, units


# ------------------------------------------------------------------------------------------------ attention maps
def test_geometry_and_records(collected):
    sparsifier, hw, geom, units = collected
    assert hw == (256, 256)
    assert geom == StageGeometry(H=16, W=16, window=7, samples=3, stride=16)
    assert (geom.Hp, geom.nh, geom.Hs) == (21, 3, 9)  # 5 padded token rows / cols
    kinds = ['generate', 'refine', 'recover'] if sparsifier == 'stvit' else ['learn', 'refine', 'fuse']
    assert [list(u) for u in units] == [kinds]


def test_source_maps_sum_to_one_inside_their_region(collected):
    _, hw, geom, units = collected
    for kind, rec in units[0].items():
        if kind not in REGIONS:
            continue
        margin, side = REGIONS[kind]
        for i in range(geom.nh):
            for j in range(geom.nw):
                m = window_source_map(rec, (i, j), geom)  # (Hp, Wp)
                assert m.shape == (geom.Hp, geom.Wp) and (m >= 0).all()
                assert m.sum() == pytest.approx(1.0, abs=1e-5), (kind, i, j)
                allowed = np.zeros_like(m, dtype=bool)
                r0, c0 = 7 * i - margin, 7 * j - margin
                allowed[max(r0, 0):r0 + side, max(c0, 0):c0 + side] = True
                allowed[geom.H:] = allowed[:, geom.W:] = False  # padded tokens are masked ('correct')
                assert (m[~allowed] == 0).all(), (kind, i, j)
                assert (m[allowed] > 0).all(), (kind, i, j)
                px = tokens_to_pixels(m, geom, hw)  # 256 = 16 * 16 tokens: no mass is cropped
                assert px.shape == hw and px.sum() == pytest.approx(1.0, abs=1e-5)
                for t in range(geom.samples**2):  # every single semantic token too
                    assert window_source_map(rec, (i, j), geom, token=t).sum() == pytest.approx(1.0, abs=1e-5)


def test_recovery_maps(collected):
    sparsifier, _, geom, units = collected
    rec = units[0]['recover' if sparsifier == 'stvit' else 'fuse']
    own_window = np.kron(np.arange(geom.nh * geom.nw).reshape(geom.nh, geom.nw), np.ones((7, 7), dtype=int))
    owner = recovery_argmax_window(rec, geom)
    mass = recovery_own_window_mass(rec, geom)
    assert owner.shape == mass.shape == (geom.Hp, geom.Wp)
    assert ((owner >= 0) & (owner < geom.nh * geom.nw)).all()
    assert ((mass >= -1e-6) & (mass <= 1 + 1e-6)).all()
    if sparsifier == 'tokenlearner':  # a TokenFuser token reads its own window only
        assert (owner == own_window).all() and np.allclose(mass, 1.0)
    else:  # 3 x 3 windows all lie in every 27 x 27 region: the mass is shared between windows
        assert (mass < 1 - 1e-3).all() and len(np.unique(owner)) > 1
    for r in range(0, geom.Hp, 4):
        for c in range(0, geom.Wp, 4):
            grid = recovery_token_map(rec, (r, c), geom)  # (Hs, Ws)
            assert grid.shape == (geom.Hs, geom.Ws) and (grid >= 0).all()
            assert grid.sum() == pytest.approx(1.0, abs=1e-5)
            w = (r // 7, c // 7)
            assert grid[3 * w[0]:3 * w[0] + 3, 3 * w[1]:3 * w[1] + 3].sum() == pytest.approx(mass[r, c], abs=1e-5)
            spread = semantic_to_tokens(grid, geom)
            assert spread.shape == (geom.Hp, geom.Wp) and spread.sum() == pytest.approx(1.0, abs=1e-5)


def test_unit_maps_collects_every_panel(collected):
    sparsifier, _, geom, units = collected
    windows = default_windows(geom)
    assert windows == [(1, 1), (0, 0), (2, 2)]
    maps = unit_maps(geom, units[0], windows)
    assert list(maps['source']) == (['generate', 'refine'] if sparsifier == 'stvit' else ['learn', 'refine'])
    assert set(maps['recovery']['tokens']) == set(windows)
    tok, grid, spread = maps['recovery']['tokens'][(2, 2)]
    assert tok == (15, 15)  # the centre (17, 17) of window (2, 2) lies in the padding: moved inside the map
    assert grid.sum() == pytest.approx(1.0, abs=1e-5) and spread.sum() == pytest.approx(1.0, abs=1e-5)


def test_scatter_to_grid_accumulates_and_drops_the_border():
    geom = StageGeometry(H=7, W=7)
    index = np.array([[0, 48, 49, 49, 10]])  # 49 = the outer border
    rec = AttentionRecord('generate', np.array([[[0.1, 0.2, 0.3, 0.3, 0.1]]]), index)
    m = window_source_map(rec, (0, 0), geom)
    assert m[0, 0] == pytest.approx(0.1) and m[6, 6] == pytest.approx(0.2) and m[1, 3] == pytest.approx(0.1)
    assert m.sum() == pytest.approx(0.4)  # 0.6 on the border is not drawn
    assert scatter_to_grid(np.ones(3), np.array([4, 4, 1]), (2, 2)).tolist() == [[0, 1], [0, 0]]
    assert peak_over_uniform(np.array([0.0, 0.25, 0.25, 0.25, 0.25])) == pytest.approx(1.0)
    assert peak_over_uniform(np.array([0.0, 0.7, 0.1, 0.1, 0.1])) == pytest.approx(2.8)
    with pytest.raises(ValueError, match='outside'):
        window_source_map(rec, (1, 0), geom)


# ------------------------------------------------------------------------------------------------------- tools
@pytest.mark.parametrize('config,extra', [(DEMO_CONFIG, ('--windows', '0,0', '1,1')), (TL_CONFIG, ())],
                         ids=['stvit-demo-checkpoint', 'tokenlearner-random'])
def test_vis_semantic_tokens_tool(real_image, demo_checkpoint, tmp_path, config, extra):
    out = tmp_path / 'vis.png'
    ckpt = ('--checkpoint', demo_checkpoint) if config == DEMO_CONFIG else ()
    proc = run_tool(
        osp.join('tools', 'vis_semantic_tokens.py'), real_image, config, '--out', str(out), '--scale', '256',
        '--dpi', '50', '--device', 'cpu', *ckpt, *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'wrote' in proc.stdout and '1 unit(s)' in proc.stdout
    with Image.open(out) as im:
        # 4 panels of 3.2 x (3.2 + 0.5) inches per unit row, + 0.7 inch for title and legend, at 50 dpi
        assert im.format == 'PNG' and im.size == (640, 220)
        assert np.asarray(im.convert('L')).std() > 10  # not a blank canvas


def test_vis_semantic_tokens_rejects_a_window_outside_the_grid(real_image, demo_checkpoint, tmp_path):
    out = tmp_path / 'vis.png'
    proc = run_tool(osp.join('tools', 'vis_semantic_tokens.py'), real_image, DEMO_CONFIG, '--out', str(out),
                    '--scale', '256', '--windows', '3,0')
    assert proc.returncode != 0 and 'outside the 3 x 3 window grid' in proc.stderr
    assert not out.exists()
    text = tmp_path / 'notes.pth'
    text.write_text('not a checkpoint')
    (tmp_path / 'a_file').write_text('')
    (tmp_path / 'empty.png').write_bytes(b'')
    partial = tmp_path / 'partial.pth'  # one stem tensor short: it was drawn with a random stem, exit 0
    sd = torch.load(demo_checkpoint, weights_only=True)['state_dict']
    torch.save({'state_dict': {k: v for k, v in sd.items() if k != 'backbone.patch_embed.proj.0.c.weight'}}, partial)
    for args, message in [((str(tmp_path / 'nope.png'), ), 'cannot read image'),
                          ((str(tmp_path / 'empty.png'), ), 'empty.png: the file is empty'),
                          ((real_image, '--checkpoint', str(partial)), 'partial.pth lacks 1 tensors of the backbone '
                           'that the drawing runs (patch_embed.proj.0.c.weight): they would be random'),
                          ((real_image, '--dpi', '100000'),
                           '--dpi 100000 makes a figure 1280000 px on its longest side'),
                          ((real_image, '--checkpoint', str(text)), 'notes.pth: not a readable PyTorch checkpoint'),
                          ((real_image, '--windows', '1;1'), "--windows takes I,J pairs, got '1;1'"),
                          ((real_image, '--cfg-options', 'model.backbone.sparsify=False'),
                           'error: the backbone has no sparsified stage'),
                          ((real_image, '--scale', '0'), "argument --scale: '0' is not a positive integer")]:
        proc = run_tool(osp.join('tools', 'vis_semantic_tokens.py'), args[0], DEMO_CONFIG, '--out', str(out),
                        *(['--scale', '64'] if '--scale' not in args else []), *args[1:])
        last = proc.stderr.strip().splitlines()[-1]
        assert proc.returncode != 0 and 'Traceback' not in proc.stderr and message in last, proc.stderr[-2000:]
    proc = run_tool(osp.join('tools', 'vis_semantic_tokens.py'), real_image, DEMO_CONFIG, '--out',
                    str(tmp_path / 'a_file' / 'vis.png'))
    assert proc.returncode != 0 and 'cannot write' in proc.stderr.strip().splitlines()[-1]
    proc = run_tool(osp.join('tools', 'vis_semantic_tokens.py'), real_image, str(tmp_path / 'none.py'), '--out',
                    str(out))
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last == f'vis_semantic_tokens.py: error: config file not found: {tmp_path}/none.py'
    assert not out.exists()


def test_vis_semantic_tokens_refuses_an_output_format_matplotlib_cannot_write(tmp_path):
    """Before anything is read or computed (the image here does not even exist): the extension of --out must be a
    format matplotlib writes; the message names them."""
    out = tmp_path / 'v.txt'
    proc = run_tool(osp.join('tools', 'vis_semantic_tokens.py'), str(tmp_path / 'nope.png'), DEMO_CONFIG, '--out',
                    str(out))
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"vis_semantic_tokens.py: error: cannot write {out}: matplotlib cannot write '.txt' files "
                           '(supported: '), last
    assert all(f in last for f in ('pdf', 'png', 'svg')) and not out.exists()


def test_vis_semantic_tokens_without_an_extension_writes_a_png(real_image, tmp_path):
    """No extension: matplotlib's default format (png) is appended, as savefig does; the tool names that file."""
    out = tmp_path / 'vis'
    proc = run_tool(osp.join('tools', 'vis_semantic_tokens.py'), real_image, DEMO_CONFIG, '--out', str(out),
                    '--scale', '64', '--dpi', '20')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f'wrote {out}.png:' in proc.stdout and not out.exists()
    with Image.open(f'{out}.png') as im:
        assert im.format == 'PNG'


def test_vis_semantic_tokens_refuses_the_classification_form(real_image, tmp_path):
    """The released ImageNet config has sparsify=True but stage3_form='classification' (unfold generation, global
    refinement and recovery): the tool says that, not that the backbone is unsparsified."""
    out = tmp_path / 'vis.png'
    config = osp.join(ROOT, 'configs', 'stvit-r-cls', 'stvit-r-s-released_16xb64_in1k.py')
    proc = run_tool(osp.join('tools', 'vis_semantic_tokens.py'), real_image, config, '--out', str(out), '--scale',
                    '64')
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("vis_semantic_tokens.py: error: stage 3 of the backbone has the classification form "
                           "(stage3_form='classification')"), last
    assert "stage3_form='detection'" in last and 'sparsify' not in last and not out.exists()


def test_image_demo_tool(real_image, demo_checkpoint, tmp_path):
    out = tmp_path / 'demo.png'
    proc = run_tool(
        osp.join('tools', 'image_demo.py'), real_image, DEMO_CONFIG, demo_checkpoint, '--out', str(out),
        '--score-thr', '0.0', '--device', 'cpu')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'wrote' in proc.stdout
    with Image.open(out) as im, Image.open(real_image) as src:
        assert im.format == 'PNG' and im.size == src.size
        drawn = np.asarray(im.convert('RGB'), dtype=np.int16)
        changed = np.abs(drawn - np.asarray(src.convert('RGB'), dtype=np.int16)).max(-1) > 0  # (H, W)
    # boxes were drawn: a box's outline changes whole rows and columns of pixels, not a few scattered ones
    assert changed.sum(0).max() >= 8 and changed.sum(1).max() >= 8, changed.sum()


def test_image_demo_refuses_bad_input_in_one_line(real_image, demo_checkpoint, tmp_path):
    """Before drawing anything: a missing image or a file that is not one, a checkpoint of another model (mmengine
    would draw with random heads), a config value the model refuses, a segmentation config and an output that
    cannot be written, each in one line."""
    out = tmp_path / 'demo.png'
    other = tmp_path / 'other.pth'
    sd = torch.load(demo_checkpoint, weights_only=True)['state_dict']
    torch.save({'state_dict': {k: v for k, v in sd.items() if not k.startswith('roi_head.')}}, other)
    (tmp_path / 'a_file').write_text('')
    (tmp_path / 'notes.txt').write_text('not an image\n')
    (tmp_path / 'empty.png').write_bytes(b'')
    cases = [
        ((str(tmp_path / 'nope.png'), DEMO_CONFIG, demo_checkpoint, '--out', str(out)), 'image file not found'),
        ((str(tmp_path), DEMO_CONFIG, demo_checkpoint, '--out', str(out)), 'image .* is a directory, not a file'),
        ((real_image, DEMO_CONFIG, str(other), '--out', str(out)), r'.*other\.pth does not fit the model'),
        ((real_image, DEMO_CONFIG, demo_checkpoint, '--out', str(out), '--cfg-options',
          'model.backbone.pad_mask=partial'), "the config's model cannot be built: .*pad_mask must be one of"),
        ((real_image, DEMO_CONFIG, demo_checkpoint, '--out', str(tmp_path / 'a_file' / 'x.png')),
         'cannot write .*a_file/x.png'),
        ((real_image, DEMO_CONFIG, demo_checkpoint, '--out', str(tmp_path / 'result.txt')),
         r'--out .*result\.txt: not an image file name OpenCV can write'),
        ((str(tmp_path / 'notes.txt'), DEMO_CONFIG, demo_checkpoint, '--out', str(out)),
         r'cannot read image .*notes\.txt \(not an image file\?\)'),
        ((str(tmp_path / 'empty.png'), DEMO_CONFIG, demo_checkpoint, '--out', str(out)),
         r'cannot read image .*empty\.png: the file is empty'),
        ((real_image, DEMO_CONFIG, demo_checkpoint, '--out', str(out), '--score-thr', 'nan'),
         "argument --score-thr: 'nan' is not a number in \\[0, 1\\]"),
        ((real_image, osp.join('configs', 'stvit-r-seg', 'stvit-r-demo_upernet_1xb4-400_nuclei-224x224.py'),
          demo_checkpoint, '--out', str(out)), ".*is an mmseg config \\(default_scope='mmseg'\\): this tool draws"),
    ]
    for args, message in cases:
        proc = run_tool(osp.join('tools', 'image_demo.py'), *args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and re.search('image_demo.py: error: ' + message, lines[-1]), proc.stderr[-2000:]
        assert not any('Traceback' in line for line in lines), proc.stderr[-2000:]
    assert not out.exists()


def test_a_backbone_that_is_not_stvitr_is_named():
    """mmdet's Swin (or any other backbone) has no semantic tokens: the error names its class, not a switch of
    STViTR it does not have."""
    from mmdet.models.backbones import SwinTransformer

    from stvit_det import STViTR
    from stvit_det.utils.attention_maps import sparse_stage

    swin = SwinTransformer(embed_dims=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
    with pytest.raises(ValueError, match='the backbone is a SwinTransformer, not STViTR'):
        sparse_stage(swin)
    with pytest.raises(ValueError, match=r'build STViTR with sparsify=True'):
        sparse_stage(STViTR(embed_dims=8, depths=(1, 1, 6, 1), num_heads=(1, 1, 1, 1), sparsify=False))
    # the tool's own build: mmdet's backbones return None from train() / eval(), which was then named 'NoneType'
    import importlib.util

    from mmengine.config import Config
    spec = importlib.util.spec_from_file_location('vis_tool', osp.join(ROOT, 'tools', 'vis_semantic_tokens.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    cfg = Config(dict(default_scope='mmdet', model=dict(backbone=dict(
        type='SwinTransformer', embed_dims=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)))))
    built = tool.build_backbone(cfg, None, 'cpu')
    assert type(built).__name__ == 'SwinTransformer' and not built.training
    with pytest.raises(ValueError, match='the backbone is a SwinTransformer, not STViTR'):
        sparse_stage(built)
