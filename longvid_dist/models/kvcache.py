"""A rolling key/value cache for block-causal rollout (Self-Forcing, CausVid, LongLive), as a
self-attention patch the adapter owns: queries of the current block see the cached keys and
values of earlier blocks plus their own block.

The cache keeps ``sink`` frames that are never evicted (the first frames of the video: an
attention sink, FLEX's inference-only sink or LongLive's trained one) and the last ``window``
frames before the block. Queries and keys are rotated at their absolute frame positions
(``ctx.rotate``), so cached keys keep the positions they were written at. Keys/values are kept
per layer and guidance branch. Its size is bounded by ``(sink + window) * tokens_per_frame``
per layer: memory stays flat in video length. A mask of the model's own (``ctx.mask``, over
the block's tokens) applies to the block's keys; the cached ones stay visible to every query.
"""

from __future__ import annotations

import torch

from .hooks import AttentionPatch, AttnContext, sdpa


class KVCache(AttentionPatch):
    """Keys/values of earlier blocks for one rollout (one ``cache_id`` on the adapter)."""

    raw_qk = True

    def __init__(self, sink: int, window: int):
        self.sink = sink
        """Frames at the start of the video that are never evicted."""
        self.window = window
        """Most recent frames kept before the current block."""
        self.offset = 0
        """Absolute latent frame index of the current block's first frame."""
        self.write = False
        """Whether this call appends the block's keys/values (the clean re-run)."""
        self.kv: dict = {}
        """``(layer, branch) -> (k, v, frames)``: ``[B, S, H, D]`` rotated keys, values and the
        absolute frame index of each cached frame."""

    def attend(self, q, k, v, ctx: AttnContext) -> torch.Tensor:
        f = ctx.grid[0]
        pos = torch.arange(self.offset, self.offset + f)
        q, k = ctx.rotate(q, pos), ctx.rotate(k, pos)
        key = (ctx.layer, ctx.branch)
        if key in self.kv:
            ck, cv, frames = self.kv[key]
            kk, vv = torch.cat([ck, k], 1), torch.cat([cv, v], 1)  # [B, S_cache + S, H, D]
        else:
            kk, vv, frames = k, v, []
        mask = ctx.mask
        if mask is not None and kk.shape[1] > k.shape[1]:  # the model's mask covers the block's own keys
            mask = mask.to(torch.bool)
            mask = torch.cat([mask.new_ones(*mask.shape[:-1], kk.shape[1] - k.shape[1]), mask], -1)
        out = sdpa(q, kk, vv, mask)
        if self.write:
            frames = frames + list(range(self.offset, self.offset + f))
            keep = [i for i, fr in enumerate(frames) if fr < self.sink or fr >= self.offset + f - self.window]
            tpf = ctx.tokens_per_frame
            idx = torch.tensor([i * tpf + j for i in keep for j in range(tpf)])
            self.kv[key] = (kk[:, idx].clone(), vv[:, idx].clone(), [frames[i] for i in keep])
        return out

    def nbytes(self) -> int:
        """Bytes held by the cache."""
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v, _ in self.kv.values())

    def frames(self) -> list[int]:
        """Absolute frame indices in the cache (of the first layer and branch)."""
        return next(iter(self.kv.values()))[2] if self.kv else []
