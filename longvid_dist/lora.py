"""LoRA adapters of a render: ``--lora PATH[:SCALE]``, parsed and checked without torch.

A LoRA (Hu et al. (2021), "LoRA: Low-Rank Adaptation of Large Language Models") is a low-rank
update ``W + scale * B @ A * alpha / r`` of the transformer's linear layers; causal few-step
video models (Self-Forcing, CausVid, LongLive) are often shipped as one on top of Wan2.1. This
module only reads the file's safetensors header (names, shapes) and hashes its bytes, so a bad
``--lora`` is refused in milliseconds, before any model loads. Matching the keys against the
model's modules needs the model's configs (:func:`longvid_dist.models.base.check_lora`); the
adapters are applied by the model adapter (:meth:`~longvid_dist.models.base.ModelAdapter.apply_lora`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass

from .config import SpecError

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
"""The file a LoRA folder holds (what diffusers' ``save_lora_weights`` writes)."""
FORMAT = "PATH[:SCALE] (a .safetensors LoRA file, or a folder holding pytorch_lora_weights.safetensors; SCALE a number, default 1)"
"""What ``--lora`` takes, for error messages."""
MAX_HEADER = 100 * 2**20
"""Largest safetensors header read (the format's own limit)."""


@dataclass(frozen=True)
class Lora:
    """One LoRA adapter on the model's transformer."""

    path: str
    """Absolute path of the ``.safetensors`` file (every worker reads it at this path)."""
    scale: float = 1.0
    """Strength: the update added is ``scale * B @ A * alpha / r`` (0 = the base model)."""
    sha256: str = ""
    """Hash of the file's bytes (filled in by :func:`parse_loras`): the output key depends on
    what the file holds, not on where it lies."""

    def key(self) -> tuple[str, float]:
        """What decides the video: the file's contents and the scale."""
        return (self.sha256, float(self.scale))


def parse_loras(value) -> tuple[Lora, ...]:
    """The validated adapters of ``value``: None, one ``PATH[:SCALE]`` string / ``{"path", "scale"}``
    object / :class:`Lora`, or a list of them (applied together, in order). Raises
    :class:`SpecError` naming ``lora``."""
    if value is None:
        return ()
    items = value if isinstance(value, (list, tuple)) else [value]
    return tuple(_parse_one(v) for v in items)


def _parse_one(v) -> Lora:
    if isinstance(v, Lora):
        path, scale = v.path, v.scale
    elif isinstance(v, dict):
        unknown = sorted(set(v) - {"path", "scale", "sha256"})
        if unknown or "path" not in v:
            raise SpecError("lora", f"an object needs 'path' and may have 'scale' (got keys {sorted(v)})")
        path, scale = v["path"], v.get("scale", 1.0)
    elif isinstance(v, str):
        path, scale = _split(v)
    else:
        raise SpecError("lora", f"must be {FORMAT}, got {v!r}")
    if not isinstance(path, str) or not path:
        raise SpecError("lora", f"must be {FORMAT}, got path {path!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise SpecError("lora", f"{path}: scale must be a finite number, got {scale!r}")
    file = _weights_file(path)
    _check_header(file)
    return Lora(file, float(scale), file_digest(file))


def _split(text: str) -> tuple[str, float]:
    """``PATH[:SCALE]``: an existing path is taken whole (it may hold a ``:``); otherwise the
    part after the last ``:`` is the scale."""
    if os.path.exists(text) or ":" not in text:
        return text, 1.0
    path, _, tail = text.rpartition(":")
    try:
        return path, float(tail)
    except ValueError:
        raise SpecError("lora", f"{text}: scale {tail!r} is not a number; use {FORMAT}") from None


def _weights_file(path: str) -> str:
    """The ``.safetensors`` file of ``path`` (a file, or a folder holding :data:`WEIGHT_NAME` or
    exactly one ``.safetensors`` file), absolute."""
    p = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(p):
        names = sorted(n for n in os.listdir(p) if n.endswith(".safetensors"))
        if WEIGHT_NAME in names:
            names = [WEIGHT_NAME]
        if len(names) != 1:
            raise SpecError("lora", f"{path}: a folder must hold {WEIGHT_NAME} or exactly one .safetensors file "
                                    f"(found {', '.join(names) or 'none'})")
        p = os.path.join(p, names[0])
    elif not os.path.exists(p):
        raise SpecError("lora", f"{path}: no such file; use {FORMAT}")
    if not p.endswith(".safetensors"):
        raise SpecError("lora", f"{path}: not a .safetensors file (pickled .bin/.pt LoRAs are refused: "
                                f"loading them can run code)")
    return p


def read_header(file: str) -> dict:
    """The JSON header of a safetensors file (tensor names -> dtype, shape, offsets), read without
    torch; :class:`SpecError` naming ``lora`` when the file is not one."""
    try:
        with open(file, "rb") as f:
            raw = f.read(8)
            n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
            if not 2 <= n <= min(MAX_HEADER, os.fstat(f.fileno()).st_size - 8):
                raise ValueError("no safetensors header")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except OSError as e:
        raise SpecError("lora", f"{file}: not readable ({e.strerror or e})") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise SpecError("lora", f"{file}: not a readable safetensors file ({e})") from None
    header.pop("__metadata__", None)
    return header


def _check_header(file: str) -> None:
    keys = list(read_header(file))
    if not keys:
        raise SpecError("lora", f"{file}: holds no tensors")
    if not any("lora" in k for k in keys):
        raise SpecError("lora", f"{file}: holds no LoRA weights (no key names 'lora', e.g. "
                                f"'transformer.blocks.0.attn1.to_q.lora_A.weight'; first key: {keys[0]!r})")


_DIGESTS: dict[tuple, str] = {}


def file_digest(file: str) -> str:
    """sha256 of a file's bytes, computed once per (path, size, modification time) in a process
    (a batch validates the same LoRA for every row)."""
    st = os.stat(file)
    key = (file, st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]
