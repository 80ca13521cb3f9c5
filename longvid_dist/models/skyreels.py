"""SkyReels-V2 diffusion-forcing adapter (diffusers ``SkyReelsV2DiffusionForcingPipeline``).

The transformer is Wan's architecture with one timestep per latent frame
(``enable_diffusion_forcing``) and an optional block-causal self-attention mask of
``num_frame_per_block`` frames, which the stock pipeline sets from ``causal_block_size``
(``_set_ar_attention``: it rewrites the config for good, so every call here sets it to the
window's own value). Prompt encoding, guidance and the streamed VAE decode are Wan's
(:class:`~longvid_dist.models.wan.WanAdapter`); the diffusion-forcing schedule itself lives in
:mod:`longvid_dist.methods.forcing` and the chunk driver in :mod:`longvid_dist.sampling.chunks`.
"""

from __future__ import annotations

import torch

from .base import Cond, guided
from .registry import FAMILIES
from .wan import WanAdapter


class SkyReelsDFAdapter(WanAdapter):
    family = FAMILIES["skyreels-df"]
    fps = 24
    """The ``fps`` conditioning the stock pipeline passes by default (only models with
    ``inject_sample_info`` read it: 16 -> embedding 0, anything else -> 1)."""

    def __init__(self, pipe, device: str = "cpu"):
        super().__init__(pipe, device)
        self.family = FAMILIES["skyreels-df"]

    @classmethod
    def load(cls, source: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> "SkyReelsDFAdapter":
        from diffusers import SkyReelsV2DiffusionForcingPipeline

        pipe = SkyReelsV2DiffusionForcingPipeline.from_pretrained(source, dtype=dtype)
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe, device)

    def split_plans(self) -> list:
        """Where a sequence-parallel group splits the tokens (the transformer ships no
        ``_cp_plan``): the RoPE tables and the first block's hidden states as in Wan's plan, and
        every block's per-token modulation ``temb`` (``[B, 6, S, D]`` under diffusion forcing:
        the forward builds it per token before the blocks, so it is split where each block takes
        it). The last block's output is gathered rather than ``proj_out``'s, because the output
        norm is modulated per token outside any module. The block-causal mask reaches every
        attention whole (``[1, 1, S, S]``); :meth:`SequenceParallel.attention` takes the rows of
        its queries."""
        from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

        model = self.transformer
        rope = ContextParallelInput(split_dim=1, expected_dims=4, split_output=True)  # cos, sin: [1, S, 1, D]
        temb = ContextParallelInput(split_dim=2, expected_dims=4, split_output=False)  # [B, 6, S, D]
        plan = {"rope": {0: rope, 1: rope}, **{f"blocks.{i}": {"temb": temb} for i in range(len(model.blocks))}}
        plan["blocks.0"]["hidden_states"] = ContextParallelInput(split_dim=1, expected_dims=3, split_output=False)
        last = {f"blocks.{len(model.blocks) - 1}": ContextParallelOutput(gather_dim=1, expected_dims=3)}
        return [(model, plan), (model, last)]  # two plans: the last block both splits temb and gathers

    @torch.no_grad()
    def predict(self, latent: torch.Tensor, t: torch.Tensor, cond: Cond, role: str = "plain",
                anchor_key=None, causal_block: int | None = None, branch: str | None = None) -> torch.Tensor:
        """Guided prediction for ``[C, L, h, w]`` at ``t`` (0-d or ``[L]``, one per latent frame),
        under a block-causal mask of ``causal_block`` frames (1 or None: full attention), as the
        stock pipeline calls the transformer in its denoising loop; ``branch``: one guidance
        branch's raw prediction (:func:`~.base.guided`)."""
        x = latent.unsqueeze(0).to(self.device, self.dtype)  # [C, L, h, w] -> [1, C, L, h, w]
        pt, ph, pw = self.transformer.config.patch_size
        self.ctx.grid = (x.shape[2] // pt, x.shape[3] // ph, x.shape[4] // pw)
        block = causal_block or 1
        if self.transformer.config.num_frame_per_block != block:
            self.transformer._set_ar_attention(block)
        if self.sp is not None:  # under ring with the mask, each ring rank owns whole causal blocks
            self.sp.align = block * self.ctx.tokens_per_frame if block > 1 and self.sp.ring > 1 else 1
        timestep = t.to(self.device).expand(x.shape[2]) if t.ndim == 0 else t.to(self.device)
        timestep = timestep[None]  # [L] -> [1, L]: one timestep per latent frame
        fps = [0 if self.fps == 16 else 1]
        self.ctx.role, self.ctx.anchor_key = role, anchor_key
        kw = dict(hidden_states=x, timestep=timestep, enable_diffusion_forcing=True, fps=fps, return_dict=False)
        out = guided(lambda embeds: self.transformer(encoder_hidden_states=embeds, **kw)[0], cond, self.ctx, branch)
        return out[0].float()
