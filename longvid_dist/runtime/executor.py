"""Executors: where window predictions and decode chunks are computed.

The sampling loop talks only to an :class:`Executor` (DESIGN decision 2). ``LocalExecutor``
runs everything in this process on one model replica; ``RayExecutor`` (``runtime.ray_executor``)
shards windows over Ray actors. Both return predictions in the order of the windows given, so
the merge (done by the loop) sums them in a fixed order whoever computed them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterator

import numpy as np
import torch

from ..methods.windows import Window
from ..models.base import Cond, LatentSpace, ModelAdapter


class Executor(ABC):
    """Computes window predictions and decoded frames for the coordinator's loop."""

    space: LatentSpace
    """The coordinator's config-only view of the model (initial noise, scheduler)."""
    device: str
    """Device the replicas run on."""
    dtype: str
    """Transformer dtype of the replicas (e.g. ``float32``)."""

    @abstractmethod
    def set_conditions(self, prompts: dict[str, tuple[str, str]], guidance: float) -> None:
        """Encode each conditioning id's (prompt, negative prompt) once per render."""

    @abstractmethod
    def install(self, patches: dict | None) -> None:
        """Install a render's attention/RoPE patches (``Planner.patches()``) on every replica."""

    @abstractmethod
    def predict(self, latent: torch.Tensor, t: torch.Tensor, windows: list[Window]) -> list[torch.Tensor]:
        """Guided predictions ``[C, len(w), h, w]`` for each window, in the order given."""

    @abstractmethod
    def decode(self, latent: torch.Tensor, chunk: int) -> Iterator[np.ndarray]:
        """Decoded frames of the whole latent, in order, as uint8 ``[n, H, W, 3]`` chunks."""

    def close(self) -> None:
        """Release workers (nothing to do for a local executor)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LocalExecutor(Executor):
    """Runs every window in-process on one adapter, in window order."""

    def __init__(self, adapter: ModelAdapter):
        self.adapter = adapter
        self.space = adapter.space
        self.device = str(adapter.device)
        self.dtype = str(adapter.dtype).removeprefix("torch.")
        self.conds: dict[str, Cond] = {}

    def set_conditions(self, prompts: dict[str, tuple[str, str]], guidance: float) -> None:
        self.conds = {k: self.adapter.encode_prompt(p, n, guidance) for k, (p, n) in prompts.items()}

    def install(self, patches: dict | None) -> None:
        install_patches(self.adapter, patches)

    def predict(self, latent: torch.Tensor, t: torch.Tensor, windows: list[Window]) -> list[torch.Tensor]:
        return predict_windows(self.adapter, self.conds, t, [(latent[:, list(w.frames)], w) for w in windows])

    def decode(self, latent: torch.Tensor, chunk: int) -> Iterator[np.ndarray]:
        return (to_uint8(f) for f in self.adapter.decode(latent, chunk))


def install_patches(adapter: ModelAdapter, patches: dict | None) -> None:
    """Install patches on a replica (a no-op when the same ones are already installed)."""
    from ..sampling.planner import make_patches

    attention, rope = make_patches(patches, adapter.num_layers, adapter.model_info())
    key = repr(sorted(patches.items())) if patches else None
    adapter.install(attention, rope, key=key)


def predict_windows(adapter: ModelAdapter, conds: dict, t: torch.Tensor, items: list) -> list[torch.Tensor]:
    """Predictions for ``(latent frames, window)`` items, in order: anchors record their
    attention keys/values for the followers that come after them in the same step."""
    adapter.begin_step()
    return [adapter.predict(x, t, conds[w.cond], role=w.role, anchor_key=w.anchor if w.role == "follow"
                            else w.frames) for x, w in items]


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Float frames in [0, 1] -> uint8, rounded to nearest."""
    return np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8)
