"""FreeLOC (VRPR, TSA, layer dispatch) as pure tensor functions: formulas and dense references."""

from __future__ import annotations

import math

import pytest
import torch

from longvid_dist.methods.lse_attention import attention_with_lse, lse_merge
from longvid_dist.models.hooks import AttentionPatch, AttnContext, sdpa
from longvid_dist.methods.freeloc import (BANDS, PUBLISHED_VRPR, WAN21_13B_PROFILE, FreeLOC,
                                          VRPRParams, band_of, band_positions, relative_distance_map, tsa_attention, tsa_default_ds, tsa_density,
                                          tsa_flex_attention, tsa_mask, vrpr_attention,
                                          vrpr_is_monotone, vrpr_params, vrpr_positions, vrpr_tsa_attention)


# ---------------------------------------------------------------------------------------
# helpers: an independent RoPE and independent position formulas
# ---------------------------------------------------------------------------------------

def make_rotate(grid, dim: int, base: float = 100.0):
    """A 3D RoPE on ``[B, S, H, dim]``: interleaved pairs, the first dim/2 channels temporal
    (position given per frame), then height and width (standard positions)."""
    f, h, w = grid
    dt, dh = dim // 2, dim // 4
    dw = dim - dt - dh

    def theta(n):
        return base ** (-torch.arange(0, n, 2, dtype=torch.float64) / n)

    hh = torch.arange(h).repeat_interleave(w).repeat(f).double()
    ww = torch.arange(w).repeat(h * f).double()

    def rotate(x, frame_pos):
        tt = frame_pos.double().repeat_interleave(h * w)  # [S]
        ang = torch.cat([tt[:, None] * theta(dt), hh[:, None] * theta(dh), ww[:, None] * theta(dw)], 1)
        cos, sin = ang.cos()[None, :, None], ang.sin()[None, :, None]  # [1, S, 1, dim/2]
        x1, x2 = x.double().unflatten(-1, (-1, 2)).unbind(-1)
        out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)
        return out.to(x.dtype)

    return rotate


def methods_positions(i, j, W1, W2, G1, G2, clip):
    """METHODS.md §3 as written (key before the query), mirrored for keys after it."""
    if abs(i - j) <= W1:
        return i, j
    if j > i:  # mirror: rel(i, j) = -rel(j, i), the shifted side is the key
        kq, qk = methods_positions(j, i, W1, W2, G1, G2, clip)
        return qk, kq
    if i - j <= W2:
        return math.floor(i / G1) + W1 - W1 // G1, math.floor(j / G1)
    q = math.floor(i / G2) + W2 - math.floor(W2 / G2) - math.floor((W2 - W1) / G1)
    return min(q, clip), math.floor(j / G2)


def rand_qkv(grid, b=1, h=2, d=16, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = grid[0] * grid[1] * grid[2]
    return [torch.randn(b, s, h, d, generator=g, dtype=torch.float64).to(dtype) for _ in range(3)]


def dense_pair_reference(q, k, v, grid, rotate, pos_fn, mask=None):
    """Softmax attention whose score for (query frame i, key frame j) uses
    ``rot(q_i, qp) . rot(k_j, kp)`` with ``(qp, kp) = pos_fn(i, j)``, built pair by pair."""
    f, h, w = grid
    t = h * w
    cache = {}

    def rot(x, name, p):
        if (name, p) not in cache:
            cache[(name, p)] = rotate(x, torch.full((f,), p, dtype=torch.long)).double()
        return cache[(name, p)]

    b, s, nh, d = q.shape
    scores = torch.empty(b, nh, s, s, dtype=torch.float64)
    for i in range(f):
        for j in range(f):
            qp, kp = pos_fn(i, j)
            qi = rot(q, "q", qp)[:, i * t:(i + 1) * t]
            kj = rot(k, "k", kp)[:, j * t:(j + 1) * t]
            scores[:, :, i * t:(i + 1) * t, j * t:(j + 1) * t] = torch.einsum("bqhd,bkhd->bhqk", qi, kj) / math.sqrt(d)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1) @ v.double().transpose(1, 2)).transpose(1, 2)


# ---------------------------------------------------------------------------------------
# VRPR positions and parameters
# ---------------------------------------------------------------------------------------

def test_published_points_and_hand_computed_positions():
    assert vrpr_params(41) == VRPRParams(W1=12, W2=20, G1=2, G2=8, clip=20) == PUBLISHED_VRPR[41]
    assert vrpr_params(81) == VRPRParams(W1=10, W2=14, G1=2, G2=8, clip=20) == PUBLISHED_VRPR[81]
    p41, p81 = PUBLISHED_VRPR[41], PUBLISHED_VRPR[81]
    assert vrpr_positions(30, 20, p41) == (30, 20)  # exact band
    assert vrpr_positions(20, 5, p41) == (16, 2)  # mid: 20//2 + 12 - 6, 5//2 -> distance 14
    assert vrpr_positions(5, 20, p41) == (2, 16)  # mirrored for a key after the query
    assert vrpr_positions(40, 0, p41) == (19, 0)  # far: 40//8 + 20 - 2 - 4
    assert vrpr_positions(80, 0, p81) == (20, 0)  # far: 80//8 + 14 - 1 - 2 = 21, clipped to 20
    assert vrpr_positions(0, 80, p81) == (0, 20)


@pytest.mark.parametrize("frames", [41, 81, 61])
def test_positions_match_methods_formulas(frames):
    p = vrpr_params(frames)
    pos = band_positions(frames, p)
    assert set(pos) == set(BANDS)
    rel = relative_distance_map(frames, p)
    for i in range(frames):
        for j in range(frames):
            want = methods_positions(i, j, p.W1, p.W2, p.G1, p.G2, p.clip)
            assert vrpr_positions(i, j, p) == want, (i, j)
            qp, kp = pos[band_of(i, j, p)]
            assert (int(qp[i]), int(kp[j])) == want, (i, j)  # query pos depends on i only, key pos on j only
            assert int(rel[i, j]) == want[0] - want[1]


def test_vrpr_params_rule_is_valid_for_22_to_200():
    for f in range(2, 22):  # up to the trained length: identity
        assert vrpr_params(f).is_identity(f)
        assert torch.equal(relative_distance_map(f, vrpr_params(f)), torch.arange(f)[:, None] - torch.arange(f))
    prev = None
    for f in range(22, 201):
        p = vrpr_params(f)
        assert 0 < p.W1 < p.W2 and p.W1 % p.G1 == 0 and (p.W2 - p.W1) % p.G1 == 0
        assert p.G1 >= 1 and p.G2 >= 8 and p.clip == 20
        rel = relative_distance_map(f, p)
        d = torch.arange(f)[:, None] - torch.arange(f)
        assert torch.equal(rel, -rel.T)
        assert torch.equal(torch.sign(rel), torch.sign(d))  # order kept
        assert int(rel.abs().max()) <= p.clip  # inside the trained range
        assert torch.equal(rel[d.abs() <= p.W1], d[d.abs() <= p.W1])  # exact band untouched
        assert bool((rel.abs()[d.abs() > p.W1] >= p.W1).all())
        assert vrpr_is_monotone(f, p)
        if prev is not None:  # W1, W2 never grow with the length, G2 never shrinks
            assert p.W1 <= prev.W1 and p.W2 <= prev.W2 and p.G2 >= prev.G2
        prev = p
    with pytest.raises(ValueError):
        VRPRParams(W1=5, W2=5)


# ---------------------------------------------------------------------------------------
# attention with log-sum-exp and the merge
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_attention_with_lse_matches_explicit_scores(dtype):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 9, 3, 8, generator=g).to(dtype)
    k = torch.randn(2, 13, 3, 8, generator=g).to(dtype)
    v = torch.randn(2, 13, 3, 8, generator=g).to(dtype)
    scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / math.sqrt(8)
    ref_out = (scores.softmax(-1) @ v.double().transpose(1, 2)).transpose(1, 2)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    out, lse = attention_with_lse(q, k, v)  # fused CPU kernel
    assert lse.shape == (2, 3, 9) and out.shape == q.shape
    torch.testing.assert_close(lse.double(), torch.logsumexp(scores, -1), atol=tol, rtol=tol)
    torch.testing.assert_close(out.double(), ref_out, atol=tol, rtol=tol)
    mask = torch.rand(9, 13, generator=g) > 0.4
    mask[3] = False  # a query that sees no key
    out, lse = attention_with_lse(q, k, v, mask, chunk=2)  # explicit, chunked
    ms = scores.masked_fill(~mask, float("-inf"))
    assert torch.isinf(lse[:, :, 3]).all() and (lse[:, :, 3] < 0).all()
    assert not out.isnan().any() and (out[:, 3] == 0).all()
    keep = torch.ones(9, dtype=torch.bool)
    keep[3] = False
    torch.testing.assert_close(lse[:, :, keep].double(), torch.logsumexp(ms, -1)[:, :, keep], atol=tol, rtol=tol)
    ref_m = (ms[:, :, keep].softmax(-1) @ v.double().transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(out[:, keep].double(), ref_m, atol=tol, rtol=tol)


def test_lse_merge_equals_one_softmax_over_the_union():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, n, 2, 8, generator=g) for n in (10, 24, 24))
    part = torch.randint(0, 3, (10, 24), generator=g)  # a key set per query, three disjoint parts
    part[4] = 0  # query 4 sees no key of parts 1 and 2
    part[7, :] = 2  # query 7 sees no key of parts 0 and 1
    outs, lses = zip(*(attention_with_lse(q, k, v, part == b) for b in range(3)))
    assert torch.isinf(lses[1][..., 4]).all() and torch.isinf(lses[0][..., 7]).all()
    merged, lse = lse_merge(list(outs), list(lses), return_lse=True)
    ref, ref_lse = attention_with_lse(q, k, v)
    torch.testing.assert_close(merged, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(merged, sdpa(q, k, v), atol=1e-5, rtol=1e-5)
    empty = torch.zeros(10, 24, dtype=torch.bool)  # no key at all: 0, not NaN
    o, l_ = attention_with_lse(q, k, v, empty)
    m = lse_merge([o, o], [l_, l_])
    assert not m.isnan().any() and (m == 0).all()


# ---------------------------------------------------------------------------------------
# VRPR attention
# ---------------------------------------------------------------------------------------

def test_vrpr_all_exact_is_plain_rotated_attention():
    grid = (6, 2, 2)
    q, k, v = rand_qkv(grid, dtype=torch.float32)
    rot = make_rotate(grid, 16)
    pos = torch.arange(6)
    out = vrpr_attention(q, k, v, grid, rot, VRPRParams(W1=5, W2=9, G1=2, G2=4, clip=10))
    torch.testing.assert_close(out, sdpa(rot(q, pos), rot(k, pos), v), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_vrpr_equals_dense_per_pair_reference(dtype, tol):
    grid = (30, 2, 2)
    p = VRPRParams(W1=3, W2=7, G1=2, G2=4, clip=10)
    q, k, v = rand_qkv(grid, dtype=dtype)
    rot = make_rotate(grid, 16)
    ref = dense_pair_reference(q, k, v, grid, rot,
                               lambda i, j: methods_positions(i, j, p.W1, p.W2, p.G1, p.G2, p.clip))
    out = vrpr_attention(q, k, v, grid, rot, p)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)
    pos = torch.arange(30)
    plain = sdpa(rot(q, pos), rot(k, pos), v)
    assert (plain.double() - ref).abs().max() > 1e-3  # the re-encoding does change the result


# ---------------------------------------------------------------------------------------
# TSA
# ---------------------------------------------------------------------------------------

def test_tsa_default_ds_follows_public_code():
    assert tsa_default_ds(1560, 8, 24) == 194  # |t - u| < 1560 // 8 = 195
    assert tsa_default_ds(4, 8, 24) == 0


@pytest.mark.parametrize("grid,D1,D2,Ds", [((20, 2, 3), 2, 6, 1), ((12, 4, 8), 2, 6, None), ((9, 2, 2), 8, 24, 0)])
def test_tsa_mask_properties_and_density(grid, D1, D2, Ds):
    f, h, w = grid
    t = h * w
    m = tsa_mask(grid, D1, D2, Ds)
    s = f * t
    assert m.shape == (s, s) and m.dtype == torch.bool
    fr = torch.arange(s) // t
    d = (fr[:, None] - fr[None]).abs()
    assert m[:, :t].all()  # sink column
    assert not m[(d > D2) & (fr[None] != 0)].any()  # nothing beyond D2 but the sink
    assert m[d <= D1].all()
    dense = int((m & (d <= D1)).sum()) / s ** 2
    sink = int((m & (d > D1) & (fr[None] == 0)).sum()) / s ** 2
    striped = int((m & (d > D1) & (d <= D2) & (fr[None] != 0)).sum()) / s ** 2
    total = int(m.sum()) / s ** 2
    assert dense + sink + striped == pytest.approx(total, abs=1e-12)  # the tiers are disjoint
    dens = tsa_density(grid, D1, D2, Ds)
    for name, val in (("dense", dense), ("sink", sink), ("striped", striped), ("total", total)):
        assert dens[name] == pytest.approx(val, abs=1e-12), name


@pytest.mark.parametrize("grid,D1,D2,Ds", [((20, 2, 3), 2, 6, 1), ((12, 4, 8), 2, 6, None)])
def test_tsa_attention_equals_dense_masked(grid, D1, D2, Ds):
    q, k, v = rand_qkv(grid, dtype=torch.float32, seed=3)
    ref = sdpa(q, k, v, tsa_mask(grid, D1, D2, Ds))
    torch.testing.assert_close(tsa_attention(q, k, v, grid, D1, D2, Ds), ref, atol=1e-5, rtol=1e-5)


def test_tsa_flex_equals_dense_masked():
    grid, D1, D2, Ds = (20, 2, 3), 2, 6, 1
    q, k, v = rand_qkv(grid, dtype=torch.float32, seed=4)
    ref = sdpa(q, k, v, tsa_mask(grid, D1, D2, Ds))
    out = tsa_flex_attention(q, k, v, grid, D1, D2, Ds)  # eager flex attention on CPU
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tsa_flex_attention(q, k, v, grid, D1, D2, Ds), ref, atol=1e-5, rtol=1e-5)  # cached mask


# ---------------------------------------------------------------------------------------
# VRPR + TSA and the patches
# ---------------------------------------------------------------------------------------

def test_vrpr_tsa_equals_dense_reference():
    grid = (30, 2, 3)
    p = VRPRParams(W1=3, W2=7, G1=2, G2=4, clip=10)
    D1, D2, Ds = 2, 9, 1  # striped frames straddle the exact, mid and far bands
    q, k, v = rand_qkv(grid, seed=5)
    rot = make_rotate(grid, 16)
    ref = dense_pair_reference(q, k, v, grid, rot,
                               lambda i, j: methods_positions(i, j, p.W1, p.W2, p.G1, p.G2, p.clip),
                               mask=tsa_mask(grid, D1, D2, Ds))
    out = vrpr_tsa_attention(q, k, v, grid, rot, p, D1, D2, Ds)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    out32 = vrpr_tsa_attention(*(x.float() for x in (q, k, v)), grid, rot, p, D1, D2, Ds)
    torch.testing.assert_close(out32.double(), ref, atol=1e-5, rtol=1e-5)


def test_patches_dispatch_per_layer():
    grid = (24, 2, 2)
    q, k, v = rand_qkv(grid, dtype=torch.float32, seed=6)
    rot = make_rotate(grid, 16)
    ctx = AttnContext(grid=grid)
    ctx.rotate = rot
    p = VRPRParams(W1=4, W2=8, G1=2, G2=4, clip=10)
    pos = torch.arange(24)
    plain = sdpa(rot(q, pos), rot(k, pos), v)
    fl = FreeLOC(profile={"0": "vrpr", 1: "vrpr+tsa", 3: "tsa"}, params=p, D1=2, D2=6, Ds=1)
    assert isinstance(fl, AttentionPatch) and fl.raw_qk and fl.wants_raw(0)
    ctx.layer = 0
    torch.testing.assert_close(fl.attend(q, k, v, ctx), vrpr_attention(q, k, v, grid, rot, p))
    ctx.layer = 1
    torch.testing.assert_close(fl.attend(q, k, v, ctx), vrpr_tsa_attention(q, k, v, grid, rot, p, 2, 6, 1))
    ctx.layer = 3
    torch.testing.assert_close(fl.attend(q, k, v, ctx), tsa_attention(rot(q, pos), rot(k, pos), v, grid, 2, 6, 1))
    ctx.layer = 2  # not in the profile: plain attention with standard positions
    torch.testing.assert_close(fl.attend(q, k, v, ctx), plain)
    ctx.layer = 0
    torch.testing.assert_close(FreeLOC(profile={0: "vrpr"}).attend(q, k, v, ctx),  # params from the window length
                               vrpr_attention(q, k, v, grid, rot, vrpr_params(24)))
    with pytest.raises(ValueError):
        FreeLOC(profile={0: "bogus"})
    with pytest.raises(RuntimeError):
        FreeLOC(profile={0: "vrpr"}, params=p).attend(q, k, v, AttnContext(grid=grid))


def test_published_wan_profile():
    tsa = [layer for layer, m in WAN21_13B_PROFILE.items() if m == "vrpr+tsa"]
    assert sorted(WAN21_13B_PROFILE) == list(range(30))
    assert tsa == [0, 1, 4, 6, 7, 9, 10, 11, 13, 14, 15, 16, 18, 22, 23, 24, 25]
    assert all(m == "vrpr" for layer, m in WAN21_13B_PROFILE.items() if layer not in tsa)
    assert FreeLOC().profile == WAN21_13B_PROFILE


def test_on_the_tiny_wan_adapter(tiny_adapter):
    """Through the real adapter's ``ctx.rotate``: standard positions reproduce stock exactly."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 12, 8, 8, generator=g)
    cond = tiny_adapter.encode_prompt("a cat runs", "blurry", 5.0)
    t = torch.tensor(700.0)
    try:
        tiny_adapter.install(None, None)
        ref = tiny_adapter.predict(x, t, cond)
        tiny_adapter.install(FreeLOC(profile={}), None)  # every layer: plain attention, rotated here
        assert torch.equal(tiny_adapter.predict(x, t, cond), ref)
        n = len(tiny_adapter.transformer.blocks)
        all_vrpr = FreeLOC(profile={i: "vrpr" for i in range(n)}, params=VRPRParams(W1=11, W2=13))
        tiny_adapter.install(all_vrpr, None)  # 12 latent frames: all exact
        assert torch.equal(tiny_adapter.predict(x, t, cond), ref)
        patch = FreeLOC(profile={i: ("vrpr+tsa" if i % 2 else "vrpr") for i in range(n)},
                        params=VRPRParams(W1=2, W2=5, G1=2, G2=4, clip=8), D1=2, D2=6)
        tiny_adapter.install(patch, None)
        out = tiny_adapter.predict(x, t, cond)
        assert out.shape == ref.shape and torch.isfinite(out).all() and not torch.equal(out, ref)
    finally:
        tiny_adapter.install(None, None)
