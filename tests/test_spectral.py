"""FreeSpec (paper 000, METHODS.md §3): energy rank, Gram / randomized subspaces against the
exact SVD, the fusion's defining property, the coordinator path fusion and the attention patch."""

from __future__ import annotations

import pytest
import torch

from longvid_dist.methods.lse_attention import banded_attention
from longvid_dist.models.hooks import AttnContext, sdpa
from longvid_dist.methods.spectral import (FreeSpecAttention, energy_rank, freespec_fuse,
                                           freespec_fuse_paths, subspace_distance, top_left_subspace,
                                           top_right_subspace)


def known_spectrum(n: int, c: int, s: torch.Tensor, seed: int = 0, dtype=torch.float64):
    """``M = U diag(s) V^T`` with random orthonormal ``U [n, r]``, ``V [c, r]``; returns (M, V)."""
    g = torch.Generator().manual_seed(seed)
    r = len(s)
    u = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(c, r, generator=g, dtype=torch.float64)).Q
    return ((u * s.to(torch.float64)) @ v.mT).to(dtype), v


def gapped(c: int, k: int) -> torch.Tensor:
    """Top k singular values 10..5, then a clear gap down to a decaying tail from 1."""
    top = torch.linspace(10, 5, k, dtype=torch.float64)
    tail = 0.8 ** torch.arange(c - k, dtype=torch.float64)
    return torch.cat([top, tail])


def exact_v(m: torch.Tensor, k: int) -> torch.Tensor:
    return torch.linalg.svd(m.to(torch.float64), full_matrices=False).Vh[:k].mT


# --- energy_rank -------------------------------------------------------------------------

def test_energy_rank_edge_cases():
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1, 0 of 14
    assert energy_rank(s, 0.0) == 0
    assert energy_rank(s, 1.0) == 3  # all nonzero singular values
    assert energy_rank(s, 9 / 14) == 1  # exactly on a boundary: >= holds
    assert energy_rank(s, 9 / 14 + 1e-6) == 2
    assert energy_rank(s, 13 / 14) == 2
    assert energy_rank(s, 0.99) == 3
    assert energy_rank(s.flip(0), 0.5) == 1  # unsorted input is sorted
    assert energy_rank(torch.zeros(5), 0.9) == 0
    assert energy_rank(torch.ones(4), 0.5) == 2
    assert energy_rank(torch.tensor([1.0]), 1e-9) == 1
    with pytest.raises(ValueError):
        energy_rank(s, 1.5)


# --- subspaces ---------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 7, 20])
def test_gram_subspace_matches_exact_svd(k):
    m, v_true = known_spectrum(600, 64, gapped(64, k))
    v = top_right_subspace(m, k=k, method="gram")
    assert v.shape == (64, k)
    assert torch.allclose(v.mT @ v, torch.eye(k, dtype=v.dtype), atol=1e-10)
    assert subspace_distance(v, exact_v(m, k)) < 1e-6
    assert subspace_distance(v, v_true[:, :k]) < 1e-6
    assert subspace_distance(top_right_subspace(m, k=k, method="exact"), exact_v(m, k)) < 1e-6


def test_gram_subspace_float32_input():
    m, _ = known_spectrum(5000, 96, gapped(96, 12), dtype=torch.float32)  # > one Gram chunk
    v = top_right_subspace(m, k=12)
    assert v.dtype == torch.float32
    assert subspace_distance(v, exact_v(m, 12)) < 1e-5  # fp32 round-off of V itself


def test_subspace_tau_picks_the_energy_rank():
    s = gapped(64, 7)
    m, v_true = known_spectrum(500, 64, s)
    k = energy_rank(s, 0.9)
    for method in ("gram", "randomized", "exact"):
        v = top_right_subspace(m, tau=0.9, method=method)
        assert v.shape[1] == k, method
        assert subspace_distance(v, v_true[:, :k]) < 1e-3, method


@pytest.mark.parametrize("k", [3, 16])
def test_randomized_subspace_matches_exact_svd(k):
    m, _ = known_spectrum(2000, 256, gapped(256, k), seed=1, dtype=torch.float32)
    v = top_right_subspace(m, k=k, method="randomized", seed=3)
    assert v.shape == (256, k)
    assert subspace_distance(v, exact_v(m, k)) < 1e-3


def test_randomized_tau_grows_the_sketch():
    # 50 leading values 10..9, then a gap to a tail from 1; tau puts the energy rank at 50,
    # more than the first sketch holds (32 + oversampling), so the sketch must grow.
    s = torch.cat([torch.linspace(10, 9, 50, dtype=torch.float64), 0.98 ** torch.arange(150, dtype=torch.float64)])
    cum = torch.cumsum(s * s, 0)
    tau = float((cum[49] - 0.5 * s[49] ** 2) / cum[-1])
    m, v_true = known_spectrum(800, 200, s, seed=2)
    assert energy_rank(s, tau) == 50
    v = top_right_subspace(m, tau=tau, method="randomized")
    assert v.shape[1] == 50
    assert subspace_distance(v, v_true[:, :50]) < 1e-3


def test_randomized_is_deterministic_per_seed():
    m, _ = known_spectrum(700, 80, 0.9 ** torch.arange(80, dtype=torch.float64), dtype=torch.float32)
    a = top_right_subspace(m, tau=0.9, method="randomized", seed=5)
    b = top_right_subspace(m, tau=0.9, method="randomized", seed=5)
    assert torch.equal(a, b)
    m, _ = known_spectrum(700, 80, gapped(80, 6), dtype=torch.float32)
    c = top_right_subspace(m, k=6, method="randomized", seed=6)
    d = top_right_subspace(m, k=6, method="randomized", seed=7)
    assert not torch.equal(c, d)  # another seed, another sketch (same subspace within tolerance)
    assert subspace_distance(c, d) < 1e-3


def test_left_subspace_is_right_subspace_of_transpose():
    s = gapped(12, 4)
    mt, u_true = known_spectrum(300, 12, s, seed=4)  # [300, 12] = U S V^T; M = mt^T is [12, 300]
    m = mt.mT
    u = top_left_subspace(m, k=4)
    assert u.shape == (12, 4)
    assert subspace_distance(u, u_true[:, :4]) < 1e-6
    assert top_left_subspace(m, tau=0.9).shape[1] == energy_rank(s, 0.9)


def test_bad_arguments():
    m = torch.randn(10, 4)
    with pytest.raises(ValueError):
        top_right_subspace(m)
    with pytest.raises(ValueError):
        top_right_subspace(m, k=2, method="svd")
    with pytest.raises(ValueError):
        top_right_subspace(m, tau=1.2, method="randomized")
    with pytest.raises(ValueError):
        freespec_fuse(m, torch.randn(10, 5))


# --- feature-level fusion ------------------------------------------------------------------

def _branches(n=400, c=48, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    gm, _ = known_spectrum(n, c, gapped(c, 5), seed=seed, dtype=dtype)
    return gm, torch.randn(n, c, generator=g, dtype=dtype)


def test_fuse_tau_one_is_global_k_zero_is_local():
    g, l = _branches()
    assert torch.allclose(freespec_fuse(g, l, tau=1.0), g, atol=1e-10)
    assert torch.equal(freespec_fuse(g, l, k=0), l)
    assert torch.equal(freespec_fuse(g, l, tau=0.0), l)
    g32, l32 = g.float(), l.float()
    assert torch.allclose(freespec_fuse(g32, l32, tau=1.0), g32, atol=1e-4)
    assert torch.equal(freespec_fuse(g32, l32, k=0), l32)


@pytest.mark.parametrize("method", ["gram", "randomized", "exact"])
def test_fuse_defining_property(method):
    g, l = _branches(seed=3)
    k = energy_rank(torch.linalg.svdvals(g), 0.9)
    out = freespec_fuse(g, l, tau=0.9, method=method)
    v = top_right_subspace(g, k=k, method="exact")
    p = v @ v.mT
    eye = torch.eye(g.shape[1], dtype=g.dtype)
    assert torch.allclose(out @ p, g @ p, atol=1e-8 if method != "randomized" else 1e-5)
    assert torch.allclose(out @ (eye - p), l @ (eye - p), atol=1e-8 if method != "randomized" else 1e-5)
    # and it is the spec's formula
    ref = g @ p + l @ (eye - p)
    assert torch.allclose(out, ref, atol=1e-8 if method != "randomized" else 1e-5)


def test_fuse_dtypes():
    g, l = _branches(dtype=torch.float32)
    out = freespec_fuse(g.bfloat16(), l.bfloat16(), tau=0.9)
    assert out.dtype == torch.bfloat16 and out.shape == g.shape
    assert freespec_fuse(g, l, tau=0.9).dtype == torch.float32


# --- coordinator path fusion -------------------------------------------------------------

def _paths(c=4, f=9, h=3, w=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(c, 1, h, w, generator=g)
    yg = base + 0.3 * torch.randn(c, f, h, w, generator=g)  # one dominant frame direction
    yl = torch.randn(c, f, h, w, generator=g)
    return yg, yl


def test_fuse_paths_shape_dtype_and_limits():
    yg, yl = _paths()
    out = freespec_fuse_paths(yg, yl)
    assert out.shape == yg.shape and out.dtype == torch.float32
    assert torch.equal(freespec_fuse_paths(yg, yl, k=0), yl)
    assert torch.allclose(freespec_fuse_paths(yg, yl, tau=1.0), yg, atol=1e-5)
    assert torch.allclose(freespec_fuse_paths(yg, yl, k=yg.shape[1]), yg, atol=1e-5)
    out16 = freespec_fuse_paths(yg.bfloat16(), yl.bfloat16())
    assert out16.dtype == torch.float32


def test_fuse_paths_defining_property():
    yg, yl = _paths(seed=1)
    yg, yl = yg.double(), yl.double()
    c, f, h, w = yg.shape
    mg = yg.permute(1, 0, 2, 3).reshape(f, -1)
    ml = yl.permute(1, 0, 2, 3).reshape(f, -1)
    k = energy_rank(torch.linalg.svdvals(mg), 0.9)
    assert 0 < k < f
    u = torch.linalg.svd(mg, full_matrices=False).U[:, :k]
    p = u @ u.mT
    out = freespec_fuse_paths(yg, yl, tau=0.9)
    mo = out.permute(1, 0, 2, 3).reshape(f, -1)
    eye = torch.eye(f, dtype=p.dtype)
    assert torch.allclose(p @ mo, p @ mg, atol=1e-9)
    assert torch.allclose((eye - p) @ mo, (eye - p) @ ml, atol=1e-9)


# --- attention patch -----------------------------------------------------------------------

def _qkv(frames=12, hw=(2, 3), heads=2, dim=8, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = frames * hw[0] * hw[1]
    return [torch.randn(batch, s, heads, dim, generator=g) for _ in range(3)], AttnContext(grid=(frames, *hw))


def test_freespec_attention_limits():
    (q, k, v), ctx = _qkv()
    glob = sdpa(q, k, v)
    loc = banded_attention(q, k, v, ctx.tokens_per_frame, 2)
    assert not torch.allclose(glob, loc, atol=1e-3)
    assert torch.allclose(FreeSpecAttention(tau=1.0, band=2).attend(q, k, v, ctx), glob, atol=1e-5)
    assert torch.equal(FreeSpecAttention(k=0, band=2).attend(q, k, v, ctx), loc)
    mid = FreeSpecAttention(tau=0.9, band=2).attend(q, k, v, ctx)
    assert mid.shape == q.shape and mid.dtype == q.dtype
    b, s, nh, d = glob.shape
    ref = freespec_fuse(glob[1].reshape(s, nh * d), loc[1].reshape(s, nh * d), 0.9)
    assert torch.allclose(mid[1], ref.reshape(s, nh, d), atol=1e-6)
    assert FreeSpecAttention().name == "freespec"


def test_freespec_attention_band_covers_window_returns_global():
    (q, k, v), ctx = _qkv(frames=5)
    assert torch.equal(FreeSpecAttention(band=4, k=0).attend(q, k, v, ctx), sdpa(q, k, v))
