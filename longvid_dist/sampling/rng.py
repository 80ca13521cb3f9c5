"""Keyed random generators: every random draw of a render comes from (seed, purpose, step).

Workers never draw random numbers (DESIGN decision 3), so a render is reproducible whatever
executes it. The initial i.i.d. noise uses ``torch.Generator().manual_seed(seed)`` itself,
exactly as a diffusers pipeline called with that generator draws it.
"""

from __future__ import annotations

import hashlib

import torch


def key_seed(seed: int, purpose: str, step: int | None = None) -> int:
    """A 63-bit seed derived from (seed, purpose, step) by BLAKE2b."""
    h = hashlib.blake2b(f"{seed}:{purpose}:{step}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def keyed_generator(seed: int, purpose: str, step: int | None = None) -> torch.Generator:
    """A CPU generator for one purpose (and step) of a render."""
    return torch.Generator("cpu").manual_seed(key_seed(seed, purpose, step))


def noise_generator(seed: int) -> torch.Generator:
    """The generator of the initial noise: diffusers' ``Generator("cpu").manual_seed(seed)``."""
    return torch.Generator("cpu").manual_seed(seed)
