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

Text and video tokens share self-attention (``joint_text_video_attention``: ``[video, text]``
concatenated in the double- and single-stream blocks, RoPE on the video part, padded text keys
masked). An attention patch acts on the video tokens only (:func:`~.hooks.joint_video_attention`):
it sees the window's video q/k/v ``[B, S, H, D]`` in frame-major order and decides how each
video query's attention is spread over the video keys; the share going to the (unmasked) text
keys stays the stock model's (an exact log-sum-exp split of the softmax), and the text queries
attend over every key exactly as stock. Layers are numbered double-stream blocks first, then
single-stream blocks. The plain patch through the hook is the stock processor's computation
(bit for bit); any other patch computing plain attention equals stock up to float rounding
(< 1e-5 on the tiny model). ``ctx.rotate`` applies the model's RoPE (``HunyuanVideoRotaryPosEmbed``,
base 256, axes ``rope_axes_dim``) with any temporal positions, and a temporal RoPE edit replaces
the temporal frequencies ``256^(-2j/d_t)`` that change, in the table the model computes.

Sequence parallelism: diffusers ships no context-parallel plan for HunyuanVideo;
:func:`_cp_plan` splits the patch embedding's video tokens and the RoPE tables and gathers
``proj_out``'s output. Text tokens are never split (every rank holds all of them, computes their
attention output, the same on every rank); the attention mask the model builds per rank is used
for its text part only. The transformer takes one timestep per batch (no ``per_frame_timesteps``).

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
from .hooks import (AttentionPatch, AttnContext, is_plain, joint_text_attention, joint_video_attention,
                    rope_frequencies, sdpa)
from .parallel import SequenceParallel
from .registry import FAMILIES


def _cp_plan() -> dict:
    """HunyuanVideo's context-parallel plan (diffusers ships none): the patch embedding's video
    tokens and both RoPE tables ``[S, d]`` split along the sequence, ``proj_out`` gathered."""
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    return {
        "x_embedder": {0: ContextParallelInput(split_dim=1, expected_dims=3, split_output=True)},
        "rope": {0: ContextParallelInput(split_dim=0, expected_dims=2, split_output=True),
                 1: ContextParallelInput(split_dim=0, expected_dims=2, split_output=True)},
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }


class _JointAttention:
    """Processor of a double- or single-stream block computing q, k, v as
    ``HunyuanVideoAttnProcessor2_0`` and the video tokens' attention through a patch
    (:func:`~.hooks.joint_video_attention`); under sequence parallelism through
    :meth:`SequenceParallel.joint_attention`."""

    def __init__(self, patch: AttentionPatch, ctx: AttnContext, layer: int, sp: SequenceParallel | None = None):
        self.patch, self.ctx, self.layer, self.sp = patch.for_layer(layer), ctx, layer, sp

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb

        t = encoder_hidden_states.shape[1]
        single = attn.add_q_proj is None
        x = torch.cat([hidden_states, encoder_hidden_states], dim=1) if single else hidden_states
        q, k, v = (f(x).unflatten(2, (attn.heads, -1)) for f in (attn.to_q, attn.to_k, attn.to_v))  # [B, S, H, D]
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if single:
            (q, qt), (k, kt), (v, vt) = (z.split([z.shape[1] - t, t], dim=1) for z in (q, k, v))
        else:
            qt, kt, vt = (f(encoder_hidden_states).unflatten(2, (attn.heads, -1))
                          for f in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
            if attn.norm_added_q is not None:
                qt = attn.norm_added_q(qt)
            if attn.norm_added_k is not None:
                kt = attn.norm_added_k(kt)
        qr, kr = q, k
        if image_rotary_emb is not None:
            qr, kr = (apply_rotary_emb(z, image_rotary_emb, sequence_dim=1) for z in (q, k))
        self.ctx.layer = self.layer
        if self.sp is None and is_plain(self.patch):  # the stock computation: one joint softmax
            out = sdpa(torch.cat([qr, qt], 1), torch.cat([kr, kt], 1), torch.cat([v, vt], 1), attention_mask)
        else:
            mask = None if attention_mask is None else attention_mask[..., -t:].bool()  # [B, 1, 1, T] text keys
            raw = self.patch.wants_raw(self.layer)
            args = (q, k, v) if raw else (qr, kr, v)
            rotated = (qr, kr) if raw else None
            if self.sp is not None:
                vid, txt = self.sp.joint_attention(*args, (qt, kt, vt), self.patch, self.ctx, mask, rotated,
                                                   text_first=False)
            else:
                vid = joint_video_attention(*args, (qt, kt, vt), self.patch, self.ctx, mask, rotated, text_first=False)
                txt = joint_text_attention(qt, kt, vt, kr, v, mask, text_first=False)
            out = torch.cat([vid, txt], dim=1)
        out = out.flatten(2, 3).to(q.dtype)
        vid, txt = out[:, :-t], out[:, -t:]
        if getattr(attn, "to_out", None) is not None:
            vid = attn.to_out[1](attn.to_out[0](vid))
        if getattr(attn, "to_add_out", None) is not None:
            txt = attn.to_add_out(txt)
        return vid, txt


class HunyuanLatentSpace(LatentSpace):
    """HunyuanVideo latent geometry, initial noise and scheduler from configs alone."""

    @classmethod
    def from_source(cls, source: str) -> "HunyuanLatentSpace":
        from diffusers import FlowMatchEulerDiscreteScheduler

        _, tcfg, vcfg = cls.read_configs(source)
        sched = FlowMatchEulerDiscreteScheduler.from_pretrained(source, subfolder="scheduler")
        return cls(sched, tcfg["in_channels"], vcfg.get("temporal_compression_ratio", 4),
                   vcfg.get("spatial_compression_ratio", 8))

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
        self._init_hooks()
        self._theta = None
        """Edited temporal RoPE frequencies (None: stock)."""
        self._rope = None
        """The window's whole RoPE tables ``(cos, sin)`` ``[S, head_dim]`` (before any split)."""
        self._attns = [b.attn for b in self.transformer.transformer_blocks] + \
                      [b.attn for b in self.transformer.single_transformer_blocks]
        self._stock_processors = [a.processor for a in self._attns]
        self._rope_hook = self.transformer.rope.register_forward_hook(self._edit_rope)  # before any SP split

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
    def install(self, attention: AttentionPatch | None = None, temporal_rope=None, key=None) -> None:
        """Install a patch of the video tokens' self-attention (on the layers it selects) and/or
        a temporal RoPE frequency map ``theta -> theta'``; ``None`` restores the stock model."""
        if key is not None and key == self.patch_key:
            return
        self._installed = (attention, temporal_rope)
        self.route_attention(self._attns, self._stock_processors, attention, _JointAttention)
        self._theta = None
        if temporal_rope is not None:
            theta = rope_frequencies(self._dim_t, self.transformer.rope.theta)
            new = np.asarray(temporal_rope(theta), dtype=np.float64)
            self._theta = None if np.array_equal(new, theta) else new
        self.ctx.store.clear()
        self.patch_key = key

    def split_plans(self) -> list:
        """The plan :func:`_cp_plan` writes for HunyuanVideo (diffusers ships none)."""
        return [(self.transformer, _cp_plan())]

    @property
    def _dim_t(self) -> int:
        """Channels of a head rotated by the temporal position (``rope_axes_dim[0]``)."""
        return self.transformer.rope.rope_dim[0]

    def _temporal(self, pos: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
        """Overwrite the temporal columns of ``cos``/``sin`` ``[F, n, D]`` (frame-major rows) with
        the edited frequencies at positions ``pos [F]`` -- only the components that changed."""
        theta = rope_frequencies(self._dim_t, self.transformer.rope.theta)
        p = pos.to(torch.float64).cpu()
        for j in np.flatnonzero(self._theta != theta):
            ang = (p * float(self._theta[j])).view(-1, 1, 1)
            cos[:, :, 2 * j: 2 * j + 2] = torch.cos(ang).to(cos)  # interleaved pair
            sin[:, :, 2 * j: 2 * j + 2] = torch.sin(ang).to(sin)

    def _edit_rope(self, module, args, out):
        """Forward hook of the model's RoPE: remember the window's tables and apply a temporal edit."""
        cos, sin = out
        if self._theta is not None:
            f = self.ctx.grid[0]
            cos, sin = cos.clone().view(f, -1, cos.shape[-1]), sin.clone().view(f, -1, sin.shape[-1])
            self._temporal(torch.arange(f), cos, sin)
            cos, sin = cos.flatten(0, 1), sin.flatten(0, 1)
        self._rope = (cos, sin)
        return cos, sin

    def _rotate_at(self, x: torch.Tensor, frame_pos: torch.Tensor) -> torch.Tensor:
        """The model's RoPE on unrotated ``[B, S, H, D]`` with temporal position ``frame_pos[f]``
        for the tokens of frame f (height/width positions as the model's)."""
        from diffusers.models.embeddings import get_1d_rotary_pos_embed, apply_rotary_emb

        f = self.ctx.grid[0]
        d = self._dim_t
        tc, ts = get_1d_rotary_pos_embed(d, frame_pos.to(torch.float32).cpu(), self.transformer.rope.theta,
                                         use_real=True)
        cos, sin = (z.view(f, -1, z.shape[-1]).clone() for z in self._rope)
        cos[..., :d], sin[..., :d] = tc[:, None].to(cos), ts[:, None].to(sin)
        if self._theta is not None:
            self._temporal(frame_pos, cos, sin)
        return apply_rotary_emb(x, (cos.flatten(0, 1).to(x.device), sin.flatten(0, 1).to(x.device)), sequence_dim=1)

    @property
    def num_layers(self) -> int:
        return len(self.transformer.transformer_blocks) + len(self.transformer.single_transformer_blocks)

    def model_info(self) -> dict:
        cfg = self.transformer.config
        return {"num_layers": self.num_layers, "dim": cfg.num_attention_heads * cfg.attention_head_dim,
                "family": self.family.name}

    def begin_step(self) -> None:
        self.ctx.store.clear()

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
        cfg = self.transformer.config
        self.ctx.grid = (x.shape[2] // cfg.patch_size_t, x.shape[3] // cfg.patch_size, x.shape[4] // cfg.patch_size)
        self.ctx.role, self.ctx.anchor_key, self.ctx.branch = role, anchor_key, "cond"
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
