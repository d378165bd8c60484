"""Model-zoo metadata: every ``configs/*/metafile.yml`` is imported by ``model-index.yml`` and parses as OpenMMLab
model-index (what ``mim search`` reads); every entry points at a config that exists, and its Parameters and FLOPs
equal what ``tools/analysis/get_flops.py --device meta`` computes at the entry's ``Input Shape`` (the paper's region
arithmetic, ``attn_impl='reference'``)."""
import glob
import json
import os.path as osp
import re
import sys

import pytest
import torch
import yaml

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(ROOT, 'tools', 'analysis'))
import get_flops  # noqa: E402

METAFILES = sorted(glob.glob(osp.join(ROOT, 'configs', '*', 'metafile.yml')))
# folders whose every experiment leaf must be listed (others' folders may list a subset)
COMPLETE = ('stvit-r', 'stvit-r-cls', 'stvit-r-seg')


def _rel(path):
    return osp.relpath(path, ROOT)


def _load(path):
    with open(path, encoding='utf-8') as f:
        return yaml.safe_load(f)


def test_model_index_imports_every_metafile():
    import modelindex

    index = _load(osp.join(ROOT, 'model-index.yml'))
    assert sorted(index['Import']) == sorted(_rel(p) for p in METAFILES)
    assert {f'configs/{folder}/metafile.yml' for folder in COMPLETE} <= set(index['Import'])
    mi = modelindex.load(osp.join(ROOT, 'model-index.yml'))  # the parser mim uses
    names = [m.name for m in mi.models]
    assert len(names) == len(set(names)) == sum(len(_load(p)['Models']) for p in METAFILES)
    assert all(m.metadata.parameters for m in mi.models)


@pytest.mark.parametrize('metafile', METAFILES, ids=_rel)
def test_entries_point_at_configs(metafile):
    data = _load(metafile)
    collections = {c['Name'] for c in data.get('Collections', [])}
    folder = osp.dirname(metafile)
    for model in data['Models']:
        config = osp.join(ROOT, model['Config'])
        assert osp.isfile(config), f'{model["Name"]}: {model["Config"]} does not exist'
        assert osp.dirname(config) == folder, f'{model["Name"]}: config outside {_rel(folder)}'
        assert model['Name'] == osp.splitext(osp.basename(config))[0]
        assert model['In Collection'] in collections
        assert 'Results' not in model or model['Results'], model['Name']
        weights = model.get('Weights')
        assert weights is None or weights.startswith('https://'), model['Name']
        # weights of another code base (another key layout) are where MMPretrain lists them, not under Weights
        converted = model.get('Converted From', {})
        assert all(converted.get(k, 'https://').startswith('https://') for k in ('Weights', 'Code')), model['Name']
    if osp.basename(folder) in COMPLETE:
        leaves = {osp.relpath(p, ROOT) for p in glob.glob(osp.join(folder, '*.py'))}
        assert leaves == {m['Config'] for m in data['Models']}, 'every experiment of the folder is listed'


def _mim_unreadable(where, metadata):
    """Values ``mim search`` cannot tabulate. openmim 0.3.9 (``mim/commands/search.py``, ``_parse``) lower-cases
    every item of a list that does not hold dicts, so a list of numbers (``Input Shape: [800, 1216]``) crashes the
    whole search with ``'int' object has no attribute 'lower'``; it takes strings, numbers, lists of strings and
    lists of dicts."""
    bad = []
    for key, value in (metadata or {}).items():
        if isinstance(value, list) and value and not isinstance(value[0], dict):
            if not all(isinstance(v, str) for v in value):
                bad.append(f'{where}: {key}: {value!r} (a list for mim must hold only strings)')
        elif isinstance(value, dict):
            bad.append(f'{where}: {key}: {value!r} (mim takes no nested mapping here)')
    return bad


@pytest.mark.parametrize('metafile', METAFILES, ids=_rel)
def test_metadata_is_readable_by_mim_search(metafile):
    data = _load(metafile)
    bad = []
    for item in data.get('Collections', []) + data['Models']:
        bad += _mim_unreadable(item['Name'], item.get('Metadata'))
    assert not bad, '\n'.join(bad)
    shapes = [m['Metadata']['Input Shape'] for m in data['Models'] if 'Input Shape' in m.get('Metadata', {})]
    assert all(re.fullmatch(r'\d+x\d+', s) for s in shapes), shapes


def _entries():
    for metafile in METAFILES:
        for model in _load(metafile)['Models']:
            if 'FLOPs' in model.get('Metadata', {}) or 'Parameters' in model.get('Metadata', {}):
                yield model


def test_figures_equal_the_tool():
    """Parameters and FLOPs of every entry, recomputed on the meta device (the same model is measured once)."""
    measured = {}
    wrong = []
    entries = list(_entries())
    assert entries
    for model in entries:
        meta = model['Metadata']
        assert 'Input Shape' in meta or 'FLOPs' not in meta, f'{model["Name"]}: FLOPs without an Input Shape'
        shape = tuple(int(n) for n in str(meta.get('Input Shape', '224x224')).split('x'))
        cfg = get_flops.load_config(osp.join(ROOT, model['Config']), {'model.backbone.attn_impl': 'reference'})
        key = (json.dumps(cfg.model.to_dict(), sort_keys=True, default=str), shape)
        if key not in measured:
            torch.manual_seed(0)
            net = get_flops.build_model(cfg, 'meta')
            inputs = torch.empty(1, 3, *shape, device='meta')
            measured[key] = (sum(p.numel() for p in net.parameters()),
                             get_flops.count_macs(get_flops.meta_predict, net, inputs))
        params, flops = measured[key]
        if meta.get('Parameters') is not None and meta['Parameters'] != params:
            wrong.append(f'{model["Name"]}: Parameters {meta["Parameters"]} vs {params}')
        if meta.get('FLOPs') is not None and meta['FLOPs'] != flops:
            wrong.append(f'{model["Name"]}: FLOPs {meta["FLOPs"]} vs {flops} at {shape}')
    assert not wrong, '\n'.join(wrong)


def test_meta_count_is_the_cli_count(capsys, monkeypatch):
    """The figures above are get_flops.py's: its CLI on the meta device prints the same numbers."""
    monkeypatch.setattr(sys, 'argv', [
        'get_flops.py', osp.join(ROOT, 'configs', 'stvit-r-cls', 'stvit-r-s-released_16xb64_in1k.py'),
        '--shape', '224', '224', '--device', 'meta', '--cfg-options', 'model.backbone.attn_impl=reference'])
    get_flops.main()
    row = [line for line in capsys.readouterr().out.splitlines() if 'stvit-r-s-released' in line][0]
    cells = [c.strip() for c in row.strip('|').split('|')]
    assert cells[1] == '48.86' and cells[2] == '5.8' and cells[4] == '49.63' and cells[5] == '5.8'


def test_package_ships_the_model_index_where_mim_looks():
    """OpenMMLab's mim reads ``<installed package>/.mim/model-index.yml`` and finds configs under ``.mim``: the
    package holds them there (links to the top-level folders in the source tree, copies in a wheel: MANIFEST.in),
    and they resolve to the same models and existing config files."""
    import modelindex

    import stvit_det

    mim_root = osp.join(osp.dirname(stvit_det.__file__), '.mim')
    shipped = modelindex.load(osp.join(mim_root, 'model-index.yml'))
    top = modelindex.load(osp.join(ROOT, 'model-index.yml'))
    assert [m.name for m in shipped.models] == [m.name for m in top.models]
    assert all(osp.isfile(osp.join(mim_root, m.config)) for m in shipped.models)
    with open(osp.join(ROOT, 'MANIFEST.in'), encoding='utf-8') as f:
        manifest = f.read()
    assert all(f'stvit_det/.mim/{part}' in manifest for part in ('model-index.yml', 'configs', 'tools'))
