"""Tiny random-weight pipelines built offline from the real diffusers/transformers classes.

Tests and the demo use them: no model hub is needed, yet every component is the real class a
full-size checkpoint uses, and the model is saved with ``save_pretrained`` and loaded back with
``from_pretrained`` so the real loading path runs. Weights are a pure function of the seed.
"""

from __future__ import annotations

import functools
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

TINY_CONFIGS = {"tiny-wan": TINY_WAN_CONFIGS}


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


_BUILDERS = {"tiny-wan": build_tiny_wan}


def tiny_cache_dir() -> Path:
    """Where built tiny pipelines are saved: $LONGVID_CACHE or ~/.cache/longvid_dist."""
    return Path(os.environ.get("LONGVID_CACHE", Path.home() / ".cache" / "longvid_dist"))


def save_tiny(name: str, path: str | os.PathLike, seed: int = 0) -> Path:
    """Build tiny model ``name`` and ``save_pretrained`` it to ``path``."""
    pipe = _BUILDERS[name](seed)
    pipe.save_pretrained(str(path))
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
