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
    "joint_text_video_attention": "text and video tokens share self-attention (patches see video tokens only)",
    "context_parallel": "diffusers ships a context-parallel plan (sequence parallelism inside a window)",
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

    def missing(self, required) -> list[str]:
        """The capabilities in ``required`` this family lacks, sorted."""
        return sorted(set(required) - self.capabilities)

    def latent_frames(self, frames: int) -> int:
        """Latent frames for ``frames`` pixel frames."""
        return (frames - 1) // self.temporal_factor + 1


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
        capabilities=frozenset({"attention_patches", "temporal_rope", "per_frame_timesteps", "context_parallel"}),
    ),
}

TINY = {"tiny-wan": ("wan", (64, 64))}
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
        cls = json.loads(index.read_text()).get("_class_name", "")
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"model path {name!r}: unreadable model_index.json ({e})") from None
    for fam in FAMILIES.values():
        if cls in fam.pipeline_classes:
            return ResolvedModel(name, fam, str(path.resolve()), fam.default_size)
    supported = ", ".join(c for f in FAMILIES.values() for c in f.pipeline_classes)
    raise ValueError(f"model path {name!r} holds a {cls or 'unknown'} pipeline; supported: {supported}")


def adapter_class(family: FamilyInfo):
    """Import the family's adapter class (this is where torch/diffusers get imported)."""
    module, cls = family.adapter.split(":")
    return getattr(importlib.import_module(module), cls)
