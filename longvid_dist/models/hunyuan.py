"""HunyuanVideo text-to-video adapter (diffusers ``HunyuanVideoPipeline``).

Latents are ``[B, C, F, h, w]`` (F = (frames - 1) / 4 + 1, h, w = H / 8, W / 8; patch 1x2x2, so
H and W are multiples of 16) -- the loop's layout with a batch axis. The model is
guidance-distilled: ``--guidance`` is the embedded guidance (``guidance * 1000`` into the
transformer, the pipeline's ``guidance_scale``), one forward pass per window and no negative
prompt (the pipeline's ``true_cfg_scale`` is off by default; a negative prompt is ignored).
Prompts go through the Llama encoder with the pipeline's prompt template (a model folder may
name another in ``longvid.json``, as the tiny model does) and the CLIP pooled embedding. The
schedule is FlowMatchEuler with the pipeline's sigmas ``linspace(1, 0, steps + 1)[:-1]``;
positions are computed inside the model from the window's frames. ``direct`` reproduces the
stock pipeline bit for bit.

Text and video tokens share self-attention (``joint_text_video_attention``); no patch of the
video part is offered yet, so recipes needing ``attention_patches`` or ``temporal_rope`` are
refused at validation. The transformer takes one timestep per batch (no ``per_frame_timesteps``).

Decoding is not streamed: ``AutoencoderKLHunyuanVideo.decode`` switches to its temporally tiled,
blended path for long latents, so :meth:`decode` decodes the whole latent exactly as the
pipeline and :meth:`decode_context` reports the whole video.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .base import WHOLE_LATENT, Cond, LatentSpace, ModelAdapter, pixel_chunks
from .registry import FAMILIES


class HunyuanLatentSpace(LatentSpace):
    """HunyuanVideo latent geometry, initial noise and scheduler from configs alone."""

    def __init__(self, scheduler, channels: int, temporal: int, spatial: int):
        self.scheduler, self.channels, self.temporal, self.spatial = scheduler, channels, temporal, spatial

    @classmethod
    def from_source(cls, source: str) -> "HunyuanLatentSpace":
        from diffusers import FlowMatchEulerDiscreteScheduler

        root = Path(source)
        sched = FlowMatchEulerDiscreteScheduler.from_pretrained(source, subfolder="scheduler")
        tcfg = json.loads((root / "transformer" / "config.json").read_text())
        vcfg = json.loads((root / "vae" / "config.json").read_text())
        return cls(sched, tcfg["in_channels"], vcfg.get("temporal_compression_ratio", 4),
                   vcfg.get("spatial_compression_ratio", 8))

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        return (self.channels, (frames - 1) // self.temporal + 1, height // self.spatial, width // self.spatial)

    def init_noise(self, generator: torch.Generator, frames: int, height: int, width: int) -> torch.Tensor:
        """``randn_tensor`` of ``[1, C, F, h, w]`` as ``HunyuanVideoPipeline.prepare_latents``."""
        from diffusers.utils.torch_utils import randn_tensor

        shape = (1, *self.latent_shape(frames, height, width))
        return randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32)[0]

    def make_scheduler(self, steps: int, latent_shape=None):
        sched = type(self.scheduler).from_config(self.scheduler.config)
        sched.set_timesteps(sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1], device="cpu")
        sched.set_begin_index(0)
        return sched

    def predict_x0(self, latent: torch.Tensor, pred: torch.Tensor, scheduler, step: int) -> torch.Tensor:
        """Clean-latent estimate from a flow prediction: ``x0 = z_t - sigma_t * v``."""
        return latent - scheduler.sigmas[step].to(latent.dtype) * pred


class HunyuanAdapter(ModelAdapter):
    family = FAMILIES["hunyuan"]
    latent_space = HunyuanLatentSpace
    max_sequence_length = 256
    """Llama tokens per prompt, HunyuanVideoPipeline's default."""

    def __init__(self, pipe, device: str = "cpu", prompt_template: dict | None = None):
        from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

        self.pipe = pipe
        self.device = torch.device(device)
        self.transformer = pipe.transformer
        self.vae = pipe.vae
        self.dtype = self.transformer.dtype
        self.prompt_template = prompt_template or DEFAULT_PROMPT_TEMPLATE
        """The Llama prompt template (the pipeline's default unless the folder names one)."""
        self.space = HunyuanLatentSpace(pipe.scheduler, self.transformer.config.in_channels,
                                        pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial)
        self.patch_key = None

    @classmethod
    def load(cls, source: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> "HunyuanAdapter":
        from diffusers import HunyuanVideoPipeline

        pipe = HunyuanVideoPipeline.from_pretrained(source, dtype=dtype)
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        extra = Path(source) / "longvid.json"
        template = json.loads(extra.read_text()).get("prompt_template") if extra.is_file() else None
        return cls(pipe, device, template)

    # -- method hooks -------------------------------------------------------------------
    def install(self, attention=None, temporal_rope=None, key=None) -> None:
        """No patch points yet (the family lacks ``attention_patches`` and ``temporal_rope``, so
        validation refuses recipes needing them); only the stock model installs."""
        if attention is not None or temporal_rope is not None:
            raise ValueError("hunyuan models take no attention or temporal RoPE patches")
        self.patch_key = key

    @property
    def num_layers(self) -> int:
        return len(self.transformer.transformer_blocks) + len(self.transformer.single_transformer_blocks)

    def model_info(self) -> dict:
        cfg = self.transformer.config
        return {"num_layers": self.num_layers, "dim": cfg.num_attention_heads * cfg.attention_head_dim,
                "family": self.family.name}

    def begin_step(self) -> None:
        pass

    # -- conditioning -------------------------------------------------------------------
    def encode_prompt(self, prompt: str, negative_prompt: str, guidance: float) -> Cond:
        """Llama + CLIP embeddings of ``prompt``; ``negative_prompt`` is not used (distilled guidance)."""
        with torch.no_grad():
            embeds, pooled, mask = self.pipe.encode_prompt(prompt=prompt, prompt_template=self.prompt_template,
                                                           device=self.device,
                                                           max_sequence_length=self.max_sequence_length)
        return Cond(embeds.to(self.dtype), None, float(guidance),
                    {"pooled": pooled.to(self.dtype), "mask": mask.to(self.dtype)})

    def cond_from_numpy(self, data: dict) -> Cond:
        return Cond.from_numpy(data, self.device, self.dtype)

    # -- model --------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, latent: torch.Tensor, t: torch.Tensor, cond: Cond, role: str = "plain",
                anchor_key=None) -> torch.Tensor:
        if t.ndim:
            raise ValueError("hunyuan models take one timestep per window")
        x = latent.unsqueeze(0).to(self.device, torch.float32)  # [C, L, h, w] -> [1, C, L, h, w]
        guidance = torch.tensor([cond.guidance], dtype=self.dtype, device=self.device) * 1000.0
        out = self.transformer(hidden_states=x.to(self.dtype), timestep=t.to(self.device).expand(1).to(x.dtype),
                               encoder_hidden_states=cond.prompt_embeds, encoder_attention_mask=cond.extras["mask"],
                               pooled_projections=cond.extras["pooled"], guidance=guidance, return_dict=False)[0]
        return out[0].float()

    # -- decoding -----------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, latent: torch.Tensor, chunk: int = 4, skip: int = 0) -> Iterator[np.ndarray]:
        """The whole latent decoded as the pipeline does; yielded ``chunk`` latent frames' worth
        of pixels at a time."""
        z = latent.unsqueeze(0).to(self.device).to(self.vae.dtype) / self.vae.config.scaling_factor
        video = self.vae.decode(z, return_dict=False)[0]
        frames = self.pipe.video_processor.postprocess_video(video, output_type="np")[0]
        yield from pixel_chunks(frames, chunk, skip, self.space.temporal)

    def decode_context(self) -> int:
        """The whole latent: the decode is not split (see the module docstring)."""
        return WHOLE_LATENT
