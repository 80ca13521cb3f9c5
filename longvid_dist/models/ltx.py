"""LTX-Video text-to-video adapter (diffusers ``LTXPipeline``).

The VAE compresses 8x in time and 32x in space (frames ``8k+1``, H and W multiples of 32); the
transformer sees packed tokens ``[B, F*h*w, C]`` (frame-major, ``_pack_latents``), converted
from and to the loop's ``[C, F, h, w]`` at the adapter's edge. Positions are computed inside
the model from the window's frames/height/width and ``rope_interpolation_scale = (8 /
frame_rate, 32, 32)``, with the pipeline's default ``frame_rate`` of 25 (:attr:`LTXAdapter.
frame_rate`; a render's ``--fps`` is not forwarded). The schedule is FlowMatchEuler with the
pipeline's sigmas ``linspace(1, 1/steps, steps)`` and its dynamic shift ``mu`` from the whole
video's latent sequence length (hence ``make_scheduler(steps, latent_shape)``). Guidance runs
negative and positive prompts as one batch of two, combined in fp32 as the pipeline does; the
pure-noise start is not normalized (the pipeline draws ``randn`` and packs it). So ``direct``
reproduces the stock pipeline bit for bit.

Self-attention (``attn1``) sees video tokens only: attention patches get its q/k/v after the
RMS norms, with LTX's RoPE applied (or, for raw patches, ``ctx.rotate`` with LTX's RoPE at any
temporal positions). The transformer takes a timestep per token, so each latent frame may have
its own (``per_frame_timesteps``). LTX's RoPE frequencies are not ``base^(-2j/d)`` per axis, so
no ``temporal_rope`` edit is offered.

Sequence parallelism follows diffusers' ``LTXVideoTransformer3DModel._cp_plan`` (:func:`_cp_plan`)
for the video tokens, the RoPE tables and ``proj_out``, plus a per-token timestep ``[B, S]``
split like Wan's; the text (``encoder_hidden_states`` and its mask), which diffusers' plan also
splits for its ring cross-attention, is kept whole on every rank: cross-attention (``attn2``)
runs stock on each rank's video rows against every text token.

Decoding is not streamed: the LTX decoder is not causal in time, so :meth:`decode` decodes the
whole latent as the pipeline does (denormalized with the VAE's ``latents_mean/std`` and
``scaling_factor``; a timestep-conditioned VAE gets ``decode_timestep = 0`` and noise scale 0,
the pipeline's defaults, under which the pipeline's decode noise has no effect) and
:meth:`decode_context` reports the whole video.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from .base import WHOLE_LATENT, Cond, LatentSpace, ModelAdapter, pixel_chunks
from .hooks import AttentionPatch, AttnContext
from .parallel import SequenceParallel
from .registry import FAMILIES


def _cp_plan(model) -> dict:
    """diffusers' LTX plan without the text splits (text stays whole on every rank), with a
    per-token timestep ``[B, S]`` split along the sequence (a per-batch ``[B]`` passes)."""
    from diffusers.models._modeling_parallel import ContextParallelInput

    plan = dict(model._cp_plan)
    plan[""] = {"hidden_states": plan[""]["hidden_states"],
                "timestep": ContextParallelInput(split_dim=1, expected_dims=2, split_output=False)}
    return plan


class _PatchedSelfAttention:
    """``attn1`` processor computing q, k, v as ``LTXVideoAttnProcessor`` and letting a method
    patch decide the attention (``patch.attend``); under sequence parallelism (``sp``) through
    :meth:`SequenceParallel.attention`."""

    def __init__(self, patch: AttentionPatch, ctx: AttnContext, layer: int, sp: SequenceParallel | None = None):
        self.patch, self.ctx, self.layer, self.sp = patch.for_layer(layer), ctx, layer, sp

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.transformers.transformer_ltx import apply_rotary_emb

        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        q, k = attn.norm_q(q), attn.norm_k(k)
        self.ctx.layer = self.layer
        if not self.patch.wants_raw(self.layer):
            q, k = apply_rotary_emb(q, image_rotary_emb), apply_rotary_emb(k, image_rotary_emb)
        q, k, v = (x.unflatten(2, (attn.heads, -1)) for x in (q, k, v))  # [B, S, H*D] -> [B, S, H, D]
        if self.sp is not None:
            out = self.sp.attention(q, k, v, self.patch, self.ctx)
        else:
            out = self.patch.attend(q, k, v, self.ctx)
        out = out.flatten(2, 3).to(q.dtype)
        return attn.to_out[1](attn.to_out[0](out))


class LTXLatentSpace(LatentSpace):
    """LTX latent geometry, initial noise and scheduler from configs alone."""

    @classmethod
    def from_source(cls, source: str) -> "LTXLatentSpace":
        from diffusers import FlowMatchEulerDiscreteScheduler

        _, tcfg, v = cls.read_configs(source)
        sched = FlowMatchEulerDiscreteScheduler.from_pretrained(source, subfolder="scheduler")
        spatial = v.get("patch_size", 4) * 2 ** sum(v.get("spatio_temporal_scaling", (True, True, True, False)))
        temporal = v.get("patch_size_t", 1) * 2 ** sum(v.get("spatio_temporal_scaling", (True, True, True, False)))
        return cls(sched, tcfg["in_channels"], temporal, spatial)

    def init_noise(self, generator: torch.Generator, frames: int, height: int, width: int) -> torch.Tensor:
        """``randn_tensor`` of ``[1, C, F, h, w]`` as ``LTXPipeline.prepare_latents`` (which then
        only packs it)."""
        from diffusers.utils.torch_utils import randn_tensor

        shape = (1, *self.latent_shape(frames, height, width))
        return randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32)[0]

    def make_scheduler(self, steps: int, latent_shape=None):
        """The pipeline's sigmas and dynamic shift ``mu`` for the video's latent sequence length."""
        from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift

        if latent_shape is None:
            raise ValueError("LTX's schedule depends on the video's size: pass latent_shape")
        _, f, h, w = latent_shape
        cfg = self.scheduler.config
        mu = calculate_shift(f * h * w, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                             cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
        sched = type(self.scheduler).from_config(cfg)
        sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu, device="cpu")
        return sched

    def predict_x0(self, latent: torch.Tensor, pred: torch.Tensor, scheduler, step: int) -> torch.Tensor:
        """Clean-latent estimate from a flow prediction: ``x0 = z_t - sigma_t * v``."""
        return latent - scheduler.sigmas[step].to(latent.dtype) * pred


class LTXAdapter(ModelAdapter):
    family = FAMILIES["ltx"]
    latent_space = LTXLatentSpace
    max_sequence_length = 128
    """Text tokens per prompt, LTXPipeline's default."""
    frame_rate = 25
    """Frame rate fed into RoPE's temporal scale, LTXPipeline's default."""
    decode_timestep = 0.0
    """Decode timestep of timestep-conditioned VAEs (the pipeline's default; noise scale equals it)."""

    def __init__(self, pipe, device: str = "cpu"):
        self.pipe = pipe
        self.device = torch.device(device)
        self.transformer = pipe.transformer
        self.vae = pipe.vae
        self.dtype = self.transformer.dtype
        self.space = LTXLatentSpace(pipe.scheduler, self.transformer.config.in_channels,
                                    pipe.vae_temporal_compression_ratio, pipe.vae_spatial_compression_ratio)
        self._init_hooks()
        self._stock_processors = {i: b.attn1.processor for i, b in enumerate(self.transformer.transformer_blocks)}

    @classmethod
    def load(cls, source: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> "LTXAdapter":
        from diffusers import LTXPipeline

        pipe = LTXPipeline.from_pretrained(source, dtype=dtype)
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe, device)

    # -- method hooks -------------------------------------------------------------------
    def install(self, attention: AttentionPatch | None = None, temporal_rope=None, key=None) -> None:
        """Install a self-attention patch on the layers it selects; ``None`` restores stock."""
        if key is not None and key == self.patch_key:
            return
        if temporal_rope is not None:
            raise ValueError("ltx models take no temporal RoPE edit")
        self._installed = (attention, temporal_rope)
        self.route_attention([b.attn1 for b in self.transformer.transformer_blocks], self._stock_processors,
                             attention, _PatchedSelfAttention)
        self.ctx.store.clear()
        self.patch_key = key

    def split_plans(self) -> list:
        """diffusers' LTX plan as :func:`_cp_plan` adapts it (text kept whole on every rank)."""
        return [(self.transformer, _cp_plan(self.transformer))]

    @property
    def num_layers(self) -> int:
        return len(self.transformer.transformer_blocks)

    def model_info(self) -> dict:
        cfg = self.transformer.config
        return {"num_layers": self.num_layers, "dim": cfg.num_attention_heads * cfg.attention_head_dim,
                "family": self.family.name}

    def begin_step(self) -> None:
        self.ctx.store.clear()

    def _rope_scale(self):
        return (self.space.temporal / self.frame_rate, self.space.spatial, self.space.spatial)

    def _rotate_at(self, x: torch.Tensor, frame_pos: torch.Tensor) -> torch.Tensor:
        """LTX's RoPE on unrotated ``[B, S, H, D]`` with temporal position ``frame_pos[f]`` for
        the tokens of frame f, through the model's ``video_coords`` path."""
        from diffusers.models.transformers.transformer_ltx import apply_rotary_emb

        rope = self.transformer.rope
        f, h, w = self.ctx.grid
        st, sh, sw = self._rope_scale()
        grid = torch.stack(torch.meshgrid(frame_pos.to(x.device, torch.float32),
                                          torch.arange(h, dtype=torch.float32, device=x.device),
                                          torch.arange(w, dtype=torch.float32, device=x.device), indexing="ij"))
        coords = torch.stack([grid[0] * st * rope.patch_size_t, grid[1] * sh * rope.patch_size,
                              grid[2] * sw * rope.patch_size]).flatten(1)[None]  # [1, 3, S]
        freqs = rope.forward(x, video_coords=coords)  # not through the module's (SP split) hooks
        if self.ctx.heads is not None:  # LTX's RoPE spans every head's channels: this rank's heads
            h0, n = self.ctx.heads
            d = x.shape[3]
            freqs = tuple(z[..., h0 * d:(h0 + n) * d] for z in freqs)
        return apply_rotary_emb(x.flatten(2), freqs).unflatten(2, (x.shape[2], -1))

    # -- conditioning -------------------------------------------------------------------
    def encode_prompt(self, prompt: str, negative_prompt: str, guidance: float) -> Cond:
        with torch.no_grad():
            pos, mask, neg, neg_mask = self.pipe.encode_prompt(
                prompt=prompt, negative_prompt=negative_prompt, do_classifier_free_guidance=guidance > 1.0,
                max_sequence_length=self.max_sequence_length, device=self.device)
        extras = {"mask": mask} if neg is None else {"mask": mask, "neg_mask": neg_mask}
        return Cond(pos.to(self.dtype), None if neg is None else neg.to(self.dtype), float(guidance), extras)

    def cond_from_numpy(self, data: dict) -> Cond:
        return Cond.from_numpy(data, self.device, self.dtype)

    # -- model --------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, latent: torch.Tensor, t: torch.Tensor, cond: Cond, role: str = "plain",
                anchor_key=None) -> torch.Tensor:
        cfg = self.transformer.config
        c, f, h, w = latent.shape
        x = self.pipe._pack_latents(latent.unsqueeze(0).to(self.device, torch.float32),
                                    cfg.patch_size, cfg.patch_size_t)  # [1, S, C']
        cfg_on = cond.negative_embeds is not None
        embeds = torch.cat([cond.negative_embeds, cond.prompt_embeds]) if cfg_on else cond.prompt_embeds
        mask = torch.cat([cond.extras["neg_mask"], cond.extras["mask"]]) if cfg_on else cond.extras["mask"]
        model_input = (torch.cat([x] * 2) if cfg_on else x).to(embeds.dtype)
        self.ctx.grid = (f // cfg.patch_size_t, h // cfg.patch_size, w // cfg.patch_size)
        t = t.to(self.device)
        if t.ndim == 0:
            timestep = t.expand(model_input.shape[0])
        else:  # one timestep per latent frame -> per token [B, S]
            timestep = t.repeat_interleave(self.ctx.tokens_per_frame)[None].expand(model_input.shape[0], -1)
        self.ctx.role, self.ctx.anchor_key = role, anchor_key
        self.ctx.branch = "cfg" if cfg_on else "cond"  # both branches are one batch
        pred = self.transformer(hidden_states=model_input, encoder_hidden_states=embeds, timestep=timestep,
                                encoder_attention_mask=mask, num_frames=f, height=h, width=w,
                                rope_interpolation_scale=self._rope_scale(), return_dict=False)[0].float()
        if cfg_on:
            uncond, text = pred.chunk(2)
            pred = uncond + cond.guidance * (text - uncond)
        return self.pipe._unpack_latents(pred, f // cfg.patch_size_t, h // cfg.patch_size, w // cfg.patch_size,
                                         cfg.patch_size, cfg.patch_size_t)[0]  # [1, S, C'] -> [C, F, h, w]

    @staticmethod
    def from_pipeline_latent(z: torch.Tensor, shape) -> torch.Tensor:
        """The pipeline's packed ``[1, S, C]`` (patch 1) as the loop's ``[C, F, h, w]``."""
        from diffusers import LTXPipeline

        c, f, h, w = shape
        return LTXPipeline._unpack_latents(z, f, h, w)[0]

    # -- decoding -----------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, latent: torch.Tensor, chunk: int = 4, skip: int = 0) -> Iterator[np.ndarray]:
        """The whole latent decoded as the pipeline does; yielded ``chunk`` latent frames' worth
        of pixels at a time."""
        vae = self.vae
        z = latent.unsqueeze(0).to(self.device, torch.float32)
        z = self.pipe._denormalize_latents(z, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
        z = z.to(self.dtype)
        timestep = None
        if vae.config.timestep_conditioning:
            timestep = torch.tensor([self.decode_timestep], device=self.device, dtype=z.dtype)
            scale = timestep[:, None, None, None, None]  # noise scale = decode timestep (pipeline default)
            z = (1 - scale) * z + scale * torch.zeros_like(z)  # the pipeline's noise has weight 0 here
        video = vae.decode(z.to(vae.dtype), timestep, return_dict=False)[0]
        frames = self.pipe.video_processor.postprocess_video(video, output_type="np")[0]
        yield from pixel_chunks(frames, chunk, skip, self.space.temporal)

    def decode_context(self) -> int:
        """The whole latent: the decode is not split (see the module docstring)."""
        return WHOLE_LATENT
