"""Exact attention with log-sum-exp, and attention over per-query-frame sparse key sets.

Generic building blocks for methods that split one softmax into parts (FreeLOC's VRPR bands
and TSA tiers): :func:`attention_with_lse` returns each part's log-sum-exp, :func:`lse_merge`
combines parts over disjoint key sets into exactly the softmax over their union (the merge
of Milakov & Gimelshein 2018, "Online normalizer calculation for softmax", as used by
FlashAttention's split-K). :func:`frame_sparse_attention` runs, for each query frame, full key
frames and "striped" ones (same in-frame token index up to ``ds``) with per-band rotations;
:func:`banded_attention` is the temporal band of FreeLong and FreeSpec. Tensors are
``[B, S, H, D]``, ``S = frames * tokens_per_frame`` frame-major.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch

from ..models.hooks import (  # noqa: F401  (re-exported)
    _SCORE_BUDGET, _explicit_attention_with_lse, _fused_attention_with_lse, attention_with_lse, compute_dtype,
    lse_merge, sdpa)

Rotate = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``rotate(x [B, S, H, D], frame_positions LongTensor[F]) -> x rotated``."""


def banded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tokens_per_frame: int,
                     band: int) -> torch.Tensor:
    """Attention where a query of frame i sees only keys of frames j with ``|i - j| <= band``.

    Computed one query frame at a time against its key band, so no ``S x S`` mask is built;
    exactly equal (up to float summation order) to dense attention with the band mask.
    """
    b, s, h, d = q.shape
    frames = s // tokens_per_frame
    out = torch.empty_like(q)
    for i in range(frames):
        lo, hi = max(0, i - band), min(frames, i + band + 1)
        qs = slice(i * tokens_per_frame, (i + 1) * tokens_per_frame)
        ks = slice(lo * tokens_per_frame, hi * tokens_per_frame)
        out[:, qs] = sdpa(q[:, qs], k[:, ks], v[:, ks])
    return out


# Attention with log-sum-exp and the exact merge live in models/hooks.py (adapters need them for
# joint text-video attention); re-exported here for the methods.

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


def frame_sparse_attention(q, k, v, grid, bands, rotate: Rotate | None, ds: int = 0,
                           frame_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over bands (exactly, by LSE) of per-query-frame attentions.

    ``bands``: list of ``(q_pos, k_pos, plan)``; ``plan(i) -> (full frames, striped frames)``
    for query frame i. q/k are rotated with the band's positions (``rotate`` None: as given).
    ``frame_mask`` ``[F, F]`` (the model's own mask, e.g. block-causal: ``AttnContext.frame_mask``)
    further hides key frame j from query frame i where it is False.
    """
    f, hh, ww = grid
    tpf = hh * ww
    b, s, h, d = q.shape
    if s != f * tpf:
        raise ValueError(f"sequence length {s} does not match grid {tuple(grid)}")
    cdt = compute_dtype(q.dtype)
    acc = None
    visible = None if frame_mask is None else [set(torch.nonzero(row).flatten().tolist()) for row in frame_mask]
    for q_pos, k_pos, plan in bands:
        plans = [plan(i) for i in range(f)]
        if visible is not None:
            plans = [([j for j in fl if j in visible[i]], [j for j in st if j in visible[i]])
                     for i, (fl, st) in enumerate(plans)]
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


@functools.lru_cache(maxsize=1)
def compiled_flex_attention():
    """``flex_attention`` compiled once per process (the fused block-sparse kernel on CUDA)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)
