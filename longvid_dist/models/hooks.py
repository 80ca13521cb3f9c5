"""The hooks a model offers to training-free methods, defined by the models that call them.

A method never touches a model's modules. An adapter computes a self-attention layer's query,
key and value and hands them to an installed :class:`AttentionPatch` together with an
:class:`AttnContext` (which layer, which guidance branch, the window's token grid, its role,
and ``rotate`` to apply the model's RoPE at chosen frame positions). A temporal RoPE edit is a
function ``theta -> theta'`` over the temporal rotary frequencies (:func:`rope_frequencies`).
Methods (``methods/``) implement these protocols; nothing here imports a method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

TemporalRopeEdit = Callable[[np.ndarray], np.ndarray]
"""Maps the temporal RoPE angular frequencies ``theta [d/2]`` to new ones (RIFLEx, FLEX)."""


@dataclass
class AttnContext:
    """Where an attention call happens; filled by the adapter before each forward."""

    layer: int = 0
    """Transformer block index."""
    branch: str = "cond"
    """Guidance branch: ``cond`` or ``uncond``."""
    grid: tuple[int, int, int] = (1, 1, 1)
    """Token grid of the window ``(frames, height, width)``; tokens are frame-major."""
    role: str = "plain"
    """``plain``, ``anchor`` (record keys/values for other windows) or ``follow`` (use them)."""
    anchor_key: object = None
    """Identity of the anchor window whose keys/values a ``follow`` call uses."""
    store: dict = field(default_factory=dict)
    """Per-replica cache shared by the calls of one step (ABAM's anchor keys/values)."""
    mask: torch.Tensor | None = None
    """Boolean attention mask of the layer call (True = attend), broadcastable to
    ``[B, H, S_q, S_k]``: the model's own block-causal mask (diffusion forcing), else None."""
    rotate: Callable | None = None
    """For patches with ``raw_qk``: ``rotate(x, frame_positions)`` applies the model's RoPE to
    unrotated ``[B, S, H, D]`` queries/keys with the given temporal position per frame."""
    heads: tuple[int, int] | None = None
    """``(first, count)``: which of the model's heads the patch's q/k/v hold (a ulysses rank's
    share under sequence parallelism), None = all; for a ``rotate`` whose RoPE differs per head."""
    _frame_mask: tuple | None = field(default=None, repr=False)
    """``(mask, frame mask)`` of the last :meth:`frame_mask` call."""

    @property
    def tokens_per_frame(self) -> int:
        """Tokens of one latent frame after patchifying (``h * w`` of the grid)."""
        return self.grid[1] * self.grid[2]

    def frame_mask(self) -> torch.Tensor | None:
        """:attr:`mask` per frame pair, ``[F, F]`` boolean (True = query frame i sees key frame j),
        or None without a mask. The models' masks are frame-level (SkyReels-V2's block-causal
        mask over latent frames): one ``[S, S]`` mask shared by every batch element and head,
        constant over each (query frame, key frame) tile; another mask is refused. Read once per
        mask (the model hands every layer the same one)."""
        if self.mask is None:
            return None
        if self._frame_mask is not None and self._frame_mask[0] is self.mask:
            return self._frame_mask[1]
        f, tpf = self.grid[0], self.tokens_per_frame
        m = self.mask.to(torch.bool)
        if any(n != 1 for n in m.shape[:-2]) or tuple(m.shape[-2:]) != (f * tpf, f * tpf):
            raise ValueError(f"attention mask of shape {tuple(m.shape)} is not one frame-level [S, S] mask for "
                             f"the grid {tuple(self.grid)}")
        tiles = m.reshape(f, tpf, f, tpf)
        fm = tiles.all(3).all(1)
        if not torch.equal(fm, tiles.any(3).any(1)):
            raise ValueError("attention mask is not frame-level: tokens of one frame see different keys")
        self._frame_mask = (self.mask, fm)
        return fm


def token_mask(frame_mask: torch.Tensor | None, tokens_per_frame: int) -> torch.Tensor | None:
    """A ``[F, F]`` frame mask as the ``[S, S]`` token mask of frame-major tokens (None stays None)."""
    if frame_mask is None:
        return None
    return frame_mask.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention on ``[B, S, H, D]`` tensors (the layout diffusers uses)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)  # [B, H, S, D] -> [B, S, H, D]


class AttentionPatch:
    """What a self-attention layer computes; the base class is plain attention.

    ``layers`` limits the patch to some blocks (None = all). A patch with ``raw_qk = True``
    receives unrotated q/k and rotates them itself via ``ctx.rotate``.

    Under sequence parallelism (``models/parallel.py``) a patch always sees the whole token
    grid of the window, for the heads of its rank; ``all_heads`` asks for every head (a patch
    that mixes heads, such as an SVD over channels), at the cost of computing them on every
    ulysses rank.
    """

    name = "none"
    layers: tuple[int, ...] | None = None
    raw_qk = False
    all_heads = False
    """Whether one head's output depends on other heads (then ulysses ranks gather heads)."""

    def applies(self, layer: int) -> bool:
        """Whether the patch replaces the attention of block ``layer``."""
        return self.layers is None or layer in self.layers

    def wants_raw(self, layer: int) -> bool:
        """Whether block ``layer`` should hand over q/k before RoPE."""
        return self.raw_qk

    def for_layer(self, layer: int) -> "AttentionPatch":
        """The patch that computes block ``layer`` (itself; a per-layer dispatch says which)."""
        return self

    def attend(self, q, k, v, ctx: AttnContext) -> torch.Tensor:
        """``[B, S, H, D]`` attention output of one layer call (under the model's mask, if any)."""
        return sdpa(q, k, v, ctx.mask)


def rope_frequencies(dim: int, base: float = 10000.0) -> np.ndarray:
    """The ``dim/2`` RoPE angular frequencies ``theta_j = base^(-2j/dim)``, j = 0..dim/2-1."""
    return base ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)


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
# Joint text-video attention (CogVideoX, HunyuanVideo): a patch on the video tokens only
# --------------------------------------------------------------------------------------

def is_plain(patch: AttentionPatch) -> bool:
    """Whether ``patch`` computes plain attention (the base class's ``attend``)."""
    return type(patch).attend is AttentionPatch.attend


def _key_mask(text_mask: torch.Tensor | None, n_video: int, text_first: bool) -> torch.Tensor | None:
    """Boolean key mask over the joint keys: ``text_mask [B, 1, 1, T]`` for the text keys, every
    video key visible; None when no text key is masked."""
    if text_mask is None:
        return None
    ones = text_mask.new_ones(*text_mask.shape[:-1], n_video)
    return torch.cat([text_mask, ones] if text_first else [ones, text_mask], dim=-1)


def joint_text_attention(qt, kt, vt, k, v, text_mask=None, text_first: bool = True) -> torch.Tensor:
    """Text queries over ``[text keys, video keys]`` (stock joint softmax); ``k``/``v`` are the
    model's (rotated) video keys and values. ``[B, T, H, D]``."""
    keys = [kt, k] if text_first else [k, kt]
    vals = [vt, v] if text_first else [v, vt]
    return sdpa(qt, torch.cat(keys, 1), torch.cat(vals, 1), _key_mask(text_mask, k.shape[1], text_first))


def joint_video_attention(q, k, v, text, patch: AttentionPatch, ctx: AttnContext, text_mask=None,
                          rotated=None, text_first: bool = True) -> torch.Tensor:
    """Video queries' output of a joint text-video self-attention with ``patch`` on the
    video-video block. ``[B, S, H, D]``.

    ``q, k, v``: video tokens as the patch wants them (unrotated when ``patch.wants_raw``; then
    ``rotated = (q_rot, k_rot)`` are the model's rotated ones); ``text = (qt, kt, vt)``;
    ``text_mask``: ``[B, 1, 1, T]`` boolean over text keys (True = visible) or None.

    Plain attention is the stock joint softmax, one call over the concatenated keys. Otherwise
    the patch decides how a video query's attention is spread over the video keys, and the
    share of its attention that goes to the text keys stays the stock model's: with ``lse_t``
    and ``lse_v`` the log-sum-exps of its (stock) scores against the text and the video keys,

        out = w_t * attn(q, text keys) + (1 - w_t) * patch(q, k, v),  w_t = sigmoid(lse_t - lse_v),

    the LSE merge of the two key sets (:func:`lse_merge`). With a patch that computes plain
    attention this is the stock joint softmax up to float rounding.
    """
    qt, kt, vt = text
    qr, kr = rotated if rotated is not None else (q, k)
    if is_plain(patch):
        keys = [kt, kr] if text_first else [kr, kt]
        vals = [vt, v] if text_first else [v, vt]
        return sdpa(qr, torch.cat(keys, 1), torch.cat(vals, 1), _key_mask(text_mask, kr.shape[1], text_first))
    out_p = patch.attend(q, k, v, ctx)
    out_t, lse_t = attention_with_lse(qr, kt, vt, None if text_mask is None else text_mask.bool())
    _, lse_v = attention_with_lse(qr, kr, v)
    return lse_merge([out_t, out_p], [lse_t, lse_v])
