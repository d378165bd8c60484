"""tools/analysis/get_flops.py and benchmark.py: run as scripts on the CPU at a small shape (STViT-R-T against the
stock mmdet Swin-T Mask R-CNN) and print their tables; their counters checked on known cases in-process."""
import importlib.util
import os
import os.path as osp
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOLS = osp.join(ROOT, 'tools', 'analysis')
OURS = 'configs/stvit-r/mask-rcnn_stvit-r-t_fpn_1x_coco.py'
SWIN = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'  # its pretrained URL must never be used
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(f'_tool_{name}', osp.join(TOOLS, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(script, *args, timeout=600):
    proc = subprocess.run([sys.executable, osp.join(TOOLS, script), *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _table(stdout):
    """Markdown table rows (header excluded) as lists of stripped cells."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith('| ')]
    return [[c.strip() for c in ln.strip('|').split('|')] for ln in lines[1:]]


def test_get_flops_counts_cpu_sdpa():
    """FlopCounterMode has no formula for the CPU fused SDPA kernel; the tool adds it (else attention = 0)."""
    get_flops = _load_tool('get_flops')
    q, k = torch.randn(2, 3, 49, 32), torch.randn(2, 3, 81, 32)
    expected = 2 * 3 * 49 * 81 * 32 * 2  # q k^T and attn v, in MACs
    assert get_flops.count_macs(F.scaled_dot_product_attention, q, k, k) == expected
    mask = torch.ones(49, 81, dtype=torch.bool)
    assert get_flops.count_macs(F.scaled_dot_product_attention, q, k, k, attn_mask=mask) == expected
    assert get_flops.count_macs(torch.matmul, q, k.transpose(-2, -1)) == expected // 2


def test_benchmark_cpu_memory_estimate():
    benchmark = _load_tool('benchmark')
    weight = torch.zeros(1024)  # baseline: 4 KiB
    mib = 2**20 // 4

    def fn():
        x = torch.ones(mib)  # 1 MiB
        y = x * 2  # 2 MiB live
        del x
        z = y + 1  # 2 MiB live again (x freed)
        return z.sum()

    with benchmark.LiveTensorBytes([weight]) as tracker:
        fn()
    assert tracker.baseline == 4096
    assert 2 * 2**20 <= tracker.peak < 2 * 2**20 + 4096
    assert tracker.current < 4096  # everything but the scalar result was freed


def test_get_flops_script():
    out = _run('get_flops.py', OURS, SWIN, '--shape', '96', '128')
    assert 'Input 1x3x96x128' in out
    rows = _table(out)
    assert [r[0] for r in rows] == ['mask-rcnn_stvit-r-t_fpn_1x_coco', 'mmdet::mask-rcnn_swin-t-p4-w7_fpn_1x_coco']
    ours, swin = rows
    # backbone params (M), backbone GFLOPs, vs first, detector params (M), detector GFLOPs, vs first
    assert ours[1] == '27.55' and swin[1] == '27.52'  # design spec section 1
    assert ours[3] == '1.000' and ours[6] == '1.000'
    for row in rows:
        assert float(row[2]) > 0 and float(row[5]) > float(row[2]) and float(row[4]) > float(row[1])
    # on the CPU as on the meta device (the CPU window-kernel timing, at the first STViTR call of the process, once
    # ran inside the counter and added 21.7 GMACs to it)
    meta = _table(_run('get_flops.py', OURS, '--shape', '96', '128', '--device', 'meta'))
    assert meta[0][1:] == ours[1:]


def test_benchmark_script():
    out = _run('benchmark.py', OURS, SWIN, '--shape', '64', '96', '--batch-size', '2', '--warmup', '1', '--repeats',
               '2', '--device', 'cpu', '--threads', '1', '--mode', 'both')
    assert 'CPU, 1 threads' in out and 'inference' in out and 'interleaved' in out
    rows = _table(out)
    assert [tuple(r[:5]) for r in rows] == [
        ('mask-rcnn_stvit-r-t_fpn_1x_coco', 'backbone', '64x96', '2', 'fp32'),
        ('mmdet::mask-rcnn_swin-t-p4-w7_fpn_1x_coco', 'backbone', '64x96', '2', 'fp32'),
        ('mask-rcnn_stvit-r-t_fpn_1x_coco', 'detector', '64x96', '2', 'fp32'),
        ('mmdet::mask-rcnn_swin-t-p4-w7_fpn_1x_coco', 'detector', '64x96', '2', 'fp32')]
    for name, mode, shape, batch, dtype, tmin, tmed, ips, mem, speedup, mem_ratio in rows:
        assert 0 < float(tmin) <= float(tmed)
        assert float(ips) == pytest.approx(2e3 / float(tmed), rel=0.01, abs=0.006)
        assert float(mem) > 100  # MiB: the weights alone are ~105 (backbone) / ~182 (detector)
    assert rows[0][9] == rows[2][9] == '1.00 / 1.00' and rows[0][10] == rows[2][10] == '1.00'
    by_min, by_median = (float(v) for v in rows[1][9].split(' / '))  # first config's time / this config's time
    assert by_min == pytest.approx(float(rows[0][5]) / float(rows[1][5]), abs=0.011)
    assert by_median == pytest.approx(float(rows[0][6]) / float(rows[1][6]), abs=0.011)


def test_benchmark_sweeps_shapes_batch_sizes_and_dtypes_in_one_run():
    out = _run('benchmark.py', OURS, SWIN, '--shape', '32', '48', '--shape', '40', '40', '--batch-size', '1', '2',
               '--dtype', 'fp32', 'bf16', '--warmup', '0', '--repeats', '1', '--device', 'cpu', '--threads', '1',
               '--mode', 'backbone', '--no-memory')
    rows = _table(out)
    assert [(r[2], r[3], r[4]) for r in rows] == [(s, b, d) for s in ('32x48', '40x40') for b in '12'
                                                  for d in ('fp32', 'bf16') for _ in range(2)]
    for i in range(0, len(rows), 2):  # ratios are against the first config of the same setting
        assert rows[i][9] == '1.00 / 1.00'
        assert float(rows[i + 1][7]) == pytest.approx(int(rows[i + 1][3]) * 1e3 / float(rows[i + 1][6]), rel=0.01,
                                                      abs=0.006)


def test_benchmark_training_step_with_profile():
    """--train times forward + loss + backward of the backbone and of the detector's loss (fake boxes and masks),
    with the activations in the memory estimate; --profile lists every stage and block kind of each backbone."""
    out = _run('benchmark.py', OURS, SWIN, '--shape', '64', '96', '--warmup', '0', '--repeats', '1', '--device',
               'cpu', '--threads', '1', '--mode', 'both', '--train', '--profile')
    assert 'training step (forward + loss + backward)' in out
    tables = out.split('Per stage / block kind')
    rows, profile = _table(tables[0]), _table(tables[1])
    assert [r[1] for r in rows] == ['backbone', 'backbone', 'detector', 'detector']
    infer = _table(_run('benchmark.py', OURS, '--shape', '64', '96', '--warmup', '0', '--repeats', '1',
                        '--device', 'cpu', '--threads', '1', '--mode', 'backbone'))
    assert float(rows[0][8]) > float(infer[0][8])  # a training step keeps activations and gradients
    ours = {r[5]: r for r in profile if r[0] == 'mask-rcnn_stvit-r-t_fpn_1x_coco' and r[1] == 'backbone'}
    for part in ('stem', 'stage 1', 'stage 3 / generate', 'stage 3 / refine', 'stage 3 / recover',
                 'stage 3 / global', 'stage 4 / shifted'):
        assert float(ours[part][6]) > 0, part
    assert float(ours['stage 3 / recover'][7]) > 0  # the attention inside the recovery block
    assert float(ours['stage 3 / recover'][7]) < float(ours['stage 3 / recover'][6])
    swin = [r for r in profile if r[0].startswith('mmdet::') and r[1] == 'backbone']
    assert any(r[5] == 'stage 3 / SwinBlock' for r in swin)


def test_a_config_given_twice_is_measured_twice(monkeypatch):
    """`benchmark.py A A` (the noise floor): two models, each timed, results by position; a failure names its fix."""
    import types

    bench = _load_tool('benchmark')
    built = []

    class FakeBench:
        def __init__(self, config, *args):
            if config == 'bn':
                raise ValueError('Expected more than 1 value per channel when training, got input size [1, 512, 1, 1]')
            built.append(self)
            self.times, self.profile = [], None

        def call(self, profile=None):
            pass

        def timed(self):
            self.times.append(0.001 * len(built))

    monkeypatch.setattr(bench, 'Bench', FakeBench)
    args = types.SimpleNamespace(warmup=0, memory=False, repeats=2, profile=False, device='cpu')
    results = bench.run_setting(['a', 'a', 'bn'], 'backbone', (64, 64), 1, 'fp32', args)
    assert len(built) == 2 and [len(results[i]['times']) for i in (0, 1)] == [2, 2]
    assert results[2]['error'].endswith('needs more than one value per channel: --batch-size 2')


def test_profile_stage_rows_include_patch_merging():
    """A stage's row holds its patch merging in both backbones: mmdet's Swin merges inside the stage's forward,
    STViT-R after it (each merging made to take 50 ms here, so that it dominates the stage)."""
    import functools

    from mmdet.models.backbones import SwinTransformer

    from conftest import small_stvit

    bench = _load_tool('benchmark')

    def slow(forward, *args):
        time.sleep(0.05)
        return forward(*args)

    for model in (small_stvit().eval(), SwinTransformer(embed_dims=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4))):
        model.eval()
        b = bench.Bench.__new__(bench.Bench)
        b.net, b.inputs, b.mode, b.train = model, torch.randn(1, 3, 64, 64), 'backbone', False
        b.device, b.dtype = 'cpu', None
        profile = bench.Profile(model, 'cpu')
        for stage in (getattr(model, 'layers', None) or model.stages)[:3]:
            stage.downsample.forward = functools.partial(slow, stage.downsample.forward)
        b.call(profile)
        for i in (1, 2, 3):  # nested intervals: a stage's time holds its blocks' and its merging's
            merging = profile.total[f'stage {i} / patch merging']
            blocks = sum(t for k, t in profile.total.items()
                         if k.startswith(f'stage {i} / ') and k.count(' / ') == 1 and k != f'stage {i} / patch merging')
            assert merging >= 0.05 and profile.total[f'stage {i}'] >= blocks + merging, (type(model).__name__, i)


def test_profile_counts_the_forward_once_and_stays_out_of_timed_calls():
    """The profile hooks record only the forward of a profiled call: not a timed call, not the recomputation of
    checkpointed blocks (with_cp) in the backward; --profile with --compile is refused (hooks do not run there)."""
    from conftest import small_stvit

    bench = _load_tool('benchmark')
    model = small_stvit(with_cp=True).train()

    b = bench.Bench.__new__(bench.Bench)  # a backbone training step, without building a config
    b.net, b.inputs, b.mode, b.train = model, torch.randn(1, 3, 64, 64), 'backbone', True
    b.device, b.dtype = 'cpu', None
    profile = bench.Profile(model, 'cpu')
    b.call()  # a timed call: nothing recorded
    assert set(profile.runs.values()) == {0}
    b.call(profile)
    assert profile.runs['stage 1'] == 1 and profile.runs['stage 1 / window'] == 1
    assert profile.runs['stage 3 / recover'] == 1 and profile.runs['stage 3 / recover / attention'] == 1
    assert not profile.active
    proc = subprocess.run([sys.executable, osp.join(TOOLS, 'benchmark.py'), OURS, '--profile', '--compile'], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and 'hooks, which do not run inside a compiled graph' in proc.stderr


def test_per_config_overrides_measure_variants_side_by_side():
    """`CONFIG@key=value` applies to that config only: the same STViT-R-T with its default attention, the oracle and
    FlexAttention in one run (no CPU memory figure for FlexAttention: '-'); the FLOP counter sees the dense path's
    extra work only where it is asked for, and refuses FlexAttention in one line."""
    out = _run('benchmark.py', OURS, OURS + '@model.backbone.attn_impl=reference',
               OURS + '@model.backbone.attn_impl=flex',
               '--shape', '64', '96', '--warmup', '0', '--repeats', '1', '--device', 'cpu', '--threads', '1',
               '--mode', 'backbone')
    rows = _table(out)
    assert [r[0] for r in rows] == ['mask-rcnn_stvit-r-t_fpn_1x_coco',
                                    'mask-rcnn_stvit-r-t_fpn_1x_coco@attn_impl=reference',
                                    'mask-rcnn_stvit-r-t_fpn_1x_coco@attn_impl=flex']
    assert all(float(r[5]) > 0 for r in rows)
    assert float(rows[1][8]) > 100 and rows[2][8] == '-'  # FlexAttention cannot run under the CPU memory tracker
    flops = _table(_run('get_flops.py', OURS + '@model.backbone.attn_impl=dense', OURS, '--shape', '800', '1216',
                        '--device', 'meta', '--mode', 'backbone'))
    assert float(flops[0][2]) > 1.05 * float(flops[1][2])  # dense: 79.2 vs 74.2 GMACs
    get_flops = _load_tool('get_flops')
    with pytest.raises(SystemExit, match="must be key=value, got 'model.backbone.attn_impl'"):
        get_flops.load_config(OURS + '@model.backbone.attn_impl')
    args = get_flops.argparse.Namespace(cfg_options=None, device='meta', shape=(64, 64), mode='backbone')
    with pytest.raises(SystemExit, match="attn_impl='flex' cannot be counted"):
        get_flops.measure(OURS + '@model.backbone.attn_impl=flex', args)
    # mmdet's Swin reads its drop-path rates with .item() while it is built: one line, not a traceback
    with pytest.raises(SystemExit, match='cannot be built on the meta device .*count it with --device cpu'):
        get_flops.measure('mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py', args)
    # small counts keep three significant digits (a narrow model or a small input printed 0.0)
    assert [get_flops.gflops_text(v) for v in (239.94, 10.0, 5.834, 0.0123)] == ['239.9', '10.0', '5.83', '0.0123']


def test_meta_count_follows_sliding_window_inference():
    """A segmentor in slide mode (the Cityscapes config's documented option) is counted crop by crop on the meta
    device, as its predict runs on the CPU: the same figure, larger than one whole-image pass."""
    get_flops = _load_tool('get_flops')
    narrow = {'model.backbone.embed_dims': 16, 'model.backbone.depths': [1, 1, 6, 1],
              'model.backbone.num_heads': [1, 2, 4, 8], 'model.decode_head.in_channels': [16, 32, 64, 128],
              'model.decode_head.channels': 32, 'model.auxiliary_head.in_channels': 64,
              'model.auxiliary_head.channels': 16}
    slide = {'model.test_cfg.mode': 'slide', 'model.test_cfg.crop_size': (128, 256), 'model.test_cfg.stride': (96, 192)}
    config = 'configs/stvit-r-seg/stvit-r-s-in1k-pre_upernet_4xb2-80k_cityscapes-512x1024.py'
    counts = {}
    for name, options, device in (('whole', narrow, 'meta'), ('slide', {**narrow, **slide}, 'meta'),
                                  ('slide-cpu', {**narrow, **slide}, 'cpu')):
        args = get_flops.argparse.Namespace(cfg_options=options, device=device, shape=(256, 512), mode='detector')
        counts[name] = get_flops.measure(config, args)['detector_gflops']
    assert counts['slide'] == counts['slide-cpu'] > 1.5 * counts['whole']  # 3 x 3 crops of 128 x 256


def test_missing_config_is_a_one_line_error():
    proc = subprocess.run([sys.executable, osp.join(TOOLS, 'get_flops.py'), 'configs/no_such_config.py'], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and 'config file not found' in proc.stderr


def test_benchmark_and_flops_take_segmentation_configs():
    """The analysis tools run mmseg configs (their default_scope decides the registry): UperNet with mmseg's own Swin
    and with STViT-R side by side, backbone and whole segmentor."""
    seg_swin = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'
    seg_ours = 'configs/stvit-r-seg/stvit-r-t-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'
    rows = _table(_run('benchmark.py', seg_swin, seg_ours, '--shape', '64', '96', '--warmup', '0', '--repeats', '1',
                       '--device', 'cpu', '--threads', '1', '--mode', 'both'))
    names = [r[0] for r in rows]
    assert any('swin-tiny' in n for n in names) and any('stvit-r-t' in n for n in names)
    assert len(rows) == 4 and all(float(r[5]) > 0 for r in rows)  # backbone and whole model, each config
    flops = _table(_run('get_flops.py', seg_swin, seg_ours, '--shape', '64', '96', '--device', 'cpu'))
    assert len(flops) == 2 and all(float(c) > 0 for r in flops for c in r[1:5])


def test_benchmark_reports_a_failing_config_in_its_row():
    """A config that cannot run keeps its row, with the error in the last column (stdout alone tells the story)."""
    demo = 'configs/stvit-r/mask-rcnn_stvit-r-demo_fpn_nuclei.py'
    bad = demo + '@model.backbone.window_size=0'
    proc = subprocess.run([sys.executable, osp.join(TOOLS, 'benchmark.py'), demo, bad, '--shape', '64', '64',
                           '--warmup', '0', '--repeats', '1', '--mode', 'backbone', '--threads', '1'], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=300)
    rows = _table(proc.stdout)
    assert len(rows) == 2 and len(rows[0]) == len(rows[1]) == 12, proc.stdout
    assert rows[0][-1] == '' and float(rows[0][5]) > 0
    assert rows[1][5:11] == ['-'] * 6 and rows[1][-1] == 'ValueError: window_size must be a positive integer, got 0'


def _fails(script, *args):
    proc = subprocess.run([sys.executable, osp.join(TOOLS, script), *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    return proc


def test_flops_of_the_other_configs_when_one_fails_and_override_typos():
    """get_flops names a config that cannot be counted and counts the others (as benchmark keeps their rows); an
    override of a setting the config does not have (a typo) is refused, not merged in as a new key that nothing
    reads (the table showed the unchanged model under the override's name); an input that does not fit in memory
    says so; an error of a type the tools did not list (AttributeError) is one line too, in benchmark's row."""
    demo = 'configs/stvit-r/mask-rcnn_stvit-r-demo_fpn_nuclei.py'
    bad = demo + '@model.backbone.embed_dims=7'
    proc = _fails('get_flops.py', bad, demo, '--shape', '64', '64', '--device', 'meta', '--mode', 'backbone')
    rows = _table(proc.stdout)
    assert len(rows) == 1 and rows[0][0] == 'mask-rcnn_stvit-r-demo_fpn_nuclei' and float(rows[0][2]) > 0
    err = proc.stderr.strip().splitlines()
    assert err[0] == f'error: {bad}: the model cannot be built: stage 0: 7 channels not divisible by 2 heads'
    assert err[-1] == f'error: not counted (see above): {bad}'
    for script in ('get_flops.py', 'benchmark.py'):
        last = _fails(script, demo + '@modle.backbone.embed_dims=64', '--shape', '64', '64').stderr.splitlines()[-1]
        assert last == (f"error: the overrides after '@' in {demo}@modle.backbone.embed_dims=64: set 'modle', which "
                        f'{demo} does not have: a typo? (these tools read the model settings, under model.)'), last
    last = _fails('get_flops.py', 'mmdett::swin/x.py', '--shape', '64', '64').stderr.splitlines()[-1]
    assert last == "error: mmdett::swin/x.py: 'mmdett::' names no toolbox; the prefixes are mmdet::, mmseg::, " \
                   'mmpretrain:: (a config shipped with that toolbox)', last
    last = _fails('get_flops.py', demo, '--shape', '64', '64', '--cfg-options', 'mdoel.x=1').stderr.splitlines()[-1]
    assert last.startswith("error: --cfg-options set 'mdoel', which ")
    last = _fails('get_flops.py', demo, '--shape', '100000000', '100000000', '--mode', 'backbone').stderr
    assert f'error: {demo}: out of memory at a 1x3x100000000x100000000 input (' in last.splitlines()[-1]
    proc = subprocess.run([sys.executable, osp.join(TOOLS, 'benchmark.py'), demo, demo + '@model.test_cfg=None',
                           '--shape', '64', '64', '--warmup', '0', '--repeats', '1', '--mode', 'backbone',
                           '--threads', '1', '--no-memory'], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300)
    rows = _table(proc.stdout)
    assert len(rows) == 2 and float(rows[0][5]) > 0 and rows[1][-1].startswith('AttributeError: '), proc.stderr


@pytest.mark.parametrize('args,message', [
    (('--shape', '0', '0'), '--shape H W must be positive, got 0 0'),
    (('--device', 'gpu'), "invalid choice: 'gpu'"),
    (('--device', 'meta', '--cfg-options', 'model.backbone.window_size=0'),
     'the model cannot be built: window_size must be a positive integer, got 0'),
])
def test_get_flops_bad_input_is_one_line(args, message):
    proc = subprocess.run([sys.executable, osp.join(TOOLS, 'get_flops.py'),
                           'configs/stvit-r/mask-rcnn_stvit-r-demo_fpn_nuclei.py', *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
    assert message in proc.stderr.strip().splitlines()[-1]


def test_window_kernels_tool_times_both_kernels_and_restores_the_rule(capsys, monkeypatch):
    import stvit_det.models.layers.swin_block as swin_block

    tool = _load_tool('window_kernels')
    rule = swin_block.use_fused_window_attention
    monkeypatch.setattr(sys, 'argv', ['window_kernels.py', '--shape', '64', '96', '--repeats', '1', '--threads', '1'])
    tool.main()
    assert swin_block.use_fused_window_attention is rule
    rows = _table(capsys.readouterr().out)
    assert [r[1] for r in rows] == ['1', '2', '3', '4'] and [r[4] for r in rows] == ['12', '4', '1', '1']
    assert all(float(r[7].split(' / ')[0]) > 0 for r in rows)
    monkeypatch.setattr(sys, 'argv', ['window_kernels.py', '--shape', '0', '96'])
    with pytest.raises(SystemExit):
        tool.main()
    assert "argument --shape: '0' is not a positive integer" in capsys.readouterr().err


@pytest.mark.parametrize('option,value,message', [('--batch-size', '0', 'a positive integer'),
                                                  ('--shape', '0', 'a positive integer'),
                                                  ('--repeats', '0', 'a positive integer'),
                                                  ('--warmup', '-1', 'an integer >= 0'),
                                                  ('--threads', '1.5', 'a positive integer')])
def test_benchmark_names_the_count_that_is_out_of_range(capsys, monkeypatch, option, value, message):
    tool = _load_tool('benchmark')
    values = [value, '64'] if option == '--shape' else [value]
    monkeypatch.setattr(sys, 'argv', ['benchmark.py', 'cfg.py', option, *values])
    with pytest.raises(SystemExit):
        tool.parse_args()
    assert f"argument {option}: '{value}' is not {message}" in capsys.readouterr().err


def test_get_flops_forward_failure_is_one_line():
    """A model that builds but refuses the input in its forward (the classification form of stage 3 fits only certain
    input sizes): one line naming the config and the shape, no traceback."""
    config = 'configs/stvit-r-cls/stvit-r-s-released_16xb64_in1k.py'
    proc = subprocess.run([sys.executable, osp.join(TOOLS, 'get_flops.py'), config, '--shape', '64', '64', '--device',
                           'meta', '--mode', 'backbone'], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f'error: {config}: the model fails on a 1x3x64x64 input: '), last
    assert "stage3_form='classification'" in last and 'fits only stage-3 sides of 14 or 21 tokens' in last, last


def test_mmengine_flop_counter_takes_stvitr():
    """mmengine's ``get_model_complexity_info`` (what mmpretrain's and mmseg's ``get_flops.py`` call) traces the
    backbone with handlers that take LayerNorm inputs of 2 to 5 dimensions: every path of STViTR gives it such
    inputs, so it counts instead of stopping at an ``AssertionError``."""
    from mmengine.analysis import get_model_complexity_info
    from conftest import small_stvit
    from stvit_det.models.layers import ATTN_IMPLS
    for impl in [i for i in ATTN_IMPLS if i != 'flex']:
        model = small_stvit(attn_impl=impl).eval()
        info = get_model_complexity_info(model, input_shape=(3, 96, 128), show_table=False, show_arch=False)
        assert info['flops'] > 0 and info['params'] == sum(p.numel() for p in model.parameters())
