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

from ..models.hooks import sdpa

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


# --------------------------------------------------------------------------------------
# Attention with log-sum-exp and the exact merge
# --------------------------------------------------------------------------------------

_SCORE_BUDGET = 1 << 24
"""Score elements per chunk of the explicit path (64 MiB in float32)."""


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Scores and lse are kept in float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _explicit_attention_with_lse(q, k, v, mask, scale, chunk=None):
    b, sq, h, d = q.shape
    sk = k.shape[1]
    cdt = compute_dtype(q.dtype)
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
        cdt = compute_dtype(q.dtype)
        return (q.new_zeros(b, sq, h, v.shape[-1]),
                torch.full((b, h, sq), float("-inf"), dtype=cdt, device=q.device))
    if mask is None:
        res = _fused_attention_with_lse(q, k, v, scale)
        if res is not None:
            out, lse = res
            return out, lse.to(compute_dtype(q.dtype))
    return _explicit_attention_with_lse(q, k, v, mask, scale, chunk)


def lse_merge(outs: list[torch.Tensor], lses: list[torch.Tensor], return_lse: bool = False):
    """Merge partial attentions over disjoint key sets into the attention over their union.

    ``out = sum_b exp(lse_b - m) out_b / sum_b exp(lse_b - m)``, ``m = max_b lse_b``; exact.
    ``outs``: ``[B, S, H, D]``; ``lses``: ``[B, H, S]``. Parts with ``lse = -inf`` (no visible
    key) get weight 0; a query with no key in any part gets 0 (and lse -inf).
    """
    if len(outs) == 1:
        return (outs[0], lses[0]) if return_lse else outs[0]
    L = torch.stack([x.to(compute_dtype(x.dtype)) for x in lses])  # [n, B, H, S]
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


def frame_sparse_attention(q, k, v, grid, bands, rotate: Rotate | None, ds: int = 0) -> torch.Tensor:
    """Sum over bands (exactly, by LSE) of per-query-frame attentions.

    ``bands``: list of ``(q_pos, k_pos, plan)``; ``plan(i) -> (full frames, striped frames)``
    for query frame i. q/k are rotated with the band's positions (``rotate`` None: as given).
    """
    f, hh, ww = grid
    tpf = hh * ww
    b, s, h, d = q.shape
    if s != f * tpf:
        raise ValueError(f"sequence length {s} does not match grid {tuple(grid)}")
    cdt = compute_dtype(q.dtype)
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


@functools.lru_cache(maxsize=1)
def compiled_flex_attention():
    """``flex_attention`` compiled once per process (the fused block-sparse kernel on CUDA)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)
