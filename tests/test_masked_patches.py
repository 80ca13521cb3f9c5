"""Attention patches under the model's own mask (``AttnContext.mask``: diffusion forcing's
block-causal mask): every patch that computes attention itself either honours it -- equal to an
explicit masked reference, and to the stock masked forward where it reduces to plain attention --
or is refused with a block-causal plan before anything runs."""

from __future__ import annotations

import pytest
import torch

from longvid_dist import RenderSpec
from longvid_dist.config import SpecError
from longvid_dist.methods.attention import ABAM, SpectralBlend
from longvid_dist.methods.freeloc import FreeLOC, VRPRParams, tsa_mask
from longvid_dist.methods.probe import LayerProbe
from longvid_dist.methods.recipes import RecipeError, recipe_from_dict
from longvid_dist.methods.spectral import FreeSpecAttention
from longvid_dist.models.hooks import AttentionPatch, AttnContext, sdpa, token_mask
from longvid_dist.models.kvcache import KVCache

from .test_freeloc import dense_pair_reference, make_rotate, methods_positions, rand_qkv

GRID, BLOCK = (12, 2, 2), 3


def block_causal(frames: int, block: int) -> torch.Tensor:
    """``[F, F]``: query frame i sees key frame j iff j's block is not after i's (SkyReels-V2's mask)."""
    b = torch.arange(frames) // block
    return b.view(1, -1) <= b.view(-1, 1)


def masked_ctx(grid=GRID, block=BLOCK, rotate=None) -> AttnContext:
    tm = token_mask(block_causal(grid[0], block), grid[1] * grid[2])
    return AttnContext(grid=grid, mask=tm[None, None], rotate=rotate)  # [1, 1, S, S], as the model passes it


def test_frame_mask_reads_the_models_mask():
    ctx = masked_ctx()
    assert torch.equal(ctx.frame_mask(), block_causal(GRID[0], BLOCK))
    assert AttnContext(grid=GRID).frame_mask() is None
    bad = ctx.mask.clone()
    bad[..., 0, -1] = True  # one token of frame 0 sees the last frame: not frame-level
    with pytest.raises(ValueError):
        AttnContext(grid=GRID, mask=bad).frame_mask()


@pytest.mark.parametrize("mode", ["vrpr", "vrpr+tsa", "tsa", "none"])
def test_freeloc_honours_a_block_causal_mask(mode):
    """Each FreeLOC mode under the mask equals the dense per-pair reference with its own sparsity
    and the model's mask both applied."""
    q, k, v = rand_qkv(GRID, seed=11)
    rot = make_rotate(GRID, 16)
    p = VRPRParams(W1=2, W2=5, G1=2, G2=3, clip=8)  # every band occurs in 12 frames
    D1, D2, Ds = 2, 6, 1
    ctx = masked_ctx(rotate=rot)
    tm = ctx.mask[0, 0]
    if mode in ("vrpr", "vrpr+tsa"):
        pos_fn = lambda i, j: methods_positions(i, j, p.W1, p.W2, p.G1, p.G2, p.clip)  # noqa: E731
    else:
        pos_fn = lambda i, j: (i, j)  # noqa: E731
    mask = tm & tsa_mask(GRID, D1, D2, Ds) if "tsa" in mode else tm
    ref = dense_pair_reference(q, k, v, GRID, rot, pos_fn, mask=mask)
    out = FreeLOC(profile={0: mode}, params=p, D1=D1, D2=D2, Ds=Ds).attend(q, k, v, ctx)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    unmasked = FreeLOC(profile={0: mode}, params=p, D1=D1, D2=D2, Ds=Ds).attend(q, k, v, AttnContext(
        grid=GRID, rotate=rot))
    assert not torch.allclose(out, unmasked)  # the mask is in effect


def test_abam_honours_a_block_causal_mask():
    q, k, v = rand_qkv(GRID, seed=12)
    ka, va = rand_qkv(GRID, seed=13)[1:]
    ctx = masked_ctx()
    ctx.role, ctx.anchor_key = "follow", "a"
    ctx.store[("a", 0, "cond")] = (ka, va)
    lam = 0.3
    ref = sdpa(q, lam * k + (1 - lam) * ka, lam * v + (1 - lam) * va, ctx.mask)
    torch.testing.assert_close(ABAM(lam=lam).attend(q, k, v, ctx), ref)


def test_probe_output_honours_the_mask():
    q, k, v = rand_qkv(GRID, dtype=torch.float32, seed=14)
    rot = make_rotate(GRID, 16)
    ctx = masked_ctx(rotate=rot)
    ctx.branch = "uncond"  # no metrics: only the output
    pos = torch.arange(GRID[0]) + 40
    torch.testing.assert_close(LayerProbe().attend(q, k, v, ctx), sdpa(rot(q, pos), rot(k, pos), v, ctx.mask))


def test_kv_cache_applies_the_mask_to_the_blocks_own_keys():
    """Cached keys stay visible to every query of the block; its own keys follow the model's mask."""
    g = (4, 2, 2)
    rot = make_rotate(g, 16)
    (q0, k0, v0), (q1, k1, v1) = rand_qkv(g, dtype=torch.float32, seed=15), rand_qkv(g, dtype=torch.float32, seed=16)
    cache = KVCache(sink=0, window=8)
    ctx = masked_ctx(g, 2, rot)
    cache.offset, cache.write = 0, True
    p0 = torch.arange(4)
    torch.testing.assert_close(cache.attend(q0, k0, v0, ctx), sdpa(rot(q0, p0), rot(k0, p0), v0, ctx.mask))
    cache.offset, cache.write = 4, False
    p1 = torch.arange(4, 8)
    m = torch.cat([torch.ones(16, 16, dtype=torch.bool), ctx.mask[0, 0]], 1)
    ref = sdpa(rot(q1, p1), torch.cat([rot(k0, p0), rot(k1, p1)], 1), torch.cat([v0, v1], 1), m)
    torch.testing.assert_close(cache.attend(q1, k1, v1, ctx), ref)


@pytest.fixture(scope="module")
def df_adapter():
    from longvid_dist.models.skyreels import SkyReelsDFAdapter
    from longvid_dist.models.tiny import tiny_model_path

    return SkyReelsDFAdapter.load(str(tiny_model_path("tiny-skyreels-df")))


def test_plain_at_defaults_patches_equal_the_stock_masked_forward(df_adapter):
    """On the SkyReels-V2 DF model with a block-causal mask: patches that reduce to plain attention
    (the base class, ABAM at lam = 1, FreeLOC with standard positions or an identity VRPR) give
    the stock masked forward."""
    ad = df_adapter
    g = torch.Generator().manual_seed(0)
    c = ad.transformer.config.in_channels
    x = torch.randn(c, 6, 4, 4, generator=g)
    t = torch.tensor([0, 0, 500, 500, 900, 900])
    cond = ad.encode_prompt("a cat", "blurry", 5.0)
    n = ad.num_layers
    try:
        ad.install(None, None)
        stock = ad.predict(x, t, cond, causal_block=2)
        assert not torch.allclose(stock, ad.predict(x, t, cond))  # the mask matters here
        for patch in (AttentionPatch(), ABAM(lam=1.0), FreeLOC(profile={}),
                      FreeLOC(profile={i: "vrpr" for i in range(n)}, params=VRPRParams(W1=5, W2=7))):
            ad.install(patch, None)
            torch.testing.assert_close(ad.predict(x, t, cond, causal_block=2), stock, atol=1e-6, rtol=1e-6)
    finally:
        ad.install(None, None)


@pytest.mark.parametrize("attention, key", [
    ("{kind: freelong}", "freelong"),
    ("{kind: freespec}", "freespec"),
    ("{kind: abam}", "abam"),  # no anchor windows in a chunked plan
])
def test_patches_that_cannot_honour_the_mask_are_refused(tmp_path, attention, key):
    plan = "{kind: diffusion_forcing, base_num_frames: 17, overlap_history: 9, causal_block_size: 5}"
    path = tmp_path / "r.yaml"
    path.write_text(f"plan: {plan}\nattention: {attention}\n")
    with pytest.raises((SpecError, ValueError)) as e:
        RenderSpec(prompt="a cat", model="tiny-skyreels-df", recipe=str(path), frames=41, out=str(tmp_path / "v.mp4"))
    assert key in str(e.value) and "attention" in str(e.value) and "\n" not in str(e.value)
    assert not list(tmp_path.glob("v.mp4*"))


def test_spectral_patches_run_with_full_attention_forcing_and_guard_a_mask():
    """Without a block-causal mask (causal_block_size 1) FreeLong and FreeSpec stay allowed with
    diffusion forcing; handed a mask directly they refuse it."""
    for kind in ("freelong", "freespec"):
        recipe_from_dict({"plan": {"kind": "diffusion_forcing", "causal_block_size": 1}, "attention": {"kind": kind}})
    with pytest.raises(RecipeError):
        recipe_from_dict({"plan": {"kind": "diffusion_forcing", "causal_block_size": 2},
                          "attention": {"kind": "freelong"}})
    q, k, v = rand_qkv(GRID, dtype=torch.float32, seed=17)
    for patch in (SpectralBlend(band=2), FreeSpecAttention(band=2)):
        with pytest.raises(ValueError, match=patch.name):
            patch.attend(q, k, v, masked_ctx())
