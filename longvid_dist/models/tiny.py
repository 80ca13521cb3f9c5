"""Tiny random-weight pipelines built offline from the real diffusers/transformers classes.

Tests and the demo use them: no model hub is needed, yet every component is the real class a
full-size checkpoint uses, and the model is saved with ``save_pretrained`` and loaded back with
``from_pretrained`` so the real loading path runs. Weights are a pure function of the seed.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from pathlib import Path

# A small in-memory SentencePiece-style vocabulary: whole words for the demo prompts plus
# single letters so any ASCII prompt tokenizes to something other than <unk>.
_WORDS = (
    "a an the of on in at and with to is cat dog car red blue green city night day beach sunset "
    "runs drives flies walks river forest mountain sky clouds ocean waves bird street rain snow "
    "blurry low quality worst static bad distorted"
).split()
_LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789"


@functools.lru_cache(maxsize=None)
def tiny_tokenizer(name: str = "tiny-wan"):
    """The tiny model's tokenizer, built in memory (no weights): counts a prompt's tokens."""
    return _tokenizer()


def _tokenizer():
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + w, -1.0 - i * 0.01) for i, w in enumerate(_WORDS)]
    vocab += [("\u2581", -5.0)] + [(c, -10.0) for c in _LETTERS]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


TINY_WAN_CONFIGS = {
    "text_encoder": dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                         pad_token_id=0, eos_token_id=1),
    "transformer": dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
                        out_channels=16, text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                        qk_norm="rms_norm_across_heads", rope_max_seq_len=1024),
    "vae": dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]),
}
"""Constructor arguments of the tiny Wan components: what ``--dry-run`` reads instead of building it."""

TINY_CONFIGS = {"tiny-wan": TINY_WAN_CONFIGS, "tiny-skyreels-df": TINY_WAN_CONFIGS}
"""Constructor arguments a dry run reads (tiny-skyreels-df has tiny-wan's dimensions)."""


def build_tiny_wan(seed: int = 0):
    """Build a tiny WanPipeline (UMT5 text encoder, WanTransformer3DModel, AutoencoderKLWan,
    UniPC flow scheduler as in Wan2.1's diffusers release). Same seed -> same weights."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = _tokenizer()
    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(
        UMT5Config(vocab_size=len(tokenizer), **TINY_WAN_CONFIGS["text_encoder"])
    ).eval()
    torch.manual_seed(seed + 1)
    transformer = WanTransformer3DModel(**TINY_WAN_CONFIGS["transformer"]).eval()
    torch.manual_seed(seed + 2)
    vae = AutoencoderKLWan(**TINY_WAN_CONFIGS["vae"]).eval()
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0
    )
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer,
                       vae=vae, scheduler=scheduler)


def _tiny_wan_transformer(in_channels: int = 16):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=in_channels,
        out_channels=in_channels, text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=1024,
    ).eval()


def _tiny_umt5(tokenizer):
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
        )
    ).eval()


def build_tiny_wan22(seed: int = 0):
    """Tiny Wan2.2 A14B-style pipeline: two experts (``transformer`` for high noise,
    ``transformer_2`` for low noise) switched at ``boundary_ratio * 1000``. The flow shift of 1
    puts the boundary (875) between the first and the later steps of a short run, so a 4-step
    test reaches both experts."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline

    tokenizer = _tokenizer()
    torch.manual_seed(seed)
    text_encoder = _tiny_umt5(tokenizer)
    torch.manual_seed(seed + 1)
    transformer = _tiny_wan_transformer()
    torch.manual_seed(seed + 3)
    transformer_2 = _tiny_wan_transformer()
    torch.manual_seed(seed + 2)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        temperal_downsample=[False, True, True],
    ).eval()
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=1.0
    )
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer,
                       transformer_2=transformer_2, vae=vae, scheduler=scheduler, boundary_ratio=0.875)


def build_tiny_wan22_ti2v(seed: int = 0):
    """Tiny Wan2.2 TI2V-5B-style pipeline: ``expand_timesteps`` (a timestep per token) and a
    48-channel residual VAE that patchifies 2x2 (16x spatial compression)."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline

    tokenizer = _tokenizer()
    torch.manual_seed(seed)
    text_encoder = _tiny_umt5(tokenizer)
    torch.manual_seed(seed + 1)
    transformer = _tiny_wan_transformer(in_channels=48)
    torch.manual_seed(seed + 2)
    vae = AutoencoderKLWan(
        base_dim=8, decoder_base_dim=8, z_dim=48, in_channels=12, out_channels=12, dim_mult=[1, 1, 1, 1],
        num_res_blocks=1, temperal_downsample=[False, True, True], is_residual=True, patch_size=2,
        scale_factor_spatial=16, scale_factor_temporal=4,
        latents_mean=[0.0] * 48, latents_std=[1.0] * 48,
    ).eval()
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=5.0
    )
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer,
                       vae=vae, scheduler=scheduler, expand_timesteps=True)


def _tiny_t5(tokenizer):
    """A tiny T5 encoder (d_model 32, 2 layers) over ``tokenizer``: CogVideoX's and LTX's text encoder."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                   relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1)).eval()


def build_tiny_cogvideox(seed: int = 0):
    """Tiny CogVideoXPipeline (T5, CogVideoXTransformer3DModel with 3D RoPE, AutoencoderKLCogVideoX,
    CogVideoXDDIMScheduler with v-prediction as CogVideoX-2b ships it)."""
    import torch
    from diffusers import (AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline,
                           CogVideoXTransformer3DModel)

    tokenizer = _tokenizer()
    torch.manual_seed(seed)
    text_encoder = _tiny_t5(tokenizer)
    torch.manual_seed(seed + 1)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=2,
        text_embed_dim=32, num_layers=2, sample_width=4, sample_height=4, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=16, use_rotary_positional_embeddings=True,
    ).eval()
    torch.manual_seed(seed + 2)
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
        layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
    ).eval()
    scheduler = CogVideoXDDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=True,
        snr_shift_scale=3.0, timestep_spacing="trailing", steps_offset=0,
    )
    return CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae,
                             scheduler=scheduler)


def build_tiny_ltx(seed: int = 0):
    """Tiny LTXPipeline (T5, LTXVideoTransformer3DModel, AutoencoderKLLTXVideo with LTX's own
    8x temporal / 32x spatial compression, FlowMatchEuler with dynamic shift)."""
    import torch
    from diffusers import (AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline,
                           LTXVideoTransformer3DModel)

    tokenizer = _tokenizer()
    torch.manual_seed(seed)
    text_encoder = _tiny_t5(tokenizer)
    torch.manual_seed(seed + 1)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4, attention_head_dim=8,
        cross_attention_dim=32, num_layers=2, caption_channels=32,
    ).eval()
    torch.manual_seed(seed + 2)
    vae = AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True, False), decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4, upsample_factor=(1,) * 4, timestep_conditioning=False,
        patch_size=4, patch_size_t=1, encoder_causal=True, decoder_causal=False,
    ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05,
        base_image_seq_len=1024, max_image_seq_len=4096, shift_terminal=0.1,
    )
    return LTXPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae,
                       scheduler=scheduler)


def _bpe_vocab(words, specials):
    """A byte-level-free BPE vocabulary over single characters plus merges building ``words``."""
    vocab = {t: i for i, t in enumerate(specials)}
    chars = sorted(set("".join(words)) | set(_LETTERS) | set(" ."))
    for c in chars:
        vocab.setdefault(c, len(vocab))
    merges = []
    for w in words:
        cur = w[0]
        for c in w[1:]:
            merges.append((cur, c))
            cur = cur + c
            vocab.setdefault(cur, len(vocab))
    return vocab, list(dict.fromkeys(merges))


HUNYUAN_TINY_TEMPLATE = {"template": "{}", "crop_start": 0}
"""The tiny HunyuanVideo's prompt template: the stock one crops 95 tokens of a system prompt,
which a tiny vocabulary cannot tokenize to exactly 95 tokens (it lives in the folder's
``longvid.json`` so the adapter uses it)."""


def build_tiny_hunyuan(seed: int = 0):
    """Tiny HunyuanVideoPipeline (Llama + CLIP text encoders, guidance-distilled
    HunyuanVideoTransformer3DModel, AutoencoderKLHunyuanVideo, FlowMatchEuler shift 7)."""
    import torch
    from diffusers import (AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline,
                           HunyuanVideoTransformer3DModel)
    from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTokenizer, LlamaConfig, LlamaModel,
                              LlamaTokenizer)

    vocab, merges = _bpe_vocab(_WORDS, ["<unk>", "<s>", "</s>"])
    tokenizer = LlamaTokenizer(vocab=vocab, merges=merges, padding_side="right")
    tokenizer.pad_token = "</s>"
    cvocab, cmerges = _bpe_vocab([w + "</w>" for w in _WORDS], ["<|startoftext|>", "<|endoftext|>"])
    for c in _LETTERS:
        cvocab.setdefault(c + "</w>", len(cvocab))
    tokenizer_2 = CLIPTokenizer(vocab=cvocab, merges=cmerges)
    torch.manual_seed(seed)
    text_encoder = LlamaModel(LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                          num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=2,
                                          max_position_embeddings=512, pad_token_id=2)).eval()
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModel(CLIPTextConfig(vocab_size=len(cvocab), hidden_size=8, intermediate_size=16,
                                                  projection_dim=8, num_hidden_layers=2, num_attention_heads=2,
                                                  max_position_embeddings=77, bos_token_id=0,
                                                  eos_token_id=1, pad_token_id=1)).eval()
    torch.manual_seed(seed + 1)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4),
    ).eval()
    torch.manual_seed(seed + 2)
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        norm_num_groups=4, spatial_compression_ratio=8, temporal_compression_ratio=4, mid_block_add_attention=True,
    ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    return HunyuanVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, tokenizer_2=tokenizer_2,
                                text_encoder_2=text_encoder_2, transformer=transformer, vae=vae,
                                scheduler=scheduler)


def build_tiny_skyreels_df(seed: int = 0):
    """Tiny SkyReelsV2DiffusionForcingPipeline (UMT5, SkyReelsV2Transformer3DModel with one
    timestep per latent frame, the tiny Wan VAE, UniPC flow scheduler with SkyReels' shift 8)."""
    import torch
    from diffusers import (AutoencoderKLWan, SkyReelsV2DiffusionForcingPipeline, SkyReelsV2Transformer3DModel,
                           UniPCMultistepScheduler)

    tokenizer = _tokenizer()
    torch.manual_seed(seed)
    text_encoder = _tiny_umt5(tokenizer)
    torch.manual_seed(seed + 1)
    transformer = SkyReelsV2Transformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=1024, inject_sample_info=False, num_frame_per_block=1,
    ).eval()
    torch.manual_seed(seed + 2)
    vae = AutoencoderKLWan(**TINY_WAN_CONFIGS["vae"]).eval()
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=8.0
    )
    return SkyReelsV2DiffusionForcingPipeline(tokenizer=tokenizer, text_encoder=text_encoder,
                                              transformer=transformer, vae=vae, scheduler=scheduler)


_BUILDERS = {"tiny-wan": build_tiny_wan, "tiny-wan22": build_tiny_wan22, "tiny-wan22-ti2v": build_tiny_wan22_ti2v,
             "tiny-cogvideox": build_tiny_cogvideox, "tiny-ltx": build_tiny_ltx, "tiny-hunyuan": build_tiny_hunyuan,
             "tiny-skyreels-df": build_tiny_skyreels_df}

_EXTRA = {"tiny-hunyuan": {"prompt_template": HUNYUAN_TINY_TEMPLATE}}
"""``longvid.json`` written next to a tiny model's ``model_index.json``: adapter settings the
diffusers folder cannot hold."""


def tiny_cache_dir() -> Path:
    """Where built tiny pipelines are saved: $LONGVID_CACHE or ~/.cache/longvid_dist."""
    return Path(os.environ.get("LONGVID_CACHE", Path.home() / ".cache" / "longvid_dist"))


def save_tiny(name: str, path: str | os.PathLike, seed: int = 0) -> Path:
    """Build tiny model ``name`` and ``save_pretrained`` it to ``path``."""
    pipe = _BUILDERS[name](seed)
    pipe.save_pretrained(str(path))
    if name in _EXTRA:
        (Path(path) / "longvid.json").write_text(json.dumps(_EXTRA[name]))
    return Path(path)


def tiny_model_path(name: str, seed: int = 0) -> Path:
    """Folder of tiny model ``name`` in diffusers format, built and saved on first use.

    Built into a temporary sibling and renamed, so concurrent processes (Ray workers, parallel
    test runs) never see a half-written folder.
    """
    if name not in _BUILDERS:
        raise KeyError(name)
    final = tiny_cache_dir() / f"{name}-seed{seed}"
    if (final / "model_index.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=final.parent))
    try:
        save_tiny(name, tmp, seed)
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first
            if not (final / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
"""Layers a tiny LoRA adapts: every attention's projections (self- and cross-attention)."""


def save_tiny_lora(path: str | os.PathLike, name: str = "tiny-wan", seed: int = 0, rank: int = 4,
                   alpha: float = 8.0, std: float = 0.1) -> Path:
    """A random LoRA for tiny model ``name`` saved with its pipeline's ``save_lora_weights`` to
    the folder ``path`` (``pytorch_lora_weights.safetensors``, peft's metadata with ``alpha``):
    peft's ``LoraConfig`` on the transformer's attention projections, ``B`` drawn with ``std``
    (peft starts it at zero, which would change nothing). Returns the file."""
    import diffusers
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    src = tiny_model_path(name)
    index = json.loads((src / "model_index.json").read_text())
    transformer = getattr(diffusers, index["transformer"][1]).from_pretrained(src, subfolder="transformer")
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(LORA_TARGETS))
    torch.manual_seed(seed)
    transformer.add_adapter(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, p in transformer.named_parameters():
            if "lora_B" in key:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    getattr(diffusers, index["_class_name"]).save_lora_weights(
        str(path), transformer_lora_layers=get_peft_model_state_dict(transformer),
        transformer_lora_adapter_metadata=config.to_dict())
    return Path(path) / "pytorch_lora_weights.safetensors"
