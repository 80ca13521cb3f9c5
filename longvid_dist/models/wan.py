"""Wan2.1 text-to-video adapter (diffusers ``WanPipeline``).

Latents are ``[B, C, F, h, w]`` with F = (frames - 1) / 4 + 1 and h, w = H / 8, W / 8; the
transformer patchifies 1x2x2, so H and W are multiples of 16. Guidance is two forward passes
(cond, uncond) combined as ``uncond + g * (cond - uncond)``, exactly as ``WanPipeline``
computes it, so a single window over the whole video reproduces the stock pipeline bit for bit.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from .base import Cond, ModelAdapter
from .registry import FAMILIES


class WanAdapter(ModelAdapter):
    family = FAMILIES["wan"]
    max_sequence_length = 512
    """Text tokens per prompt, WanPipeline's default."""

    def __init__(self, pipe, device: str = "cpu"):
        self.pipe = pipe
        self.device = torch.device(device)
        self.transformer = pipe.transformer
        self.vae = pipe.vae
        self.dtype = self.transformer.dtype

    @classmethod
    def load(cls, source: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> "WanAdapter":
        from diffusers import WanPipeline

        pipe = WanPipeline.from_pretrained(source, dtype=dtype)
        if pipe.vae.config.patch_size is not None:
            raise ValueError(f"{source}: patchified VAEs (Wan2.2) are not supported by the Wan2.1 adapter")
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

    # -- latents and scheduler ----------------------------------------------------------
    def init_noise(self, generator: torch.Generator, frames: int, height: int, width: int) -> torch.Tensor:
        latents = self.pipe.prepare_latents(
            1, self.transformer.config.in_channels, height, width, frames,
            torch.float32, self.device, generator,
        )  # [1, C, F, h, w]
        return latents[0]

    def make_scheduler(self, steps: int):
        sched = type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)
        sched.set_timesteps(steps, device=self.device)
        sched.set_begin_index(0)
        return sched

    # -- model --------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, latent: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        x = latent.unsqueeze(0).to(self.device, self.dtype)  # [C, L, h, w] -> [1, C, L, h, w]
        timestep = t.expand(1)
        out = self.transformer(hidden_states=x, timestep=timestep,
                               encoder_hidden_states=cond.prompt_embeds, return_dict=False)[0]
        if cond.negative_embeds is not None:
            uncond = self.transformer(hidden_states=x, timestep=timestep,
                                      encoder_hidden_states=cond.negative_embeds, return_dict=False)[0]
            out = uncond + cond.guidance * (out - uncond)
        return out[0].float()

    # -- decoding -----------------------------------------------------------------------
    def _denormalize(self, z: torch.Tensor) -> torch.Tensor:
        cfg = self.vae.config
        mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1).to(z.device, z.dtype)
        inv_std = 1.0 / torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1).to(z.device, z.dtype)
        return z / inv_std + mean

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, chunk: int = 4) -> Iterator[np.ndarray]:
        """Stream the causal Wan VAE over latent frames, carrying its feature cache across
        chunks: the same per-frame computation as ``AutoencoderKLWan.decode`` on the whole
        latent, but only ``chunk`` latent frames of pixels are alive at a time."""
        vae = self.vae
        z = self._denormalize(latent.unsqueeze(0).to(self.device, vae.dtype))  # [1, C, F, h, w]
        vae.clear_cache()
        feat_cache = vae._feat_map
        try:
            for start in range(0, z.shape[2], chunk):
                x = vae.post_quant_conv(z[:, :, start:start + chunk])
                outs = []
                for i in range(x.shape[2]):
                    outs.append(vae.decoder(x[:, :, i:i + 1], feat_cache=feat_cache, feat_idx=[0],
                                            first_chunk=(start + i == 0)))
                video = torch.clamp(torch.cat(outs, 2), -1.0, 1.0)  # [1, 3, n, H, W]
                frames = self.pipe.video_processor.postprocess_video(video, output_type="np")
                yield frames[0]  # [n, H, W, 3] in [0, 1]
        finally:
            vae.clear_cache()
