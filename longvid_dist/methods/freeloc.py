"""FreeLOC (Tian et al., CVPR 2026; papers 001/003): VRPR, TSA and their per-layer dispatch.

Pure tensor functions on ``[B, S, H, D]`` tensors (``S = frames * tokens_per_frame``,
frame-major, ``grid = (frames, h, w)``) plus :class:`AttentionPatch` subclasses for the adapters.

* **VRPR** (video-based relative position re-encoding): temporal RoPE positions are re-encoded
  per band of frame distance, so that every (query, key) frame pair gets a relative temporal
  distance inside the trained range. Each band is one attention call with its own rotated
  q/k; the bands' partial attentions are merged exactly by their log-sum-exp
  (:func:`lse_merge`), which equals one softmax over the union of the keys.
* **TSA** (tiered sparse attention): dense attention within ``D1`` frames, "striped"
  attention (same in-frame token index up to ``Ds``) for ``D1 < d <= D2``, the first frame as an
  attention sink for every query, nothing else.
* **Layer profile**: which layers get VRPR and which VRPR+TSA (:data:`WAN21_13B_PROFILE`,
  or one written by ``longvid probe``).

VRPR and VRPR+TSA patches set ``raw_qk = True``: the adapter passes unrotated q/k and a
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
import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..models.hooks import AttentionPatch, AttnContext, sdpa

Rotate = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``rotate(x [B, S, H, D], frame_positions LongTensor[F]) -> x rotated``."""

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
# Attention with log-sum-exp and the exact merge
# --------------------------------------------------------------------------------------

_SCORE_BUDGET = 1 << 24
"""Score elements per chunk of the explicit path (64 MiB in float32)."""


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _explicit_attention_with_lse(q, k, v, mask, scale, chunk=None):
    b, sq, h, d = q.shape
    sk = k.shape[1]
    cdt = _compute_dtype(q.dtype)
    qf = q.transpose(1, 2).to(cdt)  # [B, S, H, D] -> [B, H, S, D]
    kf = k.transpose(1, 2).to(cdt)
    vf = v.transpose(1, 2).to(cdt)
    if mask is not None:
        mask = mask.to(torch.bool)
        mask = mask.view((1,) * (4 - mask.dim()) + tuple(mask.shape))  # -> [B|1, H|1, Sq, Sk]
    chunk = chunk or max(1, _SCORE_BUDGET // max(1, b * h * sk))
    out = torch.empty(b, h, sq, v.shape[-1], dtype=cdt, device=q.device)
    lse = torch.empty(b, h, sq, dtype=cdt, device=q.device)
    for q0 in range(0, sq, chunk):
        q1 = min(sq, q0 + chunk)
        s = qf[:, :, q0:q1] @ kf.transpose(-1, -2) * scale  # [B, H, c, Sk]
        if mask is not None:
            m = mask[..., q0:q1, :] if mask.shape[-2] > 1 else mask
            s = s.masked_fill(~m, float("-inf"))
        mx = s.amax(-1, keepdim=True)
        mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))  # rows with no visible key
        p = torch.exp(s - mx)
        den = p.sum(-1, keepdim=True)
        out[:, :, q0:q1] = (p @ vf) / den.clamp_min(torch.finfo(cdt).tiny)  # 0 where den == 0
        lse[:, :, q0:q1] = (mx + torch.log(den)).squeeze(-1)  # -inf where den == 0
    return out.transpose(1, 2).to(q.dtype), lse  # [B, H, S, D] -> [B, S, H, D]


def _fused_attention_with_lse(q, k, v, scale):
    """A fused kernel that returns the log-sum-exp, or None where none applies."""
    sq = q.shape[1]
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # -> [B, H, S, D]
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(qt, kt, vt, scale=scale)
        return out.transpose(1, 2), lse
    if q.device.type == "cuda":  # untested here (no GPU in the test suite); falls back on error
        try:
            if q.dtype in (torch.float16, torch.bfloat16):
                res = torch.ops.aten._scaled_dot_product_flash_attention(qt, kt, vt, scale=scale)
            else:
                res = torch.ops.aten._scaled_dot_product_efficient_attention(qt, kt, vt, None, True, scale=scale)
            out, lse = res[0], res[1][..., :sq]  # efficient attention pads the lse to 32 rows
            return out.transpose(1, 2), lse
        except (RuntimeError, NotImplementedError):
            return None
    return None


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                       chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact attention ``softmax(q k^T / sqrt(D)) v`` and the log-sum-exp of its scores.

    ``q`` ``[B, Sq, H, D]``, ``k``/``v`` ``[B, Sk, H, D]``; ``mask``: boolean, True = visible,
    broadcastable to ``[B, H, Sq, Sk]`` (e.g. ``[Sq, Sk]``). Returns ``out [B, Sq, H, D]`` (q's
    dtype) and ``lse [B, H, Sq]`` (float32, float64 for float64 inputs). A query that sees no
    key gets ``out = 0`` and ``lse = -inf`` (never NaN).

    Without a mask: ATen's fused kernel (``_scaled_dot_product_flash_attention_for_cpu`` on CPU,
    which returns the lse as its second output; flash / memory-efficient attention on CUDA).
    With a mask: an explicit computation chunked over queries, memory O(chunk * Sk).
    """
    b, sq, h, _ = q.shape
    scale = q.shape[-1] ** -0.5
    if k.shape[1] == 0 or sq == 0:
        cdt = _compute_dtype(q.dtype)
        return (q.new_zeros(b, sq, h, v.shape[-1]),
                torch.full((b, h, sq), float("-inf"), dtype=cdt, device=q.device))
    if mask is None:
        res = _fused_attention_with_lse(q, k, v, scale)
        if res is not None:
            out, lse = res
            return out, lse.to(_compute_dtype(q.dtype))
    return _explicit_attention_with_lse(q, k, v, mask, scale, chunk)


def lse_merge(outs: list[torch.Tensor], lses: list[torch.Tensor], return_lse: bool = False):
    """Merge partial attentions over disjoint key sets into the attention over their union.

    ``out = sum_b exp(lse_b - m) out_b / sum_b exp(lse_b - m)``, ``m = max_b lse_b``; exact.
    ``outs``: ``[B, S, H, D]``; ``lses``: ``[B, H, S]``. Parts with ``lse = -inf`` (no visible
    key) get weight 0; a query with no key in any part gets 0 (and lse -inf).
    """
    if len(outs) == 1:
        return (outs[0], lses[0]) if return_lse else outs[0]
    L = torch.stack([x.to(_compute_dtype(x.dtype)) for x in lses])  # [n, B, H, S]
    m = L.amax(0)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    w = torch.exp(L - m)
    den = w.sum(0)
    w = (w / den.clamp_min(torch.finfo(w.dtype).tiny)).transpose(2, 3).unsqueeze(-1)  # [n, B, S, H, 1]
    acc = None
    for wb, ob in zip(w, outs):
        term = torch.where(wb > 0, wb * ob.to(wb.dtype), torch.zeros((), dtype=wb.dtype, device=wb.device))
        acc = term if acc is None else acc + term
    out = acc.to(outs[0].dtype)
    return (out, m + torch.log(den)) if return_lse else out


# --------------------------------------------------------------------------------------
# Frame-level sparse engine: per query frame, a set of full and striped key frames
# --------------------------------------------------------------------------------------

def _gather_frames(xf: torch.Tensor, frames: list[int]) -> torch.Tensor:
    """Frames ``frames`` of ``xf [B, F, T, H, D]`` as ``[B, n*T, H, D]`` (a view when contiguous)."""
    b, _, t, h, d = xf.shape
    if frames == list(range(frames[0], frames[0] + len(frames))):
        return xf[:, frames[0]:frames[0] + len(frames)].reshape(b, len(frames) * t, h, d)
    return xf[:, frames].reshape(b, len(frames) * t, h, d)


def _striped_attention_with_lse(qi: torch.Tensor, kf: torch.Tensor, vf: torch.Tensor, frames: list[int],
                                ds: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Query frame ``qi [B, T, H, D]`` against key frames ``frames`` of ``kf [B, F, T, H, D]``
    where token t sees token u of each key frame iff ``|t - u| <= ds``. Queries are chunked
    and each chunk gathers only the key tokens within ``ds`` of it."""
    b, t, h, d = qi.shape
    n = len(frames)
    kk, vv = kf[:, frames], vf[:, frames]  # [B, n, T, H, D]
    c = min(t, max(2 * ds + 1, 32))
    outs, lses = [], []
    for t0 in range(0, t, c):
        t1 = min(t, t0 + c)
        u0, u1 = max(0, t0 - ds), min(t, t1 + ds)
        qt = torch.arange(t0, t1, device=qi.device).view(-1, 1)
        ku = torch.arange(u0, u1, device=qi.device).view(1, -1)
        mask = ((qt - ku).abs() <= ds).repeat(1, n)  # [c, n * (u1 - u0)]
        o, lse = attention_with_lse(qi[:, t0:t1], kk[:, :, u0:u1].reshape(b, n * (u1 - u0), h, d),
                                    vv[:, :, u0:u1].reshape(b, n * (u1 - u0), h, vv.shape[-1]), mask)
        outs.append(o)
        lses.append(lse)
    return torch.cat(outs, 1), torch.cat(lses, -1)


def _frame_attention_with_lse(qi, kf, vf, full: list[int], striped: list[int], ds: int):
    """One query frame against ``full`` key frames (every token) and ``striped`` ones."""
    parts = []
    if full:
        parts.append(attention_with_lse(qi, _gather_frames(kf, full), _gather_frames(vf, full)))
    if striped:
        parts.append(_striped_attention_with_lse(qi, kf, vf, striped, ds))
    if len(parts) == 1:
        return parts[0]
    return lse_merge([o for o, _ in parts], [x for _, x in parts], return_lse=True)


def _band_attention(q, k, v, grid, bands, rotate: Rotate | None, ds: int = 0) -> torch.Tensor:
    """Sum over bands (exactly, by LSE) of per-query-frame attentions.

    ``bands``: list of ``(q_pos, k_pos, plan)``; ``plan(i) -> (full frames, striped frames)``
    for query frame i. q/k are rotated with the band's positions (``rotate`` None: as given).
    """
    f, hh, ww = grid
    tpf = hh * ww
    b, s, h, d = q.shape
    if s != f * tpf:
        raise ValueError(f"sequence length {s} does not match grid {tuple(grid)}")
    cdt = _compute_dtype(q.dtype)
    acc = None
    for q_pos, k_pos, plan in bands:
        plans = [plan(i) for i in range(f)]
        if not any(fl or st for fl, st in plans):
            continue
        qr = rotate(q, q_pos.to(q.device)) if rotate is not None else q
        kr = rotate(k, k_pos.to(k.device)) if rotate is not None else k
        qf = qr.reshape(b, f, tpf, h, d)
        kf = kr.reshape(b, f, tpf, h, d)
        vf = v.reshape(b, f, tpf, h, v.shape[-1])
        out = q.new_zeros(b, s, h, v.shape[-1], dtype=v.dtype)
        lse = torch.full((b, h, s), float("-inf"), dtype=cdt, device=q.device)
        for i, (fl, st) in enumerate(plans):
            if fl or st:
                o, l_ = _frame_attention_with_lse(qf[:, i], kf, vf, fl, st, ds)
                out[:, i * tpf:(i + 1) * tpf] = o
                lse[:, :, i * tpf:(i + 1) * tpf] = l_
        acc = (out, lse) if acc is None else lse_merge([acc[0], out], [acc[1], lse], return_lse=True)
    return acc[0]


# --------------------------------------------------------------------------------------
# VRPR
# --------------------------------------------------------------------------------------

def _plain_rotated(q, k, v, grid, rotate: Rotate) -> torch.Tensor:
    pos = torch.arange(grid[0], device=q.device)
    return sdpa(rotate(q, pos), rotate(k, pos), v)


def vrpr_attention(q_raw: torch.Tensor, k_raw: torch.Tensor, v: torch.Tensor, grid, rotate: Rotate,
                   p: VRPRParams) -> torch.Tensor:
    """Attention with VRPR-re-encoded temporal positions (full attention otherwise).

    ``q_raw``/``k_raw`` are unrotated; for each band (:data:`BANDS`) q and k are rotated with
    the band's positions (:func:`band_positions`), each query frame attends to the key frames
    of that band (one contiguous range, no mask), and the five partial attentions are merged
    by log-sum-exp -- exactly one softmax over all keys with per-pair positions. When every
    pair is in the exact band it is plain attention with positions ``arange(F)``.
    """
    f = grid[0]
    if p.is_identity(f):
        return _plain_rotated(q_raw, k_raw, v, grid, rotate)
    pos = band_positions(f, p)

    def plan_for(band):
        def plan(i):
            lo, hi = _band_range(band, i, f, p)
            return (list(range(lo, hi + 1)), [])
        return plan

    return _band_attention(q_raw, k_raw, v, grid, [(*pos[bd], plan_for(bd)) for bd in BANDS], rotate)


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
    METHODS.md's inclusive ``d <= D1`` / ``d <= D2`` (the paper writes ``<`` and ``<=`` loosely;
    the public code thresholds token distances rounded to 128-token blocks).
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
                  Ds: int | None = None) -> torch.Tensor:
    """TSA on (already rotated) q/k, one query frame at a time, no ``S x S`` mask.

    Per query frame: the dense frames within ``D1`` and the sink frame 0 (once, when it is
    within ``D1``) in one fused call, the striped frames in query chunks that gather only the
    key tokens within ``Ds`` (a small mask), merged by log-sum-exp. Equals dense attention
    masked by :func:`tsa_mask`.
    """
    f = grid[0]
    ds = _resolve_ds(grid, D1, D2, Ds)
    pos = torch.arange(f)
    return _band_attention(q, k, v, grid, [(pos, pos, lambda i: _tsa_plan(i, f, D1, D2))], None, ds)


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


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


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
    fn = _compiled_flex() if use_compile else flex_attention
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


def tsa_flops(grid, D1: int = 8, D2: int = 24, Ds: int | None = None, heads: int = 1,
              head_dim: int = 128) -> dict[str, float]:
    """Attention FLOPs (``q k^T`` and ``p v``: ``4 * pairs * head_dim * heads``) of TSA and of
    dense attention, and their ratio (= the total density)."""
    s = grid[0] * grid[1] * grid[2]
    dense = 4.0 * s * s * head_dim * heads
    frac = tsa_density(grid, D1, D2, Ds)["total"]
    return {"tsa": dense * frac, "dense": dense, "ratio": frac}


# --------------------------------------------------------------------------------------
# VRPR + TSA
# --------------------------------------------------------------------------------------

def vrpr_tsa_attention(q_raw: torch.Tensor, k_raw: torch.Tensor, v: torch.Tensor, grid, rotate: Rotate,
                       p: VRPRParams, D1: int = 8, D2: int = 24, Ds: int | None = None) -> torch.Tensor:
    """TSA's visible keys with VRPR positions: for each query frame, the TSA-visible key frames
    (dense, striped, sink) are split by VRPR band; each band rotates q/k with its positions;
    the parts are merged by log-sum-exp. Equals one softmax over the :func:`tsa_mask`-visible
    keys with per-pair scores ``<rot(q_i, q_pos(i, j)), rot(k_j, k_pos(i, j))>``."""
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
    return _band_attention(q_raw, k_raw, v, grid, bands, rotate, ds)


# --------------------------------------------------------------------------------------
# Patches
# --------------------------------------------------------------------------------------

def _need_rotate(ctx: AttnContext) -> Rotate:
    rotate = getattr(ctx, "rotate", None)
    if rotate is None:
        raise RuntimeError("FreeLOC patches need ctx.rotate (the adapter's RoPE with per-frame temporal positions)")
    return rotate


@dataclass
class VRPR(AttentionPatch):
    """FreeLOC's VRPR on full attention (:func:`vrpr_attention`). ``params`` None: chosen per
    window length by :func:`vrpr_params`."""

    params: VRPRParams | None = None
    layers: tuple[int, ...] | None = None
    name = "vrpr"
    raw_qk = True

    def attend(self, q, k, v, ctx: AttnContext) -> torch.Tensor:
        p = self.params or vrpr_params(ctx.grid[0])
        return vrpr_attention(q, k, v, ctx.grid, _need_rotate(ctx), p)


@dataclass
class VRPRTSA(AttentionPatch):
    """FreeLOC's VRPR + TSA (:func:`vrpr_tsa_attention`): TSA picks the visible keys, VRPR
    re-encodes their positions. Defaults D1 = 8, D2 = 24 (public config), ``Ds`` None =
    :func:`tsa_default_ds`."""

    params: VRPRParams | None = None
    D1: int = 8
    D2: int = 24
    Ds: int | None = None
    layers: tuple[int, ...] | None = None
    name = "vrpr_tsa"
    raw_qk = True

    def attend(self, q, k, v, ctx: AttnContext) -> torch.Tensor:
        p = self.params or vrpr_params(ctx.grid[0])
        return vrpr_tsa_attention(q, k, v, ctx.grid, _need_rotate(ctx), p, self.D1, self.D2, self.Ds)


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
    of the window length."""

    profile: dict = field(default_factory=lambda: dict(WAN21_13B_PROFILE))
    params: VRPRParams | None = None
    D1: int = 8
    D2: int = 24
    Ds: int | None = None
    layers: tuple[int, ...] | None = None
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
        if mode == "vrpr":
            return vrpr_attention(q, k, v, ctx.grid, rotate, p)
        if mode == "vrpr+tsa":
            return vrpr_tsa_attention(q, k, v, ctx.grid, rotate, p, self.D1, self.D2, self.Ds)
        pos = torch.arange(f, device=q.device)
        qr, kr = rotate(q, pos), rotate(k, pos)
        if mode == "tsa":
            return tsa_attention(qr, kr, v, ctx.grid, self.D1, self.D2, self.Ds)
        return sdpa(qr, kr, v)
