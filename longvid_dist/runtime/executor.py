"""Executors: where window predictions and decode chunks are computed.

The sampling loop talks only to an :class:`Executor` (DESIGN decision 2). ``LocalExecutor``
runs one :class:`~longvid_dist.runtime.worker.Worker` in this process; ``RayExecutor``
(``runtime.ray_executor``) runs the same class as Ray actors and shards each step's windows
over them. Both return predictions in the order of the windows given, so the merge (done by
the loop) sums them in a fixed order whoever computed them.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from typing import Iterator

import numpy as np
import torch

from ..methods.windows import Window
from ..models.base import LatentSpace
from .worker import Worker, as_tensor, frame_index


class CacheLost(RuntimeError):
    """The replica holding a causal rollout's KV cache was restarted: the coordinator re-writes
    the cache from the finished blocks and repeats the call."""


class Executor(ABC):
    """Computes window predictions and decoded frames for the coordinator's loop."""

    space: LatentSpace
    """The coordinator's config-only view of the model (initial noise, scheduler)."""
    device: str
    """Device the replicas run on."""
    dtype: str
    """Transformer dtype of the replicas (e.g. ``float32``)."""
    lora: list = []
    """LoRA adapters ``(path, scale)`` fused into the replicas (``RenderSpec.lora``)."""

    @abstractmethod
    def set_conditions(self, prompts: dict[str, tuple[str, str]], guidance: float) -> None:
        """Encode each conditioning id's (prompt, negative prompt) once per render."""

    @abstractmethod
    def install(self, patches: dict | None) -> None:
        """Install a render's attention/RoPE patches (``Planner.patches()``) on every replica."""

    @abstractmethod
    def predict(self, latent: torch.Tensor, windows: list[Window]) -> list[torch.Tensor]:
        """Guided predictions ``[C, len(w), h, w]`` for each window at its own noise level
        (``Window.timestep``), in the order given. They may be views of an executor's buffers:
        read them before the next call, or keep them alive (a buffer still viewed is not
        reused); never write into them."""

    @abstractmethod
    def decode(self, latent: torch.Tensor, chunk: int) -> Iterator[np.ndarray]:
        """Decoded frames of the whole latent, in order, as uint8 ``[n, H, W, 3]`` chunks."""

    def predict_block(self, block: torch.Tensor, t: float, cache_id: str, offset: int, write: bool,
                      sink: int, window: int, cond: str = "main") -> torch.Tensor:
        """Guided prediction of one causal block against a rolling KV cache held by one replica
        (causal rollout; families with the Wan architecture), conditioned on ``cond``; raises
        :class:`CacheLost` when that replica no longer holds the cache."""
        raise NotImplementedError(f"{type(self).__name__} has no causal rollout")

    def report(self) -> dict:
        """Per-step transfer metrics and per-worker busy time of the last render, if any."""
        return {}

    def close(self) -> None:
        """Release workers (nothing to do for a local executor)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LocalExecutor(Executor):
    """Runs every window in-process on one worker, in window order. The adapter is the
    caller's: its text encoders stay loaded unless ``own_adapter`` (then they are freed once
    the prompts are encoded, as on a Ray worker)."""

    def __init__(self, adapter, own_adapter: bool = False):
        self.worker = Worker.from_adapter(adapter, keep_text_encoders=not own_adapter)
        self.space = adapter.space
        self.device, self.dtype = self.worker.device, self.worker.dtype
        self.lora = list(adapter.lora)
        self.conds: dict = {}
        self.version = ""
        self.patches: dict | None = None

    def set_conditions(self, prompts: dict[str, tuple[str, str]], guidance: float) -> None:
        self.conds = self.worker.encode(prompts, guidance)
        self.version = uuid.uuid4().hex

    def install(self, patches: dict | None) -> None:
        self.patches = patches
        self.worker.install(patches)

    def predict(self, latent: torch.Tensor, windows: list[Window]) -> list[torch.Tensor]:
        items = [(frame_index(w.frames), w, True) for w in windows]  # the whole latent is "this worker's frames"
        out, _ = self.worker.predict(self.version, self.conds, self.patches, latent.numpy(), items)
        return [as_tensor(p) for p in out]

    def predict_block(self, block, t, cache_id, offset, write, sink, window, cond="main"):
        p, _ = self.worker.predict_block(self.version, self.conds, self.patches, block.numpy(), t, cache_id, offset,
                                         write, sink, window, cond)
        return as_tensor(p)

    def decode(self, latent: torch.Tensor, chunk: int) -> Iterator[np.ndarray]:
        return self.worker.iter_decode(latent.numpy(), chunk)
