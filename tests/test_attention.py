"""Attention and RoPE patches on the real tiny Wan transformer: formulas and identities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from longvid_dist.models.hooks import AttnContext, sdpa
from longvid_dist.methods.attention import ABAM, SpectralBlend
from longvid_dist.methods.lse_attention import banded_attention
from longvid_dist.methods.noise import lowpass_filter
from longvid_dist.methods.rope import riflex, riflex_index
from longvid_dist.models.hooks import rope_frequencies


@pytest.fixture()
def adapter(tiny_adapter):
    yield tiny_adapter
    tiny_adapter.install(None, None)  # leave the session replica stock for other tests


@pytest.fixture(scope="module")
def inputs(tiny_adapter):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 12, 8, 8, generator=g)
    cond = tiny_adapter.encode_prompt("a cat runs", "blurry", 5.0)
    return x, torch.tensor(700.0), cond


def _stock(adapter, x, t, cond):
    adapter.install(None, None)
    return adapter.predict(x, t, cond)


def test_patch_disabled_is_bit_identical_to_stock(adapter, inputs):
    x, t, cond = inputs
    ref = _stock(adapter, x, t, cond)
    adapter.install(ABAM(lam=0.5), None)
    adapter.install(None, None)
    assert torch.equal(adapter.predict(x, t, cond), ref)


def test_abam_lambda_one_equals_stock(adapter, inputs):
    x, t, cond = inputs
    ref = _stock(adapter, x, t, cond)
    adapter.install(ABAM(lam=1.0), None)
    adapter.begin_step()
    anchor = adapter.predict(x, t, cond, role="anchor", anchor_key="a")
    follow = adapter.predict(x.flip(1), t, cond, role="follow", anchor_key="a")
    assert torch.equal(anchor, ref)
    assert torch.equal(follow, _stock(adapter, x.flip(1), t, cond))


def test_abam_mixes_anchor_keys_values_per_layer_and_branch(adapter, inputs):
    x, t, cond = inputs
    y = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    adapter.install(ABAM(lam=0.1), None)
    adapter.begin_step()
    adapter.predict(x, t, cond, role="anchor", anchor_key="a")
    store = adapter.ctx.store
    layers = len(adapter.transformer.blocks)
    assert set(store) == {("a", i, b) for i in range(layers) for b in ("cond", "uncond")}
    follow = adapter.predict(y, t, cond, role="follow", anchor_key="a")
    assert not torch.allclose(follow, _stock(adapter, y, t, cond))
    # lam = 0 with the anchor's own input reproduces the anchor's prediction
    adapter.install(ABAM(lam=0.0), None)
    adapter.begin_step()
    a = adapter.predict(x, t, cond, role="anchor", anchor_key="a")
    assert torch.allclose(adapter.predict(x, t, cond, role="follow", anchor_key="a"), a, atol=1e-6)


def test_abam_formula_on_tensors():
    g = torch.Generator().manual_seed(2)
    q, k, v, ka, va = (torch.randn(1, 32, 2, 8, generator=g) for _ in range(5))
    ctx = AttnContext(store={("a", 0, "cond"): (ka, va)}, role="follow", anchor_key="a")
    out = ABAM(lam=0.3).attend(q, k, v, ctx)
    assert torch.allclose(out, sdpa(q, 0.3 * k + 0.7 * ka, 0.3 * v + 0.7 * va), atol=1e-6)


def test_banded_attention_equals_dense_masked():
    g = torch.Generator().manual_seed(3)
    tpf, frames, band = 6, 10, 2
    q, k, v = (torch.randn(2, frames * tpf, 3, 8, generator=g) for _ in range(3))
    fi = torch.arange(frames * tpf) // tpf
    mask = (fi.view(-1, 1) - fi.view(1, -1)).abs() <= band  # [S, S] boolean, True = attend
    assert torch.allclose(banded_attention(q, k, v, tpf, band), sdpa(q, k, v, mask), atol=1e-5)


def test_freelong_lowpass_one_is_global_and_zero_is_local():
    g = torch.Generator().manual_seed(4)
    grid = (12, 2, 3)
    q, k, v = (torch.randn(1, 12 * 6, 2, 8, generator=g) for _ in range(3))
    ctx = AttnContext(grid=grid)
    assert torch.allclose(SpectralBlend(band=2, lowpass=1.0).attend(q, k, v, ctx), sdpa(q, k, v), atol=1e-5)
    assert torch.allclose(SpectralBlend(band=2, lowpass=0.0).attend(q, k, v, ctx),
                          banded_attention(q, k, v, 6, 2), atol=1e-5)
    mixed = SpectralBlend(band=2).attend(q, k, v, ctx)
    assert not torch.allclose(mixed, sdpa(q, k, v), atol=1e-3)


def test_gaussian_lowpass_properties():
    h = lowpass_filter(9, 8, 8, dtype=torch.float32)
    assert h[0, 0, 0] == 1 and bool((h > 0).all()) and bool((h <= 1).all())
    # symmetric under f -> -f (so the blend of real fields is real)
    assert torch.allclose(h, torch.roll(h.flip(0, 1, 2), shifts=(1, 1, 1), dims=(0, 1, 2)))
    # at the spatial cut-off (normalised frequency 0.25 of Nyquist) H = exp(-1/2)
    assert math.isclose(float(lowpass_filter(1, 8, 1, dtype=torch.float32)[0, 1, 0]), math.exp(-0.5), rel_tol=1e-6)


def test_freelong_on_the_model_with_identity_blend_is_close_to_stock(adapter, inputs):
    x, t, cond = inputs
    ref = _stock(adapter, x, t, cond)
    adapter.install(SpectralBlend(band=3, lowpass=1.0), None)
    assert torch.allclose(adapter.predict(x, t, cond), ref, atol=1e-4)
    adapter.install(SpectralBlend(band=3), None)
    assert not torch.allclose(adapter.predict(x, t, cond), ref, atol=1e-4)


def test_riflex_index_follows_the_rule():
    for dim, n in ((44, 21), (44, 81), (16, 13), (128, 31)):
        theta = rope_frequencies(dim)
        periods = [round(2 * math.pi * 10000 ** (2 * (j - 1) / dim)) for j in range(1, dim // 2 + 1)]
        expected = min(range(len(periods)), key=lambda j: abs(periods[j] - n))
        assert riflex_index(dim, n) == expected
        new = riflex(theta, n, 3 * n)
        changed = np.flatnonzero(new != theta)
        assert list(changed) == [expected]
        assert math.isclose(new[expected], 0.9 * 2 * math.pi / (3 * n))
    theta = rope_frequencies(44)
    assert np.array_equal(riflex(theta, 21, 10), theta)  # test length within the period: unchanged
    assert riflex(theta, 21, 63, k=3)[3] == pytest.approx(0.9 * 2 * math.pi / 63)


def test_riflex_changes_only_temporal_frequency_k(adapter):
    rope = adapter.transformer.rope
    adapter.install(None, None)
    cos0, sin0 = rope.freqs_cos.clone(), rope.freqs_sin.clone()
    t_dim = rope.t_dim
    k = riflex_index(t_dim, 21)
    adapter.install(None, lambda th: riflex(th, 21, 63))
    changed = torch.nonzero((rope.freqs_cos != cos0).any(0) | (rope.freqs_sin != sin0).any(0)).flatten().tolist()
    assert changed and set(changed) <= {2 * k, 2 * k + 1}
    pos = torch.arange(rope.max_seq_len, dtype=torch.float64)
    expect = torch.cos(pos * 0.9 * 2 * math.pi / 63).to(cos0.dtype)
    assert torch.equal(rope.freqs_cos[:, 2 * k], expect)
    adapter.install(None, None)
    assert torch.equal(rope.freqs_cos, cos0) and torch.equal(rope.freqs_sin, sin0)
