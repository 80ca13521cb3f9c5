"""FreeLOC (Tian et al., CVPR 2026, "Free-Lunch Long Video Generation via Layer-Adaptive O.O.D
Correction"): VRPR, TSA and their per-layer dispatch.

Pure tensor functions on ``[B, S, H, D]`` tensors (``S = frames * tokens_per_frame``,
frame-major, ``grid = (frames, h, w)``) plus the :class:`FreeLOC` patch (recipe kind ``freeloc``).
The generic log-sum-exp attention they build on is :mod:`.lse_attention`.

* **VRPR** (video-based relative position re-encoding): temporal RoPE positions are re-encoded
  per band of frame distance, so that every (query, key) frame pair gets a relative temporal
  distance inside the trained range. Each band is one attention call with its own rotated
  q/k; the bands' partial attentions are merged exactly by their log-sum-exp
  (:func:`~.lse_attention.lse_merge`), which equals one softmax over the union of the keys.
* **TSA** (tiered sparse attention): dense attention within ``D1`` frames, "striped"
  attention (same in-frame token index up to ``Ds``) for ``D1 < d <= D2``, the first frame as an
  attention sink for every query, nothing else.
* **Layer profile**: which layers get VRPR and which VRPR+TSA (:data:`WAN21_13B_PROFILE`,
  the shipped ones in :data:`PROFILE_DIR`, or one written by ``longvid probe``).
* **Length rule**: VRPR band parameters per window length (:func:`vrpr_params`).

:class:`FreeLOC` sets ``raw_qk = True``: the adapter passes unrotated q/k and a
``ctx.rotate(x, frame_positions)`` callback that applies the model's full 3D RoPE with the
given temporal position per frame (spatial positions unchanged).

Where this implementation departs from the public code (github.com/Westlake-AGI-Lab/FreeLOC,
``wan/modules/model.py`` and ``attention.py``), it follows ``METHODS.md`` §3 and the paper:

* Bands are defined on frame distance ``|i - j|`` (the public code thresholds the *token*
  distance ``|q_idx - kv_idx|`` rounded up to 128-token blocks, which cuts frames diagonally and
  leaves a sliver of keys at frame distance ~W1 in no band at all).
* TSA in VRPR+TSA layers: here every visible key frame gets the VRPR position of its band.
  The public code instead keeps *original* positions within ``D2`` and re-encodes only the
  sink beyond ``D2`` (with a separate ``rope_shift``: group 8, window 12), and also adds a
  hard-coded "last frames" sink for 81 latent frames; neither is in the paper.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..models.hooks import AttentionPatch, AttnContext, sdpa, token_mask
from .lse_attention import Rotate, compiled_flex_attention, frame_sparse_attention
from .registry import INT_OR_NULL, LAYERS, Param, register


# --------------------------------------------------------------------------------------
# VRPR parameters and positions
# --------------------------------------------------------------------------------------

TRAINED_LATENT_FRAMES = 21
"""Wan2.1's training length in latent frames (81 pixel frames); relative distances 0..20."""


@dataclass(frozen=True)
class VRPRParams:
    """VRPR band parameters (frame units, latent frames)."""

    W1: int
    """Exact band: pairs with ``|i - j| <= W1`` keep their original positions."""
    W2: int
    """Mid band: ``W1 < |i - j| <= W2`` is grouped by ``G1``; beyond ``W2`` the far band (G2)."""
    G1: int = 2
    """Group size of the mid band (frames that share one re-encoded position)."""
    G2: int = 8
    """Group size of the far band."""
    clip: int = 20
    """Largest re-encoded far-band position (the trained maximum relative distance, 20 for
    Wan2.1's 21 latent frames); applied to the shifted side's absolute position, as the
    public code does."""

    def __post_init__(self):
        if not (0 < self.W1 < self.W2):
            raise ValueError(f"VRPR needs 0 < W1 < W2, got W1={self.W1}, W2={self.W2}")
        if self.G1 < 1 or self.G2 < 1 or self.clip < 1:
            raise ValueError(f"VRPR needs G1, G2, clip >= 1, got G1={self.G1}, G2={self.G2}, clip={self.clip}")

    @property
    def mid_offset(self) -> int:
        """Shift of the mid band: ``W1 - floor(W1 / G1)`` (paper 003's formula)."""
        return self.W1 - self.W1 // self.G1

    @property
    def far_offset(self) -> int:
        """Shift of the far band: ``W2 - floor(W2 / G2) - floor((W2 - W1) / G1)``."""
        return self.W2 - self.W2 // self.G2 - (self.W2 - self.W1) // self.G1

    def is_identity(self, frames: int) -> bool:
        """True when every frame pair of a ``frames``-long window is in the exact band."""
        return frames - 1 <= self.W1


PUBLISHED_VRPR = {
    41: VRPRParams(W1=12, W2=20, G1=2, G2=8, clip=20),
    81: VRPRParams(W1=10, W2=14, G1=2, G2=8, clip=20),
}
"""The public Wan2.1-1.3B settings (``freeloc_config.json``, keyed by latent frames)."""


def _round_to(x: float, g: int) -> int:
    """``x`` rounded half-up to a multiple of ``g``."""
    return g * math.floor(x / g + 0.5)


@functools.lru_cache(maxsize=None)
def vrpr_params(latent_frames: int) -> VRPRParams:
    """VRPR parameters for a window of ``latent_frames`` latent frames (Wan2.1-1.3B).

    The public code only knows 41 and 81 latent frames (W1=12, W2=20 and W1=10, W2=14; G1=2,
    G2=8, clip 20) and refuses other lengths. The rule here reproduces both points exactly and
    extends them:

    * ``F <= 21`` (the trained length): identity -- ``W1 = clip = 20 >= F - 1``, every pair is
      in the exact band, nothing is re-encoded.
    * ``22 <= F <= 41``: the 41-frame setting (held constant below its published point).
    * ``41 <= F <= 81``: ``W1``, ``W2`` linearly interpolated in ``F`` between the two
      published points, each rounded half-up to a multiple of ``G1`` (= 2) so that the mid-band
      shift ``W1 - W1/G1`` is an integer, and kept ``W2 >= W1 + G1``.
    * ``F >= 81``: the 81-frame ``W1``, ``W2`` (the linear trend would collapse the bands).
    * Every ``F > 21``: ``G2`` is the smallest group ``>= 8`` such that (a) the far band's
      largest unclipped distance ``floor((F-1)/G2) + far_offset`` exceeds the clip by at most
      one (the published 81-frame setting itself reaches 21 = clip + 1; 41 frames reach 19) and
      (b) the re-encoded distance is non-decreasing in ``|i - j|`` for every query frame
      (:func:`vrpr_is_monotone`). Both published points keep ``G2 = 8`` (and satisfy (b));
      longer videos get coarser far groups instead of a clip that binds for many queries: the
      clip is applied to an absolute position, so one that binds by more than a step makes far
      keys look *closer* than mid-band ones (with G2 = 8, from 88 frames on; negative
      distances from 184 frames on). G2 grows roughly as ``(F - 1) / 10`` (9 at 89 frames, 17 at 161, 21 at 200).

    With this rule, for every length: the exact band is untouched, every re-encoded relative
    distance keeps its sign, is ``>= W1`` in magnitude beyond the exact band, at most ``clip``,
    and non-decreasing with the true distance.
    """
    F = int(latent_frames)
    clip, g1, g2_base = 20, 2, 8
    if F <= TRAINED_LATENT_FRAMES:
        return VRPRParams(W1=clip, W2=clip + g1, G1=g1, G2=g2_base, clip=clip)
    lo, hi = 41, 81
    t = min(max((F - lo) / (hi - lo), 0.0), 1.0)
    a, b = PUBLISHED_VRPR[lo], PUBLISHED_VRPR[hi]
    w1 = max(g1, _round_to(a.W1 + t * (b.W1 - a.W1), g1))
    w2 = max(w1 + g1, _round_to(a.W2 + t * (b.W2 - a.W2), g1))
    g2 = g2_base
    while True:
        p = VRPRParams(W1=w1, W2=w2, G1=g1, G2=g2, clip=clip)
        if (F - 1) // g2 + p.far_offset <= clip + 1 and vrpr_is_monotone(F, p):
            return p
        g2 += 1


BANDS = ("exact", "mid_past", "mid_future", "far_past", "far_future")
"""VRPR bands. ``past``: the key frame j is before the query frame i (``d = i - j > 0``)."""


def band_of(i: int, j: int, p: VRPRParams) -> str:
    """The VRPR band of query frame ``i`` and key frame ``j``."""
    d = i - j
    if abs(d) <= p.W1:
        return "exact"
    side = "past" if d > 0 else "future"
    return ("mid_" if abs(d) <= p.W2 else "far_") + side


def vrpr_positions(i: int, j: int, p: VRPRParams) -> tuple[int, int]:
    """Re-encoded temporal positions ``(q_pos, k_pos)`` of query frame ``i`` and key frame ``j``.

    With ``d = i - j`` (``> 0``: key in the past), ``o1 = W1 - floor(W1/G1)`` and
    ``o2 = W2 - floor(W2/G2) - floor((W2 - W1)/G1)`` (METHODS.md §3, public code):

    ===============  =====================================  =====================================
    band             q_pos                                  k_pos
    ===============  =====================================  =====================================
    |d| <= W1        i                                      j
    W1 < d <= W2     floor(i/G1) + o1                       floor(j/G1)
    W1 < -d <= W2    floor(i/G1)                            floor(j/G1) + o1
    d > W2           min(floor(i/G2) + o2, clip)            floor(j/G2)
    -d > W2          floor(i/G2)                            min(floor(j/G2) + o2, clip)
    ===============  =====================================  =====================================

    METHODS.md writes only the ``d > 0`` rows. Applied as written to ``d < 0`` they would give
    ``q - k ~ -|d|/G1 + o1``, i.e. a *future* key 13 frames away would look ~0 frames away;
    paper 003 writes the mid band as ``P = floor(P_ori/G1) + sign(P_ori) (W1 - floor(W1/G1))``
    and the public code has four shifted calls (past/future x mid/far) that swap which side
    is shifted, so the future rows mirror the past ones: ``rel(i, j) = -rel(j, i)``.

    Relative distance ``rel = q_pos - k_pos`` (what RoPE scores see), for ``d > 0``:

    * exact: ``rel = d`` (``<= W1``);
    * mid: ``rel = floor(i/G1) - floor(j/G1) + o1``, which is ``floor(d/G1) + o1`` or one more
      (the paper's ``floor(P/G1) + W1 - floor(W1/G1)``; the absolute-position form groups frames
      on a grid shared by all queries, as SelfExtend does, so the floor of the difference becomes
      a difference of floors). With G1 = 2 and W1 even it starts at W1 or W1+1 (continuous with
      the exact band) and ends at ``W1 + (W2 - W1)/G1``;
    * far: ``rel = min(floor(i/G2) + o2, clip) - floor(j/G2)``: ``floor(d/G2) + o2`` or one more
      while the clip does not bind (for G1 = 2 this starts at ``W2 - (W2-W1)/G1 = W1 +
      (W2-W1)/G1``, continuous with the mid band); where it binds, ``clip - floor(j/G2)``,
      so ``rel <= clip`` always.

    ``W1 - floor(W1/G1)`` is the paper's form; the public code computes ``W1 - W1/G1`` in
    floating point and truncates, which differs only when G1 does not divide W1 (never for
    the published settings or :func:`vrpr_params`).
    """
    d = i - j
    if abs(d) <= p.W1:
        return i, j
    if abs(d) <= p.W2:
        if d > 0:
            return i // p.G1 + p.mid_offset, j // p.G1
        return i // p.G1, j // p.G1 + p.mid_offset
    if d > 0:
        return min(i // p.G2 + p.far_offset, p.clip), j // p.G2
    return i // p.G2, min(j // p.G2 + p.far_offset, p.clip)


def band_positions(frames: int, p: VRPRParams) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-frame positions of each band: ``band -> (q_pos LongTensor[F], k_pos LongTensor[F])``.

    Within a band the query position depends only on the query frame and the key position
    only on the key frame (see :func:`vrpr_positions`), so each band is one rotation of q and
    one of k; which band a pair uses depends on ``i - j`` (:func:`band_of`). The positions are
    absolute frame positions (the public code's form), not positions relative to a query block.
    """
    f = torch.arange(frames)
    g1, g2 = f // p.G1, f // p.G2
    far = (g2 + p.far_offset).clamp(max=p.clip)
    return {
        "exact": (f, f),
        "mid_past": (g1 + p.mid_offset, g1),
        "mid_future": (g1, g1 + p.mid_offset),
        "far_past": (far, g2),
        "far_future": (g2, far),
    }


def _band_range(band: str, i: int, frames: int, p: VRPRParams) -> tuple[int, int]:
    """Key frames ``[lo, hi]`` (inclusive, empty when lo > hi) of ``band`` for query frame i."""
    lo, hi = {
        "exact": (i - p.W1, i + p.W1),
        "mid_past": (i - p.W2, i - p.W1 - 1),
        "mid_future": (i + p.W1 + 1, i + p.W2),
        "far_past": (0, i - p.W2 - 1),
        "far_future": (i + p.W2 + 1, frames - 1),
    }[band]
    return max(lo, 0), min(hi, frames - 1)


def relative_distance_map(frames: int, p: VRPRParams) -> torch.Tensor:
    """``rel[i, j] = q_pos - k_pos`` of every frame pair (LongTensor ``[F, F]``)."""
    pos = band_positions(frames, p)
    i = torch.arange(frames).view(-1, 1)
    j = torch.arange(frames).view(1, -1)
    d = i - j
    rel = torch.zeros(frames, frames, dtype=torch.long)
    for band, (qp, kp) in pos.items():
        lo, hi = {"exact": (-p.W1, p.W1), "mid_past": (p.W1 + 1, p.W2), "mid_future": (-p.W2, -p.W1 - 1),
                  "far_past": (p.W2 + 1, frames), "far_future": (-frames, -p.W2 - 1)}[band]
        sel = (d >= lo) & (d <= hi)
        rel = torch.where(sel, qp.view(-1, 1) - kp.view(1, -1), rel)
    return rel


def vrpr_is_monotone(frames: int, p: VRPRParams) -> bool:
    """Whether the re-encoded distance never decreases as the key moves away from the query
    (checked on the past side; the future side is its mirror)."""
    rel = relative_distance_map(frames, p)
    i = torch.arange(frames).view(-1, 1)
    j = torch.arange(frames - 1).view(1, -1)
    return bool((rel[:, :-1] >= rel[:, 1:])[(j + 1 <= i).expand(frames, -1)].all())



# --------------------------------------------------------------------------------------
# VRPR
# --------------------------------------------------------------------------------------

def _plain_rotated(q, k, v, grid, rotate: Rotate, frame_mask=None) -> torch.Tensor:
    pos = torch.arange(grid[0], device=q.device)
    return sdpa(rotate(q, pos), rotate(k, pos), v, token_mask(frame_mask, grid[1] * grid[2]))


def vrpr_attention(q_raw: torch.Tensor, k_raw: torch.Tensor, v: torch.Tensor, grid, rotate: Rotate,
                   p: VRPRParams, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention with VRPR-re-encoded temporal positions (full attention otherwise).

    ``q_raw``/``k_raw`` are unrotated; for each band (:data:`BANDS`) q and k are rotated with
    the band's positions (:func:`band_positions`), each query frame attends to the key frames
    of that band (one contiguous range, no mask), and the five partial attentions are merged
    by log-sum-exp -- exactly one softmax over all keys with per-pair positions. When every
    pair is in the exact band it is plain attention with positions ``arange(F)``. ``frame_mask``
    ``[F, F]``: the model's own mask (block-causal), applied on top.
    """
    f = grid[0]
    if p.is_identity(f):
        return _plain_rotated(q_raw, k_raw, v, grid, rotate, frame_mask)
    pos = band_positions(f, p)

    def plan_for(band):
        def plan(i):
            lo, hi = _band_range(band, i, f, p)
            return (list(range(lo, hi + 1)), [])
        return plan

    return frame_sparse_attention(q_raw, k_raw, v, grid, [(*pos[bd], plan_for(bd)) for bd in BANDS], rotate,
                                  frame_mask=frame_mask)


# --------------------------------------------------------------------------------------
# TSA
# --------------------------------------------------------------------------------------

def tsa_default_ds(tokens_per_frame: int, D1: int = 8, D2: int = 24) -> int:
    """Striped half-width ``Ds`` (in-frame token index) of the public code.

    The paper gives no value (``|k - l| < Ds``). The public ``generate_radial_mask_mod``
    (inherited from Radial Attention) uses ``band = (D2 - D1) // (D1 / 2)``, ``width = band /
    (D2 - D1)``, ``mask_width = (width * tokens_per_frame) // 2`` and keeps ``|t_q - t_k| <
    mask_width``; for D1 = 8, D2 = 24 that is ``tokens_per_frame // 8`` (195 at 832x480, 1560
    tokens per frame), so each striped frame shows a query ~1/4 of its tokens. Converted to
    the inclusive ``|t_q - t_k| <= Ds``: ``Ds = mask_width - 1``, at least 0 (the key at the
    query's own spatial index always stays visible).
    """
    if D2 <= D1:
        return 0
    band = (D2 - D1) // (D1 / 2)
    mask_width = int((band / (D2 - D1) * tokens_per_frame) // 2)
    return max(0, mask_width - 1)


def _resolve_ds(grid, D1, D2, Ds):
    return tsa_default_ds(grid[1] * grid[2], D1, D2) if Ds is None else int(Ds)


def tsa_mask(grid, D1: int = 8, D2: int = 24, Ds: int | None = None, device=None) -> torch.Tensor:
    """Dense reference TSA mask ``[S, S]`` (query, key), True = visible; small shapes only.

    With frame distance ``d = |i - j|`` and in-frame (flattened h*w) token indices ``t, u``:
    visible iff ``d <= D1``, or ``D1 < d <= D2`` and ``|t - u| <= Ds`` (striped), or the key is
    in frame 0 (the sink, visible to every query). ``Ds`` None: :func:`tsa_default_ds`.

    Boundaries: FreeLOC ("Free-Lunch Long Video Generation via Layer-Adaptive O.O.D
    Correction", Method, "Tiered Sparse Attention") writes the dense tier as ``|i - j| < D1``
    and the striped one as ``D1 <= |i - j| < D2``; the public code's masks keep distance ``D1``
    dense, and we follow it: both tiers are inclusive (``d <= D1`` dense, ``d <= D2`` striped;
    METHODS.md §7).
    """
    f, h, w = grid
    tpf = h * w
    ds = _resolve_ds(grid, D1, D2, Ds)
    idx = torch.arange(f * tpf, device=device)
    fr, tk = idx // tpf, idx % tpf
    dist = (fr.view(-1, 1) - fr.view(1, -1)).abs()
    stripe = (tk.view(-1, 1) - tk.view(1, -1)).abs() <= ds
    return (dist <= D1) | ((dist <= D2) & stripe) | (fr.view(1, -1) == 0)


def _tsa_plan(i: int, frames: int, D1: int, D2: int) -> tuple[list[int], list[int]]:
    """TSA key frames of query frame i: (full frames: dense band + sink, striped frames)."""
    full = list(range(max(0, i - D1), min(frames, i + D1 + 1)))
    if full[0] != 0:
        full = [0] + full
    striped = [j for j in range(max(0, i - D2), min(frames, i + D2 + 1)) if abs(i - j) > D1 and j != 0]
    return full, striped


def tsa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid, D1: int = 8, D2: int = 24,
                  Ds: int | None = None, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
    """TSA on (already rotated) q/k, one query frame at a time, no ``S x S`` mask.

    Per query frame: the dense frames within ``D1`` and the sink frame 0 (once, when it is
    within ``D1``) in one fused call, the striped frames in query chunks that gather only the
    key tokens within ``Ds`` (a small mask), merged by log-sum-exp. Equals dense attention
    masked by :func:`tsa_mask` (and by ``frame_mask`` ``[F, F]``, the model's own mask, if given).
    """
    f = grid[0]
    ds = _resolve_ds(grid, D1, D2, Ds)
    pos = torch.arange(f)
    return frame_sparse_attention(q, k, v, grid, [(pos, pos, lambda i: _tsa_plan(i, f, D1, D2))], None, ds,
                                  frame_mask)


@functools.lru_cache(maxsize=32)
def _tsa_block_mask(grid: tuple[int, int, int], D1: int, D2: int, ds: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    f, h, w = grid
    tpf = h * w
    s = f * tpf

    def mask_mod(b, hd, q_idx, kv_idx):
        fq, fk = q_idx // tpf, kv_idx // tpf
        d = (fq - fk).abs()
        stripe = ((q_idx % tpf) - (kv_idx % tpf)).abs() <= ds
        return (d <= D1) | ((d <= D2) & stripe) | (fk == 0)

    return create_block_mask(mask_mod, None, None, s, s, device=device)


def tsa_flex_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid, D1: int = 8, D2: int = 24,
                       Ds: int | None = None, compile: bool | None = None) -> torch.Tensor:
    """TSA with ``torch.nn.attention.flex_attention`` and a :class:`BlockMask` from the same
    rule as :func:`tsa_mask`, created once per ``(grid, D1, D2, Ds, device)``.

    ``compile`` None: compiled on CUDA (the fused, block-sparse kernel), eager on CPU -- eager
    flex attention materialises the scores (fine for small shapes), and compiling on CPU costs
    ~20 s per shape and does not support ``return_lse``.
    """
    import warnings

    from torch.nn.attention.flex_attention import flex_attention

    ds = _resolve_ds(grid, D1, D2, Ds)
    dev = q.device
    bm = _tsa_block_mask(tuple(int(x) for x in grid), int(D1), int(D2), ds,
                         str(dev) if dev.type != "cuda" else f"cuda:{dev.index or 0}")
    use_compile = (dev.type == "cuda") if compile is None else compile
    fn = compiled_flex_attention() if use_compile else flex_attention
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # -> [B, H, S, D]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        out = fn(qt, kt, vt, block_mask=bm)
    return out.transpose(1, 2)


def tsa_density(grid, D1: int = 8, D2: int = 24, Ds: int | None = None) -> dict[str, float]:
    """Fraction of the ``S x S`` (query, key) pairs TSA keeps, per tier, computed analytically.

    Tiers are disjoint: ``dense`` (``d <= D1``), ``sink`` (key in frame 0 with ``d > D1``; in
    ``D1 < d <= D2`` the sink shows the whole frame, so those pairs count as sink, not striped),
    ``striped`` (``D1 < d <= D2``, key frame > 0, ``|t - u| <= Ds``); ``total`` their sum.
    """
    f, h, w = grid
    tpf = h * w
    ds = _resolve_ds(grid, D1, D2, Ds)

    def frame_pairs(lo, hi):  # ordered frame pairs with lo <= |i - j| <= hi
        return sum(f if dd == 0 else 2 * (f - dd) for dd in range(max(lo, 0), min(hi, f - 1) + 1))

    stripe_tokens = tpf + 2 * sum(tpf - e for e in range(1, min(ds, tpf - 1) + 1))
    sink_frames = max(0, f - 1 - D1)  # queries i > D1 against key frame 0
    striped_frames = frame_pairs(D1 + 1, D2) - max(0, min(D2, f - 1) - D1)  # minus key frame 0
    total = float((f * tpf) ** 2)
    dense = frame_pairs(0, D1) * tpf * tpf / total
    sink = sink_frames * tpf * tpf / total
    striped = striped_frames * stripe_tokens / total
    return {"dense": dense, "striped": striped, "sink": sink, "total": dense + striped + sink}


# --------------------------------------------------------------------------------------
# VRPR + TSA
# --------------------------------------------------------------------------------------

def vrpr_tsa_attention(q_raw: torch.Tensor, k_raw: torch.Tensor, v: torch.Tensor, grid, rotate: Rotate,
                       p: VRPRParams, D1: int = 8, D2: int = 24, Ds: int | None = None,
                       frame_mask: torch.Tensor | None = None) -> torch.Tensor:
    """TSA's visible keys with VRPR positions: for each query frame, the TSA-visible key frames
    (dense, striped, sink) are split by VRPR band; each band rotates q/k with its positions;
    the parts are merged by log-sum-exp. Equals one softmax over the :func:`tsa_mask`-visible
    keys with per-pair scores ``<rot(q_i, q_pos(i, j)), rot(k_j, k_pos(i, j))>`` (of those, the
    ones ``frame_mask`` ``[F, F]``, the model's own mask, lets through)."""
    f = grid[0]
    ds = _resolve_ds(grid, D1, D2, Ds)
    pos = band_positions(f, p)
    plans = [_tsa_plan(i, f, D1, D2) for i in range(f)]

    def plan_for(band):
        def plan(i):
            lo, hi = _band_range(band, i, f, p)
            full, striped = plans[i]
            return ([j for j in full if lo <= j <= hi], [j for j in striped if lo <= j <= hi])
        return plan

    bands = [(*pos[bd], plan_for(bd)) for bd in BANDS]
    return frame_sparse_attention(q_raw, k_raw, v, grid, bands, rotate, ds, frame_mask)


# --------------------------------------------------------------------------------------
# Patches
# --------------------------------------------------------------------------------------

def _need_rotate(ctx: AttnContext) -> Rotate:
    rotate = getattr(ctx, "rotate", None)
    if rotate is None:
        raise RuntimeError("FreeLOC patches need ctx.rotate (the adapter's RoPE with per-frame temporal positions)")
    return rotate


WAN21_13B_TSA_LAYERS = (0, 1, 4, 6, 7, 9, 10, 11, 13, 14, 15, 16, 18, 22, 23, 24, 25)
"""Layers the public probe of Wan2.1-T2V-1.3B gives VRPR+TSA (``default_rope_relative_layers``)."""

WAN21_13B_PROFILE: dict[int, str] = {layer: ("vrpr+tsa" if layer in WAN21_13B_TSA_LAYERS else "vrpr")
                                     for layer in range(30)}
"""Published FreeLOC layer profile of Wan2.1-1.3B (30 blocks): VRPR+TSA on the 17 layers
above, VRPR on the other 13."""

MODES = ("vrpr", "vrpr+tsa", "tsa", "none")
"""Per-layer modes of :class:`FreeLOC`; ``tsa`` (TSA with standard positions, the paper's
Direct+TSA ablation) and ``none`` (plain attention) are extras."""


@dataclass
class FreeLOC(AttentionPatch):
    """FreeLOC's layer-adaptive dispatch: ``profile[layer]`` is ``vrpr`` or ``vrpr+tsa``
    (also ``tsa``/``none``); a layer not in the profile gets plain attention with standard
    positions (rotated here with ``arange(F)``, since the adapter hands this patch raw q/k).
    ``profile`` keys may be strings (as in a probe JSON). ``params`` None: :func:`vrpr_params`
    of the window length. The model's own mask (``ctx.mask``: diffusion forcing's block-causal
    one) hides key frames on top of every mode's own sparsity."""

    profile: dict = field(default_factory=lambda: dict(WAN21_13B_PROFILE))
    """layer -> mode (:data:`MODES`)."""
    params: VRPRParams | None = None
    """Band parameters (None: :func:`vrpr_params` of the window length)."""
    D1: int = 8
    """TSA dense tier: frame distance ``<= D1``."""
    D2: int = 24
    """TSA striped tier: ``D1 < d <= D2``."""
    Ds: int | None = None
    """TSA stripe half-width in in-frame tokens (None: :func:`tsa_default_ds`)."""
    layers: tuple[int, ...] | None = None
    """Layers patched (None: all)."""
    name = "freeloc"
    raw_qk = True

    def __post_init__(self):
        self.profile = {int(k): str(m) for k, m in self.profile.items()}
        bad = {m for m in self.profile.values() if m not in MODES}
        if bad:
            raise ValueError(f"unknown FreeLOC layer modes {sorted(bad)}; expected one of {MODES}")

    def attend(self, q, k, v, ctx: AttnContext) -> torch.Tensor:
        rotate = _need_rotate(ctx)
        mode = self.profile.get(ctx.layer, "none")
        f = ctx.grid[0]
        p = self.params or vrpr_params(f)
        fm = ctx.frame_mask()
        if mode == "vrpr":
            return vrpr_attention(q, k, v, ctx.grid, rotate, p, fm)
        if mode == "vrpr+tsa":
            return vrpr_tsa_attention(q, k, v, ctx.grid, rotate, p, self.D1, self.D2, self.Ds, fm)
        pos = torch.arange(f, device=q.device)
        qr, kr = rotate(q, pos), rotate(k, pos)
        if mode == "tsa":
            return tsa_attention(qr, kr, v, ctx.grid, self.D1, self.D2, self.Ds, fm)
        return sdpa(qr, kr, v, ctx.mask)


# --------------------------------------------------------------------------------------
# Layer profiles and the recipe kind
# --------------------------------------------------------------------------------------

PROFILE_DIR = Path(__file__).resolve().parent.parent / "profiles"
"""Shipped ``longvid probe`` profiles, one JSON per architecture."""


def freeloc_profile(path: str | None, model_info: dict) -> dict:
    """A FreeLOC layer profile: the given ``longvid probe`` JSON, else the one shipped for this
    architecture (matched on layer count and width), e.g. the published Wan2.1-1.3B one."""
    if path:
        data = json.loads(open(path).read())
    else:
        for f in sorted(PROFILE_DIR.glob("*.json")):
            data = json.loads(f.read_text())
            if (data.get("num_layers"), data.get("dim")) == (model_info.get("num_layers"), model_info.get("dim")):
                break
        else:
            raise ValueError(f"no FreeLOC profile ships for a {model_info.get('num_layers')}-layer, "
                             f"{model_info.get('dim')}-wide model; run `longvid probe` and set attention.profile")
    if data.get("num_layers") not in (None, model_info.get("num_layers")):
        raise ValueError(f"FreeLOC profile {path!r} is for {data['num_layers']} layers, the model has "
                         f"{model_info.get('num_layers')}")
    return data["layers"]


def freeloc_patch(params: dict, model_info: dict) -> FreeLOC:
    """The FreeLOC patch of a recipe's ``attention: {kind: freeloc, ...}`` section."""
    profile = freeloc_profile(params.get("profile"), model_info)
    if params.get("layers") is not None:  # composed with other patches: only these layers
        profile = {k: v for k, v in profile.items() if int(k) in params["layers"]}
    w = {k: params.get(k) for k in ("W1", "W2", "G1", "G2", "clip")}
    vrpr = None
    if w["W1"] is not None or w["W2"] is not None:
        if w["W1"] is None or w["W2"] is None:
            raise ValueError("freeloc: set both W1 and W2 (or neither, for the length rule)")
        vrpr = VRPRParams(w["W1"], w["W2"], w["G1"] or 2, w["G2"] or 8, w["clip"] or 20)
    patch = FreeLOC(profile=profile, params=vrpr, D1=params["D1"], D2=params["D2"], Ds=params["Ds"])
    if params.get("layers") is not None:
        patch.layers = tuple(params["layers"])
    return patch


def resolve_freeloc(params: dict, geometry) -> dict:
    """The VRPR bands and TSA stripe width a render uses: ``W1``/``W2``/``G1``/``G2``/``clip``
    from :func:`vrpr_params` of the window length when ``W1`` and ``W2`` are null (the length
    rule sets all five), else the given ones with ``G1 = 2``, ``G2 = 8``, ``clip = 20`` for
    nulls (as :func:`freeloc_patch` builds them); ``Ds`` from :func:`tsa_default_ds` when the
    tokens per frame are known. ``profile`` stays as given (null: the worker picks the shipped
    profile of its architecture)."""
    out = dict(params)
    if params.get("W1") is None and params.get("W2") is None:
        p = vrpr_params(geometry.window_frames)
        out.update(W1=p.W1, W2=p.W2, G1=p.G1, G2=p.G2, clip=p.clip)
    elif params.get("W1") is not None and params.get("W2") is not None:
        out.update(G1=params.get("G1") or 2, G2=params.get("G2") or 8, clip=params.get("clip") or 20)
    if params.get("Ds") is None and geometry.tokens_per_frame:
        out["Ds"] = tsa_default_ds(geometry.tokens_per_frame, params["D1"], params["D2"])
    return out


_OPT_POS = Param(INT_OR_NULL, None, "null (the length rule) or a positive integer", lambda v: v >= 1)

register("attention", "freeloc", freeloc_patch, {
    "profile": Param((str, type(None)), None, "null (the model's shipped profile) or a path to "
                     "a `longvid probe` JSON", lambda v: bool(v)),
    "W1": _OPT_POS, "W2": _OPT_POS, "G1": _OPT_POS, "G2": _OPT_POS, "clip": _OPT_POS,
    "D1": Param((int,), 8, "a positive integer (frames)", lambda v: v >= 1),
    "D2": Param((int,), 24, "a positive integer (frames)", lambda v: v >= 1),
    "Ds": Param(INT_OR_NULL, None, "null (the paper's stripe width) or an integer >= 0", lambda v: v >= 0),
    "layers": LAYERS,
}, requires=("attention_patches", "temporal_rope"), resolve=resolve_freeloc)
