"""Model families and name resolution, without importing torch or diffusers.

A model is named three ways: a built-in tiny model (``tiny-wan``), a local diffusers pipeline
folder (its ``model_index.json`` names the pipeline class, which picks the family), or a known
hub id (``from_pretrained`` reads it from the Hugging Face cache or downloads it). Everything here is
cheap, so a spec is validated before any model is loaded.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path


CAPABILITIES = {
    "attention_patches": "self-attention can be replaced per layer (ABAM, FreeLong, FreeSpec, FreeLOC)",
    "temporal_rope": "a temporal rotary embedding whose frequencies and positions can be edited (RIFLEx, FLEX, "
                     "FreeLOC's VRPR)",
    "per_frame_timesteps": "the transformer takes one timestep per latent frame (diffusion forcing, causal rollout)",
    "kv_cache_rollout": "blocks denoised against a rolling key/value cache of earlier blocks (causal rollout)",
    "block_causal_attention": "attention masked block-causally over latent frames (diffusion forcing with "
                              "causal_block_size > 1)",
    "joint_text_video_attention": "text and video tokens share self-attention (patches see video tokens only; "
                                  "the text share of each video query's attention stays stock)",
    "context_parallel": "a context-parallel plan (diffusers' or the adapter's) splits a window's tokens over a "
                        "sequence-parallel group (--ulysses-degree / --ring-degree)",
    "split_guidance": "the two classifier-free-guidance branches are separate forwards, so they can run on "
                      "separate workers and be combined by the coordinator bit for bit",
}
"""What a family can do for a method; a recipe needing one its family lacks is refused at validation."""


@dataclass(frozen=True)
class FamilyInfo:
    """Static geometry of a model family: what validation needs before loading weights."""

    name: str
    """Family key, e.g. ``"wan"``."""
    description: str
    """One line for ``longvid models``."""
    pipeline_classes: tuple[str, ...]
    """diffusers pipeline class names (``model_index.json`` ``_class_name``) of this family."""
    adapter: str
    """``module:Class`` of the adapter, imported only when a model is loaded."""
    temporal_factor: int
    """Pixel frames per latent frame after the first (frames must be ``k*factor + 1``)."""
    spatial_multiple: int
    """Height and width must be positive multiples of this (VAE factor x patch size)."""
    native_frames: int
    """Pixel frames of the clips the model was trained on (its native window)."""
    default_size: tuple[int, int]
    """Default (height, width) for full-size checkpoints."""
    hub_ids: tuple[str, ...] = ()
    """Hub ids known to be this family (``from_pretrained`` fetches or reads them from the HF cache)."""
    capabilities: frozenset[str] = frozenset()
    """Names from :data:`CAPABILITIES` this family's adapter supports."""
    index_keys: tuple[str, ...] = ()
    """``model_index.json`` entries that must be set (not null/false) for a local folder of one
    of ``pipeline_classes`` to be this family: Wan2.1 and both Wan2.2 kinds share ``WanPipeline``
    and differ by ``transformer_2`` (two experts) or ``expand_timesteps`` (TI2V-5B)."""

    def missing(self, required) -> list[str]:
        """The capabilities in ``required`` this family lacks, sorted."""
        return sorted(set(required) - self.capabilities)

    def latent_frames(self, frames: int) -> int:
        """Latent frames for ``frames`` pixel frames."""
        return (frames - 1) // self.temporal_factor + 1


_WAN_CAPS = frozenset({"attention_patches", "temporal_rope", "per_frame_timesteps", "context_parallel",
                       "kv_cache_rollout", "split_guidance"})

FAMILIES: dict[str, FamilyInfo] = {
    "wan": FamilyInfo(
        name="wan",
        description="Wan2.1 text-to-video (WanPipeline): 1.3B and 14B, 81-frame native clips",
        pipeline_classes=("WanPipeline",),
        adapter="longvid_dist.models.wan:WanAdapter",
        temporal_factor=4,
        spatial_multiple=16,
        native_frames=81,
        default_size=(480, 832),
        hub_ids=("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "Wan-AI/Wan2.1-T2V-14B-Diffusers"),
        capabilities=_WAN_CAPS,
    ),
    "wan22": FamilyInfo(
        name="wan22",
        description="Wan2.2 two-expert text-to-video (WanPipeline with transformer_2, boundary_ratio): A14B",
        pipeline_classes=("WanPipeline",),
        adapter="longvid_dist.models.wan:WanAdapter",
        temporal_factor=4,
        spatial_multiple=16,
        native_frames=81,
        default_size=(720, 1280),
        hub_ids=("Wan-AI/Wan2.2-T2V-A14B-Diffusers",),
        capabilities=_WAN_CAPS,
        index_keys=("transformer_2",),
    ),
    "wan22-ti2v": FamilyInfo(
        name="wan22-ti2v",
        description="Wan2.2 TI2V-5B text-to-video (WanPipeline, expand_timesteps, 48-channel patchified VAE)",
        pipeline_classes=("WanPipeline",),
        adapter="longvid_dist.models.wan:WanAdapter",
        temporal_factor=4,
        spatial_multiple=32,
        native_frames=121,
        default_size=(704, 1280),
        hub_ids=("Wan-AI/Wan2.2-TI2V-5B-Diffusers",),
        capabilities=_WAN_CAPS,
        index_keys=("expand_timesteps",),
    ),
    "cogvideox": FamilyInfo(
        name="cogvideox",
        description="CogVideoX text-to-video (CogVideoXPipeline): 2B and 5B, 49-frame native clips",
        pipeline_classes=("CogVideoXPipeline",),
        adapter="longvid_dist.models.cogvideox:CogVideoXAdapter",
        temporal_factor=4,
        spatial_multiple=16,
        native_frames=49,
        default_size=(480, 720),
        hub_ids=("THUDM/CogVideoX-2b", "THUDM/CogVideoX-5b"),
        capabilities=frozenset({"joint_text_video_attention", "attention_patches", "temporal_rope",
                                "context_parallel"}),
    ),
    "ltx": FamilyInfo(
        name="ltx",
        description="LTX-Video text-to-video (LTXPipeline): 2B, 121-frame native clips",
        pipeline_classes=("LTXPipeline",),
        adapter="longvid_dist.models.ltx:LTXAdapter",
        temporal_factor=8,
        spatial_multiple=32,
        native_frames=121,
        default_size=(512, 704),
        hub_ids=("Lightricks/LTX-Video",),
        capabilities=frozenset({"attention_patches", "per_frame_timesteps", "context_parallel"}),
    ),
    "skyreels-df": FamilyInfo(
        name="skyreels-df",
        description="SkyReels-V2 diffusion forcing (SkyReelsV2DiffusionForcingPipeline): Wan architecture with "
                    "a timestep per latent frame and block-causal attention; 97-frame base clips",
        pipeline_classes=("SkyReelsV2DiffusionForcingPipeline",),
        adapter="longvid_dist.models.skyreels:SkyReelsDFAdapter",
        temporal_factor=4,
        spatial_multiple=16,
        native_frames=97,
        default_size=(544, 960),
        hub_ids=("Skywork/SkyReels-V2-DF-1.3B-540P-Diffusers", "Skywork/SkyReels-V2-DF-14B-540P-Diffusers",
                 "Skywork/SkyReels-V2-DF-14B-720P-Diffusers"),
        capabilities=frozenset({"attention_patches", "temporal_rope", "per_frame_timesteps",
                                "block_causal_attention", "kv_cache_rollout", "context_parallel",
                                "split_guidance"}),
    ),
    "hunyuan": FamilyInfo(
        name="hunyuan",
        description="HunyuanVideo text-to-video (HunyuanVideoPipeline), guidance-distilled: --guidance is "
                    "the embedded guidance; 129-frame native clips",
        pipeline_classes=("HunyuanVideoPipeline",),
        adapter="longvid_dist.models.hunyuan:HunyuanAdapter",
        temporal_factor=4,
        spatial_multiple=16,
        native_frames=129,
        default_size=(720, 1280),
        hub_ids=("hunyuanvideo-community/HunyuanVideo",),
        capabilities=frozenset({"joint_text_video_attention", "attention_patches", "temporal_rope",
                                "context_parallel"}),
    ),
}

TINY = {
    "tiny-wan": ("wan", (64, 64)),
    "tiny-wan22": ("wan22", (64, 64)),
    "tiny-wan22-ti2v": ("wan22-ti2v", (64, 64)),
    "tiny-cogvideox": ("cogvideox", (32, 32)),
    "tiny-ltx": ("ltx", (64, 64)),
    "tiny-hunyuan": ("hunyuan", (32, 32)),
    "tiny-skyreels-df": ("skyreels-df", (32, 32)),
}
"""Built-in tiny models: name -> (family, default (height, width))."""


@dataclass(frozen=True)
class ResolvedModel:
    """A model name resolved to its family and where ``from_pretrained`` reads it."""

    name: str
    """The name as the user gave it."""
    family: FamilyInfo
    """Its family."""
    source: str
    """``tiny:<name>``, a local folder, or a hub id."""
    default_size: tuple[int, int]
    """Default (height, width) for this model."""

    @property
    def is_tiny(self) -> bool:
        return self.source.startswith("tiny:")


def _known_names() -> str:
    ids = [i for f in FAMILIES.values() for i in f.hub_ids]
    return ", ".join(list(TINY) + ids) + ", or a local diffusers pipeline folder"


def resolve_model(name: str) -> ResolvedModel:
    """Resolve a model name or path; ``ValueError`` with what is allowed when it is unknown."""
    if name in TINY:
        family, size = TINY[name]
        return ResolvedModel(name, FAMILIES[family], f"tiny:{name}", size)
    for fam in FAMILIES.values():
        if name in fam.hub_ids:
            return ResolvedModel(name, fam, name, fam.default_size)
    path = Path(os.path.expanduser(name))
    looks_like_path = os.sep in name or name.startswith(".") or path.exists()
    if not looks_like_path:
        raise ValueError(f"unknown model {name!r}: use {_known_names()}")
    if not path.is_dir():
        raise ValueError(f"model path {name!r} does not exist or is not a directory")
    index = path / "model_index.json"
    if not index.is_file():
        raise ValueError(f"model path {name!r} is not a diffusers pipeline folder (no model_index.json)")
    try:
        data = json.loads(index.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"model path {name!r}: unreadable model_index.json ({e})") from None
    cls = data.get("_class_name", "")
    fam = family_of_index(data)
    if fam is not None:
        return ResolvedModel(name, fam, str(path.resolve()), fam.default_size)
    supported = ", ".join(dict.fromkeys(c for f in FAMILIES.values() for c in f.pipeline_classes))
    raise ValueError(f"model path {name!r} holds a {cls or 'unknown'} pipeline; supported: {supported}")


def _is_set(value) -> bool:
    """A ``model_index.json`` entry that is present: not null, false or ``[null, null]``."""
    if isinstance(value, (list, tuple)):
        return any(v is not None for v in value)
    return value not in (None, False)


def family_of_index(index: dict) -> FamilyInfo | None:
    """The family of a pipeline folder's ``model_index.json``: its ``_class_name``, and among the
    families sharing that class the most specific one whose ``index_keys`` are all set."""
    cls = index.get("_class_name", "")
    fits = [f for f in FAMILIES.values()
            if cls in f.pipeline_classes and all(_is_set(index.get(k)) for k in f.index_keys)]
    return max(fits, key=lambda f: len(f.index_keys), default=None)


def adapter_class(family: FamilyInfo):
    """Import the family's adapter class (this is where torch/diffusers get imported)."""
    module, cls = family.adapter.split(":")
    return getattr(importlib.import_module(module), cls)
