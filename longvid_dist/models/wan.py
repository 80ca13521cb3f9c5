"""Wan text-to-video adapter (diffusers ``WanPipeline``): Wan2.1 and both Wan2.2 kinds.

Latents are ``[B, C, F, h, w]`` with F = (frames - 1) / 4 + 1 and h, w = H / 8, W / 8; the
transformer patchifies 1x2x2, so H and W are multiples of 16. Guidance is two forward passes
(cond, uncond) combined as ``uncond + g * (cond - uncond)``, exactly as ``WanPipeline``
computes it, so a single window over the whole video reproduces the stock pipeline bit for bit.

Wan2.2 A14B (``transformer_2`` + ``boundary_ratio``): the high-noise expert ``transformer``
predicts while the timestep is at least ``boundary_ratio * num_train_timesteps``, the low-noise
expert ``transformer_2`` below it -- chosen per window by the window's timestep (its noisiest
frame when frames have their own), with the pipeline's default ``guidance_scale_2 =
guidance_scale``. Wan2.2 TI2V-5B (``expand_timesteps``): the timestep is given per token, and
the 48-channel VAE patchifies 2x2 (16x spatial): the streamed decode unpatchifies each chunk
before clamping, as ``AutoencoderKLWan._decode`` does, so it stays exact.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from .base import Cond, LatentSpace, ModelAdapter, guided, onload
from .hooks import AttentionPatch, AttnContext, rope_frequencies
from .parallel import SequenceParallel
from .registry import FAMILIES, family_of_index


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's interleaved rotary embedding on ``[B, S, H, D]``."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)  # [B, S, H, D] -> 2 x [B, S, H, D/2]
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class _PatchedSelfAttention:
    """Self-attention processor that computes q, k, v as Wan does and lets a method patch
    decide the attention itself (``patch.attend``); under sequence parallelism (``sp``) the
    group's attention runs through :meth:`SequenceParallel.attention`."""

    def __init__(self, patch: AttentionPatch, ctx: AttnContext, layer: int, sp: SequenceParallel | None = None):
        self.patch, self.ctx, self.layer, self.sp = patch.for_layer(layer), ctx, layer, sp

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        from diffusers.models.transformers.transformer_wan import _get_qkv_projections

        q, k, v = _get_qkv_projections(attn, hidden_states, None)
        q, k = attn.norm_q(q), attn.norm_k(k)
        q, k, v = (x.unflatten(2, (attn.heads, -1)) for x in (q, k, v))  # [B, S, H*D] -> [B, S, H, D]
        self.ctx.layer, self.ctx.mask = self.layer, attention_mask
        if not self.patch.wants_raw(self.layer):
            q, k = _rotate(q, *rotary_emb), _rotate(k, *rotary_emb)
        if self.sp is not None:
            out = self.sp.attention(q, k, v, self.patch, self.ctx)
        else:
            out = self.patch.attend(q, k, v, self.ctx)
        out = out.flatten(2, 3).type_as(q)  # [B, S, H, D] -> [B, S, H*D]
        return attn.to_out[1](attn.to_out[0](out))


class WanLatentSpace(LatentSpace):
    """Wan latent geometry, initial noise and scheduler from configs alone (no weights).

    The noise is ``randn_tensor`` of ``[1, C, F, h, w]`` exactly as ``WanPipeline.prepare_latents``
    draws it, so the coordinator of a distributed render never loads the model.
    """

    @classmethod
    def from_source(cls, source: str) -> "WanLatentSpace":
        import diffusers

        index, tcfg, vcfg = cls.read_configs(source)
        sched = getattr(diffusers, index["scheduler"][1]).from_pretrained(source, subfolder="scheduler")
        return cls(sched, tcfg["in_channels"], vcfg.get("scale_factor_temporal") or 4,
                   vcfg.get("scale_factor_spatial") or 8)

    def init_noise(self, generator: torch.Generator, frames: int, height: int, width: int) -> torch.Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        shape = (1, *self.latent_shape(frames, height, width))
        return randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32)[0]

    def predict_x0(self, latent: torch.Tensor, pred: torch.Tensor, scheduler, step: int) -> torch.Tensor:
        """Clean-latent estimate from a flow prediction: ``x0 = z_t - sigma_t * v``."""
        return latent - scheduler.sigmas[step].to(latent.dtype) * pred

    def make_scheduler(self, steps: int, latent_shape=None):
        sched = type(self.scheduler).from_config(self.scheduler.config)
        sched.set_timesteps(steps, device="cpu")
        sched.set_begin_index(0)
        return sched


class WanAdapter(ModelAdapter):
    family = FAMILIES["wan"]
    latent_space = WanLatentSpace
    max_sequence_length = 512
    """Text tokens per prompt, WanPipeline's default."""

    def __init__(self, pipe, device: str = "cpu"):
        self.pipe = pipe
        self.device = torch.device(device)
        self.family = family_of_index({**pipe.config, "_class_name": "WanPipeline"}) or FAMILIES["wan"]
        self.transformer = pipe.transformer
        self.experts = [m for m in (pipe.transformer, getattr(pipe, "transformer_2", None)) if m is not None]
        """The transformers a patch goes into: one, or Wan2.2's high- and low-noise experts."""
        ratio = pipe.config.get("boundary_ratio")
        self.boundary = None if ratio is None else ratio * pipe.scheduler.config.num_train_timesteps
        """Timestep below which the low-noise expert predicts (Wan2.2 A14B), else None."""
        self.expand_timesteps = bool(pipe.config.get("expand_timesteps", False))
        self.vae = pipe.vae
        self.dtype = self.transformer.dtype
        self.space = WanLatentSpace(pipe.scheduler, pipe.transformer.config.in_channels,
                                    pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial)
        self._init_hooks()
        self.caches: dict = {}
        """Rolling KV caches of causal rollouts on this replica, by cache id."""
        self._stock_processors = [{i: b.attn1.processor for i, b in enumerate(m.blocks)} for m in self.experts]
        rope = self.transformer.rope
        self._stock_rope = (rope.freqs_cos.clone(), rope.freqs_sin.clone())

    # -- method hooks -------------------------------------------------------------------
    def install(self, attention: AttentionPatch | None = None, temporal_rope=None, key=None) -> None:
        """Install a self-attention patch (on the layers it selects) and/or a temporal RoPE
        frequency map ``theta -> theta'``; ``None`` restores the stock model. ``key`` names the
        installation so repeated calls with the same key are free."""
        if key is not None and key == self.patch_key:
            return
        self._installed = (attention, temporal_rope)
        for model, stock in zip(self.experts, self._stock_processors):
            self.route_attention([b.attn1 for b in model.blocks], stock, attention, _PatchedSelfAttention)
        rope = self.transformer.rope
        cos, sin = (t.clone() for t in self._stock_rope)
        if temporal_rope is not None:
            theta = rope_frequencies(rope.t_dim, self.rope_base)
            new = np.asarray(temporal_rope(theta), dtype=np.float64)
            pos = torch.arange(rope.max_seq_len, dtype=torch.float64)
            for j in np.flatnonzero(new != theta):  # only changed components; the rest stay stock
                ang = pos * float(new[j])
                cos[:, 2 * j: 2 * j + 2] = torch.cos(ang).to(cos.dtype).view(-1, 1)  # interleaved pair
                sin[:, 2 * j: 2 * j + 2] = torch.sin(ang).to(sin.dtype).view(-1, 1)
        for model in self.experts:  # the experts share one RoPE configuration
            model.rope.freqs_cos.copy_(cos)
            model.rope.freqs_sin.copy_(sin)
        self.ctx.store.clear()
        self.patch_key = key

    def split_plans(self) -> list:
        """diffusers' context-parallel plan for Wan (``WanTransformer3DModel._cp_plan``), on every
        expert (Wan2.2's ``transformer_2`` too)."""
        return [(m, m._cp_plan) for m in self.experts]

    @property
    def num_layers(self) -> int:
        """Transformer blocks (attention layers a patch can select)."""
        return len(self.transformer.blocks)

    def model_info(self) -> dict:
        """What identifies the architecture for shipped per-model data (FreeLOC profiles)."""
        cfg = self.transformer.config
        return {"num_layers": self.num_layers, "dim": cfg.num_attention_heads * cfg.attention_head_dim,
                "family": self.family.name}

    rope_base = 10000.0
    """Wan's RoPE base (``WanRotaryPosEmbed`` theta)."""

    def begin_step(self) -> None:
        """Forget per-step attention state (ABAM anchors)."""
        self.ctx.store.clear()

    def _rotate_at(self, x: torch.Tensor, frame_pos: torch.Tensor) -> torch.Tensor:
        """Wan's 3D RoPE on unrotated ``[B, S, H, D]`` with temporal position ``frame_pos[f]``
        for the tokens of frame f (height/width positions as usual)."""
        rope = self.transformer.rope
        f, h, w = self.ctx.grid
        pos = frame_pos.long().clamp(0, rope.max_seq_len - 1)
        parts = []
        for table in (rope.freqs_cos, rope.freqs_sin):
            t_, h_, w_ = table.split([rope.t_dim, rope.h_dim, rope.w_dim], dim=1)
            grid = torch.cat([t_[pos].view(f, 1, 1, -1).expand(f, h, w, -1),
                              h_[:h].view(1, h, 1, -1).expand(f, h, w, -1),
                              w_[:w].view(1, 1, w, -1).expand(f, h, w, -1)], dim=-1)
            parts.append(grid.reshape(1, f * h * w, 1, -1).to(x.device))  # [F, h, w, D] -> [1, S, 1, D]
        return _rotate(x, *parts)

    @classmethod
    def load(cls, source: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> "WanAdapter":
        from diffusers import WanPipeline

        pipe = WanPipeline.from_pretrained(source, dtype=dtype)
        if pipe.vae.config.patch_size is not None and not pipe.config.get("expand_timesteps", False):
            raise ValueError(f"{source}: a patchified VAE without expand_timesteps is no known Wan model")
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe, device)

    # -- conditioning -------------------------------------------------------------------
    def encode_prompt(self, prompt: str, negative_prompt: str, guidance: float) -> Cond:
        with torch.no_grad():
            pos, neg = self.pipe.encode_prompt(
                prompt=prompt, negative_prompt=negative_prompt,
                do_classifier_free_guidance=guidance > 1.0, device=self.device,
                max_sequence_length=self.max_sequence_length,
            )
        return Cond(pos.to(self.dtype), None if neg is None else neg.to(self.dtype), float(guidance))

    def cond_from_numpy(self, data: dict) -> Cond:
        def t(a):
            return None if a is None else torch.from_numpy(a).to(self.device, self.dtype)

        return Cond(t(data["pos"]), t(data["neg"]), float(data["guidance"]))

    # -- model --------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, latent: torch.Tensor, t: torch.Tensor, cond: Cond, role: str = "plain",
                anchor_key=None, branch: str | None = None) -> torch.Tensor:
        """Guided prediction for ``[C, L, h, w]`` at ``t`` (0-d, or one per latent frame);
        ``branch``: one guidance branch's raw prediction (:func:`~.base.guided`)."""
        x = latent.unsqueeze(0).to(self.device, self.dtype)  # [C, L, h, w] -> [1, C, L, h, w]
        pt, ph, pw = self.transformer.config.patch_size
        self.ctx.grid = (x.shape[2] // pt, x.shape[3] // ph, x.shape[4] // pw)
        t = t.to(self.device)
        if self.expand_timesteps:  # TI2V: a timestep per token, as the pipeline's ``mask * t``
            per_frame = t.expand(self.ctx.grid[0]) if t.ndim == 0 else t
            ones = torch.ones(self.ctx.tokens_per_frame, dtype=torch.float32, device=self.device)
            timestep = (ones[None, :] * per_frame[:, None]).flatten()[None]  # [1, F*h'*w']
        elif t.ndim == 0:
            timestep = t.expand(1)
        else:  # one timestep per latent frame -> per token, as Wan2.2's expand_timesteps: [1, F*h'*w']
            timestep = t.repeat_interleave(self.ctx.tokens_per_frame)[None]
        model = self.experts[0]  # the (high-noise) transformer
        if self.boundary is not None and float(t.max()) < self.boundary:
            model = self.experts[1]  # low-noise expert (guidance_scale_2 defaults to guidance_scale)
        self.ctx.role, self.ctx.anchor_key = role, anchor_key
        out = guided(lambda embeds: model(hidden_states=x, timestep=timestep, encoder_hidden_states=embeds,
                                          return_dict=False)[0], cond, self.ctx, branch)
        return out[0].float()

    # -- causal rollout (rolling KV cache) ----------------------------------------------
    def predict_block(self, latent: torch.Tensor, t: torch.Tensor, cond: Cond, cache_id: str, offset: int,
                      write: bool, sink: int, window: int, branch: str | None = None) -> torch.Tensor:
        """Guided prediction of one causal block ``[C, B, h, w]`` starting at latent frame
        ``offset``, attending to the rolling KV cache ``cache_id`` (created empty at offset 0);
        ``write`` appends the block's keys/values (the clean re-run at the context noise); the
        write of block 0 starts the cache afresh (a coordinator re-writing a lost cache re-writes
        it on every replica). ``branch``: one guidance branch alone (its cache entries only)."""
        from .kvcache import KVCache

        if cache_id not in self.caches:
            if offset > 0:  # a later block needs the earlier ones' keys/values: this replica lost them
                raise LookupError(f"KV cache {cache_id} is not on this replica (restarted?); re-write it from frame 0")
            self.caches.clear()  # one rollout at a time per replica
        if offset == 0 and write:
            self.caches[cache_id] = KVCache(sink, window)
        cache = self.caches.setdefault(cache_id, KVCache(sink, window))
        cache.offset, cache.write = offset, write
        for model in self.experts:
            for i, block in enumerate(model.blocks):
                block.attn1.set_processor(_PatchedSelfAttention(cache, self.ctx, i, None))
        try:
            return self.predict(latent, t, cond, branch=branch)
        finally:
            key, self.patch_key = self.patch_key, None
            self.install(*self._installed, key=key)  # the render's own processors back

    # -- decoding -----------------------------------------------------------------------
    def _denormalize(self, z: torch.Tensor) -> torch.Tensor:
        cfg = self.vae.config
        mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1).to(z.device, z.dtype)
        inv_std = 1.0 / torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1).to(z.device, z.dtype)
        return z / inv_std + mean

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, chunk: int = 4, skip: int = 0) -> Iterator[np.ndarray]:
        """Stream the causal Wan VAE over latent frames, carrying its feature cache across
        chunks: the same per-frame computation as ``AutoencoderKLWan.decode`` on the whole
        latent, but only ``chunk`` latent frames of pixels are alive at a time.

        ``skip`` leading latent frames are warm-up context whose pixels are not yielded: with
        ``skip >= decode_context()`` the frames after them equal a decode from frame 0 exactly.
        """
        from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

        vae = self.vae
        onload(vae)  # under model offload: the VAE's submodules are called directly below
        z = self._denormalize(latent.unsqueeze(0).to(self.device, vae.dtype))  # [1, C, F, h, w]
        drop = 0 if skip == 0 else 1 + self.space.temporal * (skip - 1)  # pixel frames of the context
        vae.clear_cache()
        feat_cache = vae._feat_map
        try:
            for start in range(0, z.shape[2], chunk):
                x = vae.post_quant_conv(z[:, :, start:start + chunk])
                outs = []
                for i in range(x.shape[2]):
                    outs.append(vae.decoder(x[:, :, i:i + 1], feat_cache=feat_cache, feat_idx=[0],
                                            first_chunk=(start + i == 0)))
                video = torch.cat(outs, 2)
                if vae.config.patch_size is not None:  # Wan2.2's 48-channel VAE: [1, 3*p*p, n, H/p, W/p]
                    video = unpatchify(video, patch_size=vae.config.patch_size)
                video = torch.clamp(video, -1.0, 1.0)  # [1, 3, n, H, W]
                frames = self.pipe.video_processor.postprocess_video(video, output_type="np")[0]
                if drop:
                    n = min(drop, frames.shape[0])
                    frames, drop = frames[n:], drop - n
                if frames.shape[0]:
                    yield frames  # [n, H, W, 3] in [0, 1]
        finally:
            vae.clear_cache()

    def decode_context(self) -> int:
        """Temporal receptive field of the causal VAE decoder, in latent frames (measured)."""
        return vae_receptive_field(self.vae.config)


def vae_receptive_field(config) -> int:
    """Latent frames of context after which a Wan VAE decode no longer depends on earlier frames.

    The decoder's stacked causal convolutions (at 1x, 2x and 4x the latent frame rate) give it a
    finite temporal receptive field: ~30 latent frames for the tiny model, ~40 for Wan2.1's.
    It depends only on the architecture, so it is measured once per config on a narrow
    random-weight copy: perturb latent frame 0 and find the first frame whose pixels do not move.
    """
    key = str(sorted((k, str(v)) for k, v in dict(config).items() if not k.startswith("_")))
    if key in _RF_CACHE:
        return _RF_CACHE[key]
    from diffusers import AutoencoderKLWan

    kw = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    kw.update(base_dim=4, decoder_base_dim=None, z_dim=4, latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    gen = torch.Generator("cpu").manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        vae = AutoencoderKLWan(**kw).eval()
    n = 96
    z = torch.randn(1, 4, n, 1, 1, generator=gen)
    z2 = z.clone()
    z2[:, :, 0] += 1.0
    with torch.no_grad():
        a, b = vae.decode(z).sample, vae.decode(z2).sample  # [1, 3, 1 + 4(n-1), 8, 8]
    t = vae.config.scale_factor_temporal or 4
    moved = (a - b).abs().amax(dim=(0, 1, 3, 4)) > 0
    last = int(torch.nonzero(moved).max())  # last pixel frame that still depends on latent frame 0
    rf = last // t + 2  # latent frame holding that pixel frame, +1 to be past it
    if rf >= n - 1:
        raise RuntimeError("VAE temporal receptive field exceeds the probe length")
    _RF_CACHE[key] = rf
    return rf


_RF_CACHE: dict[str, int] = {}
