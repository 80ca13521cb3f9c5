"""CogVideoX text-to-video adapter (diffusers ``CogVideoXPipeline``, CogVideoX 1.0: 2B / 5B).

The pipeline's latents are frame-major ``[B, F, C, h, w]`` (F = (frames - 1) / 4 + 1, h, w =
H / 8, W / 8; the transformer patchifies 2x2, so H and W are multiples of 16); the loop's
``[C, F, h, w]`` is converted at the adapter's edge. Positions are the pipeline's own 3D RoPE
(``_prepare_rotary_positional_embeddings`` for the window's frames), the noise is drawn
frame-major and scaled by ``init_noise_sigma`` as ``prepare_latents`` does, the model predicts
``v`` (v-prediction DDIM), and guidance runs the negative and positive prompts as one batch of
two, combined as ``uncond + g * (text - uncond)`` in fp32 -- all as the stock pipeline, so
``direct`` reproduces it bit for bit.

Text and video tokens share self-attention (``joint_text_video_attention``); no patch of the
video part is offered yet, so recipes needing ``attention_patches`` or ``temporal_rope`` are
refused at validation. ``CogVideoXDPMScheduler`` (CogVideoX-5b's default) steps with the previous
step's x0 estimate and timestep, which the shared loop's ``scheduler.step(pred, t, x)`` does not
carry: such folders are refused at load. CogVideoX 1.5 (``patch_size_t``) pads latent frames in
front and is refused as well.

Decoding is not streamed: ``AutoencoderKLCogVideoX.decode`` runs its own frame batches with a
convolution cache over the whole latent, so :meth:`decode` decodes the whole latent (exactly as
the pipeline) and :meth:`decode_context` reports the whole video, which makes a distributed
decode one piece on one worker.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from .base import WHOLE_LATENT, Cond, LatentSpace, ModelAdapter, pixel_chunks
from .registry import FAMILIES


class CogVideoXLatentSpace(LatentSpace):
    """CogVideoX latent geometry, initial noise and scheduler from configs alone."""

    def __init__(self, scheduler, channels: int, temporal: int, spatial: int):
        self.scheduler, self.channels, self.temporal, self.spatial = scheduler, channels, temporal, spatial

    @classmethod
    def from_source(cls, source: str) -> "CogVideoXLatentSpace":
        import json
        from pathlib import Path

        import diffusers

        root = Path(source)
        index = json.loads((root / "model_index.json").read_text())
        sched = getattr(diffusers, index["scheduler"][1]).from_pretrained(source, subfolder="scheduler")
        tcfg = json.loads((root / "transformer" / "config.json").read_text())
        vcfg = json.loads((root / "vae" / "config.json").read_text())
        spatial = 2 ** (len(vcfg["block_out_channels"]) - 1)
        return cls(sched, tcfg["in_channels"], vcfg.get("temporal_compression_ratio", 4), spatial)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        return (self.channels, (frames - 1) // self.temporal + 1, height // self.spatial, width // self.spatial)

    def init_noise(self, generator: torch.Generator, frames: int, height: int, width: int) -> torch.Tensor:
        """``randn_tensor`` of the frame-major ``[1, F, C, h, w]`` times ``init_noise_sigma``,
        as ``CogVideoXPipeline.prepare_latents``; returned as ``[C, F, h, w]``."""
        from diffusers.utils.torch_utils import randn_tensor

        c, f, h, w = self.latent_shape(frames, height, width)
        z = randn_tensor((1, f, c, h, w), generator=generator, device=torch.device("cpu"), dtype=torch.float32)
        z = z * self.scheduler.init_noise_sigma
        return z[0].permute(1, 0, 2, 3).contiguous()  # [F, C, h, w] -> [C, F, h, w]

    def make_scheduler(self, steps: int, latent_shape=None):
        sched = type(self.scheduler).from_config(self.scheduler.config)
        sched.set_timesteps(steps, device="cpu")
        return sched

    def predict_x0(self, latent: torch.Tensor, pred: torch.Tensor, scheduler, step: int) -> torch.Tensor:
        """Clean-latent estimate from a v prediction: ``x0 = sqrt(a) z_t - sqrt(1 - a) v``."""
        a = scheduler.alphas_cumprod[int(scheduler.timesteps[step])].to(latent.dtype)
        return a.sqrt() * latent - (1 - a).sqrt() * pred


class CogVideoXAdapter(ModelAdapter):
    family = FAMILIES["cogvideox"]
    latent_space = CogVideoXLatentSpace

    def __init__(self, pipe, device: str = "cpu"):
        self.pipe = pipe
        self.device = torch.device(device)
        self.transformer = pipe.transformer
        self.vae = pipe.vae
        self.dtype = self.transformer.dtype
        self.space = CogVideoXLatentSpace(pipe.scheduler, self.transformer.config.in_channels,
                                          pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial)
        self.patch_key = None
        self.max_sequence_length = self.transformer.config.max_text_seq_length
        """Text tokens per prompt: the transformer's ``max_text_seq_length`` (226, the pipeline default)."""

    @classmethod
    def load(cls, source: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> "CogVideoXAdapter":
        from diffusers import CogVideoXDPMScheduler, CogVideoXPipeline

        pipe = CogVideoXPipeline.from_pretrained(source, dtype=dtype)
        if isinstance(pipe.scheduler, CogVideoXDPMScheduler):
            raise ValueError(f"{source}: CogVideoXDPMScheduler needs the previous step's x0 in its step, which "
                             "the shared sampling loop does not carry; only CogVideoXDDIMScheduler is supported")
        if pipe.transformer.config.patch_size_t is not None:
            raise ValueError(f"{source}: CogVideoX 1.5 (temporal patches, padded latent frames) is not supported")
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe, device)

    # -- method hooks -------------------------------------------------------------------
    def install(self, attention=None, temporal_rope=None, key=None) -> None:
        """No patch points yet (the family lacks ``attention_patches`` and ``temporal_rope``, so
        validation refuses recipes needing them); only the stock model installs."""
        if attention is not None or temporal_rope is not None:
            raise ValueError("cogvideox models take no attention or temporal RoPE patches")
        self.patch_key = key

    @property
    def num_layers(self) -> int:
        return len(self.transformer.transformer_blocks)

    def model_info(self) -> dict:
        cfg = self.transformer.config
        return {"num_layers": self.num_layers, "dim": cfg.num_attention_heads * cfg.attention_head_dim,
                "family": self.family.name}

    def begin_step(self) -> None:
        pass

    # -- conditioning -------------------------------------------------------------------
    def encode_prompt(self, prompt: str, negative_prompt: str, guidance: float) -> Cond:
        with torch.no_grad():
            pos, neg = self.pipe.encode_prompt(prompt=prompt, negative_prompt=negative_prompt,
                                               do_classifier_free_guidance=guidance > 1.0,
                                               max_sequence_length=self.max_sequence_length, device=self.device)
        return Cond(pos.to(self.dtype), None if neg is None else neg.to(self.dtype), float(guidance))

    def cond_from_numpy(self, data: dict) -> Cond:
        return Cond.from_numpy(data, self.device, self.dtype)

    # -- model --------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, latent: torch.Tensor, t: torch.Tensor, cond: Cond, role: str = "plain",
                anchor_key=None) -> torch.Tensor:
        if t.ndim:
            raise ValueError("cogvideox models take one timestep per window")
        x = latent.permute(1, 0, 2, 3).unsqueeze(0).to(self.device, self.dtype)  # [C, L, h, w] -> [1, L, C, h, w]
        sched = self.space.scheduler
        t = t.to(self.device)
        cfg = cond.negative_embeds is not None
        embeds = torch.cat([cond.negative_embeds, cond.prompt_embeds]) if cfg else cond.prompt_embeds
        model_input = torch.cat([x] * 2) if cfg else x
        model_input = sched.scale_model_input(model_input, t)
        s = self.space.spatial
        rotary = None
        if self.transformer.config.use_rotary_positional_embeddings:
            rotary = self.pipe._prepare_rotary_positional_embeddings(x.shape[3] * s, x.shape[4] * s, x.shape[1],
                                                                     self.device)
        pred = self.transformer(hidden_states=model_input, encoder_hidden_states=embeds,
                                timestep=t.expand(model_input.shape[0]), image_rotary_emb=rotary,
                                return_dict=False)[0].float()
        if cfg:
            uncond, text = pred.chunk(2)
            pred = uncond + cond.guidance * (text - uncond)
        return pred[0].permute(1, 0, 2, 3)  # [L, C, h, w] -> [C, L, h, w]

    @staticmethod
    def from_pipeline_latent(z: torch.Tensor, shape) -> torch.Tensor:
        """The pipeline's frame-major ``[1, F, C, h, w]`` as the loop's ``[C, F, h, w]``."""
        return z[0].permute(1, 0, 2, 3)

    # -- decoding -----------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, latent: torch.Tensor, chunk: int = 4, skip: int = 0) -> Iterator[np.ndarray]:
        """The whole latent through ``AutoencoderKLCogVideoX.decode`` as the pipeline's
        ``decode_latents``; yielded ``chunk`` latent frames' worth of pixels at a time."""
        z = latent.unsqueeze(0).to(self.device, self.vae.dtype)  # [1, C, F, h, w]: the pipeline's permute
        z = 1 / self.vae.config.scaling_factor * z
        video = self.vae.decode(z).sample
        frames = self.pipe.video_processor.postprocess_video(video=video, output_type="np")[0]
        yield from pixel_chunks(frames, chunk, skip, self.space.temporal)

    def decode_context(self) -> int:
        """The whole latent: the decode is not split (see the module docstring)."""
        return WHOLE_LATENT

