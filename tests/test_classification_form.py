"""The classification form of stage 3 (``STViTR(stage3_form='classification')``, the released ImageNet network)
against a naive oracle written from the released rules (changsn/STViT-R ``models/layers.py``
``SemanticAttentionBlock`` / ``Block`` and ``models/swin_transformer.py`` ``Deit.forward``, design spec 7.2): window
by window, pooled tokens by explicit max over the overlapping 3-bins, key patches by slicing, per-head softmax
written out. Outputs and gradients, square and non-square maps; Swin's no-shift rule; the size error."""
import pytest
import torch

from stvit_det import STViTR
from stvit_det.models.layers.classification_form import CLASSIFICATION_UNIT, unfold_grid_error
from stvit_det.models.layers.swin_block import SwinBlock

from conftest import randomize_

WS, SS, KERNEL, STRIDE = 7, 3, 10, 4
NARROW = dict(embed_dims=16, depths=(2, 2, 6, 2), num_heads=(1, 1, 2, 2))  # stage 3: 64 channels, 2 heads
BINS = [(0, 3), (2, 5), (4, 7)]  # adaptive max-pool 7 -> 3: floor(i*7/3) .. ceil((i+1)*7/3)


def attend(blk, queries, keys):
    """proj(softmax(q k^T / sqrt(d)) v) per head; queries (B, Nq, C) and keys (B, K, C) already normalised."""
    a = blk.attn
    B, Nq, C = queries.shape
    h = a.num_heads
    d = C // h
    q = a.q(queries).view(B, Nq, h, d)
    k, v = a.kv(keys).view(B, keys.shape[1], 2, h, d).unbind(2)
    out = []
    for head in range(h):
        logits = q[:, :, head] @ k[:, :, head].transpose(1, 2) * d**-0.5  # (B, Nq, K)
        out.append(torch.softmax(logits, dim=-1) @ v[:, :, head])  # (B, Nq, d)
    return a.proj(torch.cat(out, dim=-1))


def mlp_step(blk, t):
    return t + blk.layer_scale_2 * blk.mlp(blk.norm2(t))


def oracle_generate(blk, x):
    """Released j=1 (SHORTCUT=False): s_w = g1 * Attn(LN1 pool_w, LN1 [pool_w | unfold patch w]); MLP."""
    B, H, W, C = x.shape
    s = x.new_zeros(B, SS * H // WS, SS * W // WS, C)
    for i in range(H // WS):
        for j in range(W // WS):
            win = x[:, WS * i:WS * i + WS, WS * j:WS * j + WS]  # (B, 7, 7, C)
            pooled = torch.stack([win[:, r0:r1, c0:c1].amax(dim=(1, 2)) for r0, r1 in BINS for c0, c1 in BINS],
                                 dim=1)  # (B, 9, C), row-major over the 3x3 bins
            patch = x[:, STRIDE * i:STRIDE * i + KERNEL, STRIDE * j:STRIDE * j + KERNEL].reshape(B, -1, C)
            keys = blk.norm1(torch.cat([pooled, patch], dim=1))  # (B, 109, C)
            new = blk.layer_scale_1 * attend(blk, blk.norm1(pooled), keys)  # no residual
            s[:, SS * i:SS * i + SS, SS * j:SS * j + SS] = new.view(B, SS, SS, C)
    return mlp_step(blk, s)


def oracle_refine(blk, x, s):
    """Released j=2: every semantic token over all semantic and image tokens, residual; MLP."""
    B, Hs, Ws, C = s.shape
    t = s.reshape(B, -1, C)
    keys = blk.norm1(torch.cat([t, x.reshape(B, -1, C)], dim=1))
    t = t + blk.layer_scale_1 * attend(blk, blk.norm1(t), keys)
    return mlp_step(blk, t).view(B, Hs, Ws, C)


def oracle_local(blk, s):
    B, Hs, Ws, C = s.shape
    out = s.clone()
    for i in range(Hs // SS):
        for j in range(Ws // SS):
            t = s[:, SS * i:SS * i + SS, SS * j:SS * j + SS].reshape(B, -1, C)
            tn = blk.norm1(t)
            out[:, SS * i:SS * i + SS, SS * j:SS * j + SS] = (t + blk.layer_scale_1 * attend(blk, tn, tn)).view(
                B, SS, SS, C)
    return mlp_step(blk, out)


def oracle_global(blk, s):
    B, Hs, Ws, C = s.shape
    t = s.reshape(B, -1, C)
    tn = blk.norm1(t)
    return mlp_step(blk, t + blk.layer_scale_1 * attend(blk, tn, tn)).view(B, Hs, Ws, C)


def oracle_recover(blk, x, s):
    """Released j=5: every image token over all semantic tokens, residual; MLP."""
    B, H, W, C = x.shape
    t = x.reshape(B, -1, C)
    t = t + blk.layer_scale_1 * attend(blk, blk.norm1(t), blk.norm1(s.reshape(B, -1, C)))
    return mlp_step(blk, t).view(B, H, W, C)


def oracle_stage(stage, x):
    """Stage 3 of the released ImageNet network; j=0 is the (unchanged, separately tested) Swin window block."""
    s = None
    for kind, blk in zip(stage.pattern, stage.blocks):
        if kind == 'window':
            x, _ = blk(x, None)
        elif kind == 'cls-generate':
            s = oracle_generate(blk, x)
        elif kind == 'cls-refine':
            s = oracle_refine(blk, x, s)
        elif kind == 'local':
            s = oracle_local(blk, s)
        elif kind == 'global':
            s = oracle_global(blk, s)
        elif kind == 'cls-recover':
            x, s = oracle_recover(blk, x, s), None
        else:
            raise AssertionError(kind)
    return x


def _stage3(depth=6, **kwargs):
    model = STViTR(**dict(NARROW, depths=(2, 2, depth, 2)), drop_path_rate=0.0, stage3_form='classification',
                   **kwargs)
    model.init_weights()
    return randomize_(model).layers[2]


def _rel_err(a, b):
    """Largest deviation relative to the largest magnitude (float32 sums in another order differ slightly)."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _grads(stage, x, fn):
    x = x.clone().requires_grad_()
    stage.zero_grad()
    out = fn(stage, x)
    (out * torch.cos(torch.arange(out.numel(), dtype=out.dtype)).view_as(out)).sum().backward()
    return out.detach(), x.grad, {n: p.grad.clone() for n, p in stage.named_parameters() if p.grad is not None}


@pytest.mark.parametrize('hw', [(14, 14), (14, 21), (21, 14)])
def test_classification_stage_equals_oracle(hw):
    """Outputs, input gradients and every parameter gradient; non-square maps included (the released code only
    runs 14x14)."""
    stage = _stage3()
    assert stage.pattern == CLASSIFICATION_UNIT
    x = torch.randn(2, *hw, stage.blocks[0].norm1.normalized_shape[0])
    out, gx, gp = _grads(stage, x, lambda m, t: m(t))
    ref, rx, rp = _grads(stage, x, oracle_stage)
    assert out.shape == x.shape
    assert _rel_err(out, ref) <= 1e-5
    assert _rel_err(gx, rx) <= 1e-5
    blocks = {n for n, _ in stage.named_parameters() if not n.startswith('downsample.')}  # merged by the backbone
    assert set(gp) == set(rp) == blocks  # every block parameter is reached
    for n in gp:
        assert _rel_err(gp[n], rp[n]) <= 1e-4, n


def test_two_units_restart_their_tokens():
    """Depth 12: two units; each generation starts afresh from the current image tokens."""
    stage = _stage3(depth=12)
    x = torch.randn(1, 14, 14, stage.blocks[0].norm1.normalized_shape[0])
    with torch.no_grad():
        assert _rel_err(stage(x), oracle_stage(stage, x)) <= 1e-5


def test_forms_differ_but_share_parameters():
    det = STViTR(**NARROW, drop_path_rate=0.0)
    det.init_weights()
    randomize_(det)
    cls = STViTR(**NARROW, drop_path_rate=0.0, stage3_form='classification')
    assert set(cls.state_dict()) == set(det.state_dict())
    cls.load_state_dict(det.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        a, b = det.eval()(x), cls.eval()(x)
    assert [o.shape for o in a] == [o.shape for o in b]
    assert torch.equal(a[1], b[1])  # stages 1-2 are the same blocks
    assert not torch.allclose(a[2], b[2], atol=1e-3)  # stage 3 is not


def test_odd_input_through_the_backbone():
    """211 x 333 input -> stage 3 of 14 x 21 tokens, stage 4 of 7 x 11 (fits one window in height: no shift)."""
    model = STViTR(**NARROW, drop_path_rate=0.0, stage3_form='classification', out_indices=(2, 3))
    model.init_weights()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 211, 333))
    assert [tuple(o.shape[2:]) for o in outs] == [(14, 21), (7, 11)]


def _swin_twin(blk, shift):
    twin = SwinBlock(blk.norm1.normalized_shape[0], blk.attn.num_heads, WS, shift)
    twin.load_state_dict(blk.state_dict())
    return twin


@pytest.mark.parametrize('hw, shift', [((7, 7), 0), ((7, 11), 0), ((5, 9), 0), ((11, 11), 3), ((14, 8), 3)])
def test_swin_shift_rule(hw, shift):
    """The shifted blocks of the classification form do not shift a map that fits one window (Swin's classification
    code: stage 4 at 224); larger maps shift as usual."""
    model = STViTR(**NARROW, drop_path_rate=0.0, stage3_form='classification')
    model.init_weights()
    randomize_(model)
    assert model.layers[3].pattern == ('window', 'cls-shifted')
    blk = model.layers[3].blocks[1]
    x = torch.randn(2, *hw, blk.norm1.normalized_shape[0])
    with torch.no_grad():
        torch.testing.assert_close(blk(x)[0], _swin_twin(blk, shift)(x)[0], rtol=0, atol=0)
        other = _swin_twin(blk, 3 - shift)(x)[0]
    assert not torch.allclose(blk(x)[0], other, atol=1e-4)  # the rule matters at this size
    assert blk.shift == 3  # unchanged by the call


@pytest.mark.parametrize('hw', [(256, 256), (224, 160), (112, 112)])
def test_sizes_the_released_unfold_cannot_serve(hw):
    model = STViTR(**NARROW, drop_path_rate=0.0, stage3_form='classification')
    with pytest.raises(ValueError, match=r'stage-3 sides of 14 or 21 tokens \(input sides 209-224 or 321-336\)'):
        model(torch.randn(1, 3, *hw))


def test_unfold_fit_rule():
    fits = [n for n in range(1, 60) if unfold_grid_error(n, 14, WS, KERNEL, STRIDE) is None]
    assert fits == [14, 21]


def test_bad_arguments():
    with pytest.raises(ValueError, match='stage3_form must be one of'):
        STViTR(**NARROW, stage3_form='imagenet')
    with pytest.raises(ValueError, match="sparsifier='stvit'"):
        STViTR(**NARROW, stage3_form='classification', sparsifier='tokenlearner')
    with pytest.raises(ValueError, match='sparsify=True'):
        STViTR(**NARROW, stage3_form='classification', sparsify=False)
