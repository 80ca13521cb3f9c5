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

    @property
    def tokens_per_frame(self) -> int:
        """Tokens of one latent frame after patchifying (``h * w`` of the grid)."""
        return self.grid[1] * self.grid[2]


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
