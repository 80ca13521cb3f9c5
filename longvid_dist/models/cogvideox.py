"""CogVideoX text-to-video adapter (diffusers ``CogVideoXPipeline``, CogVideoX 1.0: 2B / 5B).

The pipeline's latents are frame-major ``[B, F, C, h, w]`` (F = (frames - 1) / 4 + 1, h, w =
H / 8, W / 8; the transformer patchifies 2x2, so H and W are multiples of 16); the loop's
``[C, F, h, w]`` is converted at the adapter's edge. Positions are the pipeline's own 3D RoPE
(``_prepare_rotary_positional_embeddings`` for the window's frames), the noise is drawn
frame-major and scaled by ``init_noise_sigma`` as ``prepare_latents`` does, the model predicts
``v`` (v-prediction DDIM), and guidance runs the negative and positive prompts as one batch of
two, combined as ``uncond + g * (text - uncond)`` in fp32 -- all as the stock pipeline, so
``direct`` reproduces it bit for bit.

Text and video tokens share self-attention (``joint_text_video_attention``: ``[text, video]``
concatenated, RoPE on the video part only). An attention patch acts on the video tokens only
(:func:`~.hooks.joint_video_attention`): it sees the window's video q/k/v ``[B, S, H, D]`` in
frame-major order and decides how each video query's attention is spread over the video keys;
the share of that query's attention that goes to the text keys stays the stock model's (the
log-sum-exps of its stock scores against the text and the video keys merge the two parts, an
exact softmax split), and the text queries attend over every key exactly as stock. The plain
patch through the hook is the stock processor's computation (the same single joint softmax:
bit for bit); any other patch computing plain attention equals stock up to float rounding
(measured < 1e-5 on the tiny model). ``ctx.rotate`` applies the pipeline's 3D RoPE
(``get_3d_rotary_pos_embed``) with any temporal positions, and a temporal RoPE edit replaces
the temporal frequencies ``10000^(-2j/d_t)`` (``d_t = head_dim / 4``) that change, the rest of
the table staying the pipeline's own.

Sequence parallelism: diffusers ships no context-parallel plan for CogVideoX;
:data:`CP_PLAN` splits the video tokens entering the first block and the RoPE tables passed to
the model, and gathers ``proj_out``'s output. Text tokens are never split (every rank holds all
of them and computes their attention output, the same on every rank).

``CogVideoXDPMScheduler`` (CogVideoX-5b's default) steps with the previous
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
from .hooks import (AttentionPatch, AttnContext, is_plain, joint_text_attention, joint_video_attention,
                    rope_frequencies, sdpa)
from .parallel import SequenceParallel
from .registry import FAMILIES


def _cp_plan() -> dict:
    """CogVideoX's context-parallel plan (diffusers ships none): the video tokens entering the
    first block and both RoPE tables ``[S, d]`` split along the sequence, ``proj_out`` gathered."""
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    return {
        "": {"image_rotary_emb": ContextParallelInput(split_dim=0, expected_dims=2, split_output=False)},
        "transformer_blocks.0": {"hidden_states": ContextParallelInput(split_dim=1, expected_dims=3,
                                                                       split_output=False)},
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }


class _JointAttention:
    """``attn1`` processor computing q, k, v as ``CogVideoXAttnProcessor2_0`` and the attention
    of the video tokens through a patch (:func:`~.hooks.joint_video_attention`); under sequence
    parallelism through :meth:`SequenceParallel.joint_attention`."""

    def __init__(self, patch: AttentionPatch, ctx: AttnContext, layer: int, sp: SequenceParallel | None = None):
        self.patch, self.ctx, self.layer, self.sp = patch.for_layer(layer), ctx, layer, sp

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb

        if attention_mask is not None:
            raise ValueError("cogvideox's self-attention takes no attention mask")
        t = encoder_hidden_states.shape[1]
        x = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        q, k, v = (f(x).unflatten(2, (attn.heads, -1)) for f in (attn.to_q, attn.to_k, attn.to_v))  # [B, S, H, D]
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        (qt, q), (kt, k), (vt, v) = (z.split([t, z.shape[1] - t], dim=1) for z in (q, k, v))
        qr, kr = q, k
        if image_rotary_emb is not None:  # on [B, H, S, D] as the stock processor
            qr, kr = (apply_rotary_emb(z.transpose(1, 2), image_rotary_emb).transpose(1, 2) for z in (q, k))
        self.ctx.layer = self.layer
        if self.sp is None and is_plain(self.patch):  # the stock computation: one joint softmax
            out = sdpa(torch.cat([qt, qr], 1), torch.cat([kt, kr], 1), torch.cat([vt, v], 1))
        else:
            raw = self.patch.wants_raw(self.layer)
            args = (q, k, v) if raw else (qr, kr, v)
            rotated = (qr, kr) if raw else None
            if self.sp is not None:
                vid, txt = self.sp.joint_attention(*args, (qt, kt, vt), self.patch, self.ctx, None, rotated)
            else:
                vid = joint_video_attention(*args, (qt, kt, vt), self.patch, self.ctx, None, rotated)
                txt = joint_text_attention(qt, kt, vt, kr, v)
            out = torch.cat([txt, vid], dim=1)
        out = attn.to_out[1](attn.to_out[0](out.flatten(2, 3).type_as(q)))
        return out[:, t:], out[:, :t]


class CogVideoXLatentSpace(LatentSpace):
    """CogVideoX latent geometry, initial noise and scheduler from configs alone."""

    @classmethod
    def from_source(cls, source: str) -> "CogVideoXLatentSpace":
        import diffusers

        index, tcfg, vcfg = cls.read_configs(source)
        sched = getattr(diffusers, index["scheduler"][1]).from_pretrained(source, subfolder="scheduler")
        spatial = 2 ** (len(vcfg["block_out_channels"]) - 1)
        return cls(sched, tcfg["in_channels"], vcfg.get("temporal_compression_ratio", 4), spatial)

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
        self._init_hooks()
        self._theta = None
        """Edited temporal RoPE frequencies (None: stock)."""
        self._rope = None
        """The window's RoPE tables ``(cos, sin)`` ``[S, head_dim]`` as passed to the model."""
        self._stock_processors = {i: b.attn1.processor for i, b in enumerate(self.transformer.transformer_blocks)}
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
    def install(self, attention: AttentionPatch | None = None, temporal_rope=None, key=None) -> None:
        """Install a patch of the video tokens' self-attention (on the layers it selects) and/or
        a temporal RoPE frequency map ``theta -> theta'``; ``None`` restores the stock model."""
        if key is not None and key == self.patch_key:
            return
        self._installed = (attention, temporal_rope)
        self.route_attention([b.attn1 for b in self.transformer.transformer_blocks], self._stock_processors,
                             attention, _JointAttention)
        self._theta = None
        if temporal_rope is not None:
            if not self.transformer.config.use_rotary_positional_embeddings:
                raise ValueError("this cogvideox model has no rotary embedding (CogVideoX-2b): no temporal RoPE edit")
            theta = rope_frequencies(self._dim_t, self.rope_base)
            new = np.asarray(temporal_rope(theta), dtype=np.float64)
            self._theta = None if np.array_equal(new, theta) else new
        self.ctx.store.clear()
        self.patch_key = key

    def split_plans(self) -> list:
        """The plan :func:`_cp_plan` writes for CogVideoX (diffusers ships none)."""
        return [(self.transformer, _cp_plan())]

    rope_base = 10000.0
    """CogVideoX's RoPE base (``get_3d_rotary_pos_embed``'s theta)."""

    @property
    def _dim_t(self) -> int:
        """Channels of a head rotated by the temporal position (``get_3d_rotary_pos_embed``)."""
        return self.transformer.config.attention_head_dim // 4

    def _temporal(self, pos: torch.Tensor, stock: tuple | None = None):
        """Temporal ``(cos, sin)`` ``[F, d_t]`` at positions ``pos``: the pipeline's
        ``get_1d_rotary_pos_embed`` (or the given ``stock`` columns), with the edited
        frequencies' columns recomputed."""
        from diffusers.models.embeddings import get_1d_rotary_pos_embed

        if stock is None:
            stock = get_1d_rotary_pos_embed(self._dim_t, pos.float(), theta=self.rope_base, use_real=True)
        cos, sin = (z.clone() for z in stock)
        if self._theta is not None:
            theta = rope_frequencies(self._dim_t, self.rope_base)
            p = pos.to(torch.float64)
            for j in np.flatnonzero(self._theta != theta):  # only changed components
                ang = p * float(self._theta[j])
                cos[:, 2 * j: 2 * j + 2] = torch.cos(ang).to(cos.dtype).view(-1, 1)  # interleaved pair
                sin[:, 2 * j: 2 * j + 2] = torch.sin(ang).to(sin.dtype).view(-1, 1)
        return cos, sin

    def _rope_tables(self, f: int, h: int, w: int):
        """The pipeline's RoPE tables for a window of ``f`` latent frames of ``h x w`` latents,
        with a temporal edit applied."""
        s = self.space.spatial
        cos, sin = self.pipe._prepare_rotary_positional_embeddings(h * s, w * s, f, self.device)
        if self._theta is None:
            return cos, sin
        d = self._dim_t
        grid = (f, cos.shape[0] // f)
        tc, ts = self._temporal(torch.arange(f), (cos.view(*grid, -1)[:, 0, :d], sin.view(*grid, -1)[:, 0, :d]))
        cos, sin = cos.clone().view(*grid, -1), sin.clone().view(*grid, -1)
        cos[..., :d], sin[..., :d] = tc[:, None].to(cos), ts[:, None].to(sin)
        return cos.flatten(0, 1), sin.flatten(0, 1)

    def _rotate_at(self, x: torch.Tensor, frame_pos: torch.Tensor) -> torch.Tensor:
        """The pipeline's 3D RoPE on unrotated ``[B, S, H, D]`` with temporal position
        ``frame_pos[f]`` for the tokens of frame f (height/width as the pipeline's)."""
        from diffusers.models.embeddings import apply_rotary_emb

        if self._rope is None:  # no RoPE (CogVideoX-2b): positions were added to the input tokens
            return x
        f = self.ctx.grid[0]
        d = self._dim_t
        tc, ts = self._temporal(frame_pos.to(torch.float32).cpu())
        tables = []
        for table, tt in zip(self._rope, (tc, ts)):
            table = table.view(f, -1, table.shape[-1]).clone()
            table[..., :d] = tt[:, None].to(table)
            tables.append(table.flatten(0, 1).to(x.device))
        return apply_rotary_emb(x.transpose(1, 2), tuple(tables)).transpose(1, 2)

    @property
    def num_layers(self) -> int:
        return len(self.transformer.transformer_blocks)

    def model_info(self) -> dict:
        cfg = self.transformer.config
        return {"num_layers": self.num_layers, "dim": cfg.num_attention_heads * cfg.attention_head_dim,
                "family": self.family.name}

    def begin_step(self) -> None:
        self.ctx.store.clear()

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
        rotary = None
        if self.transformer.config.use_rotary_positional_embeddings:
            rotary = self._rope_tables(x.shape[1], x.shape[3], x.shape[4])
        self._rope = rotary
        p = self.transformer.config.patch_size
        self.ctx.grid = (x.shape[1], x.shape[3] // p, x.shape[4] // p)
        self.ctx.role, self.ctx.anchor_key = role, anchor_key
        self.ctx.branch = "cfg" if cfg else "cond"  # both branches are one batch
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

