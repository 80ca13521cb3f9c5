"""Sampler state: the diffusers scheduler(s) of a render, one for the whole latent or one per
latent frame, and their exact serialization as tensors plus JSON (never pickle).

Merged windows step one scheduler on the whole latent (DESIGN decision 1). Diffusion forcing
and causal rollout give every latent frame its own noise level, so each frame gets its own
deep copy of the scheduler and its own step index, as diffusers' SkyReels-V2 diffusion-forcing
pipeline keeps one scheduler per latent frame. A noise level is a 0-d timestep (shared) or one
timestep per latent frame (k-diffusion's per-sample sigma, per frame).
"""

from __future__ import annotations

import copy
import json

import numpy as np
import torch


class SamplerState:
    """The scheduler(s) of a render and where each is in its timestep list."""

    def __init__(self, schedulers: list, per_frame: bool = False, in_place: bool = False):
        self.schedulers = schedulers
        """One scheduler (shared) or one per latent frame."""
        self.per_frame = per_frame
        """Whether each latent frame has its own scheduler."""
        self.in_place = in_place
        """Per frame: hand each scheduler a view of the output that is then overwritten with its
        step, as diffusers' SkyReels-V2 DF pipeline writes ``latents[:, :, idx] = step(...,
        latents[:, :, idx])``. UniPC keeps that view as ``last_sample``, so its corrector then
        sees the stepped sample, not the one before: a quirk of the stock pipeline that its
        oracle needs (False: each scheduler's own clean history, equal to a shared one)."""

    @classmethod
    def shared(cls, scheduler) -> "SamplerState":
        """One scheduler steps the whole latent."""
        return cls([scheduler])

    @classmethod
    def frames(cls, scheduler, num_frames: int, in_place: bool = False) -> "SamplerState":
        """One deep copy of ``scheduler`` per latent frame (``in_place``: see the attribute)."""
        return cls([copy.deepcopy(scheduler) for _ in range(num_frames)], per_frame=True, in_place=in_place)

    @property
    def scheduler(self):
        """The shared scheduler (the first frame's when per frame)."""
        return self.schedulers[0]

    @property
    def num_steps(self) -> int:
        """Timesteps in a scheduler's list."""
        return len(self.scheduler.timesteps)

    def noise_level(self, step) -> np.ndarray:
        """Timestep(s) at step index ``step``: 0-d when shared; ``[F]`` when per frame, where
        ``step`` may be one index per frame (the scheduler's dtype is kept)."""
        if not self.per_frame:
            return self.scheduler.timesteps[int(step)].numpy()
        idx = np.broadcast_to(np.asarray(step), (len(self.schedulers),))
        return np.stack([s.timesteps[min(int(i), len(s.timesteps) - 1)].numpy()
                         for s, i in zip(self.schedulers, idx)])

    def step(self, pred: torch.Tensor, step, latent: torch.Tensor, frames=None) -> torch.Tensor:
        """``latent [C, F, h, w]`` after one scheduler step with model prediction ``pred``.

        Per frame, ``step`` is an index per frame and only ``frames`` (default all) advance;
        each advancing frame steps its own scheduler on its own slice, passed without the frame
        axis (``[1, C, h, w]``) as diffusers' SkyReels-V2 diffusion-forcing pipeline passes it."""
        if not self.per_frame:
            t = self.scheduler.timesteps[int(step)]
            return self.scheduler.step(pred[None], t, latent[None], return_dict=False)[0][0]
        out = latent.clone()
        idx = np.broadcast_to(np.asarray(step), (len(self.schedulers),))
        for f in range(len(self.schedulers)) if frames is None else frames:
            s = self.schedulers[f]
            src = out if self.in_place else latent  # in place: the scheduler keeps a view of out
            out[:, f] = s.step(pred[None, :, f], s.timesteps[int(idx[f])], src[None, :, f],  # [1, C, h, w]
                               return_dict=False)[0][0]
        return out

    def holds(self, t: torch.Tensor) -> bool:
        """Whether a scheduler keeps a tensor over ``t``'s memory (a view included), e.g. a
        multistep solver keeping the model output in its history: ``t`` must then not be
        overwritten."""
        return any(same_memory(x, t) for s in self.schedulers for x in _tensors(vars(s)))

    # -- serialization (checkpoints) ------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        """``(tensors, meta)``: every scheduler's class, config and attributes, with tensors
        apart and the rest as JSON-able data. Raises ``TypeError`` naming an attribute that is
        neither (so a new scheduler cannot be checkpointed wrongly in silence)."""
        tensors: dict[str, torch.Tensor] = {}
        scheds = []
        for n, s in enumerate(self.schedulers):
            attrs = {k: _encode(v, f"s{n}.{k}", tensors) for k, v in vars(s).items() if k != "_internal_dict"}
            scheds.append({"class": type(s).__name__, "config": json.loads(json.dumps(dict(s.config))),
                           "attrs": attrs})
        return tensors, {"per_frame": self.per_frame, "in_place": self.in_place, "schedulers": scheds}

    @classmethod
    def from_state_dict(cls, tensors: dict[str, torch.Tensor], meta: dict) -> "SamplerState":
        """Inverse of :meth:`state_dict`; only diffusers scheduler classes are instantiated."""
        import diffusers
        from diffusers.schedulers.scheduling_utils import SchedulerMixin

        scheds = []
        for entry in meta["schedulers"]:
            klass = getattr(diffusers, str(entry["class"]), None)
            if not (isinstance(klass, type) and issubclass(klass, SchedulerMixin)):
                raise ValueError(f"unknown scheduler class {entry['class']!r}")
            s = klass.from_config(entry["config"])
            for k, v in entry["attrs"].items():
                setattr(s, k, _decode(v, tensors))
            scheds.append(s)
        return cls(scheds, per_frame=bool(meta["per_frame"]), in_place=bool(meta.get("in_place", False)))


def same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors are views of one storage."""
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _tensors(v):
    """Every tensor in ``v`` (nested in lists, tuples and dicts)."""
    if isinstance(v, torch.Tensor):
        yield v
    elif isinstance(v, (list, tuple)):
        for x in v:
            yield from _tensors(x)
    elif isinstance(v, dict):
        for x in v.values():
            yield from _tensors(x)


def _encode(v, key: str, tensors: dict):
    """JSON-able form of a scheduler attribute; tensors (and numpy arrays) go to ``tensors``."""
    if isinstance(v, torch.Tensor):
        tensors[key] = v.detach().clone()
        return {"__tensor__": key}
    if isinstance(v, np.ndarray):
        tensors[key] = torch.from_numpy(v.copy())
        return {"__ndarray__": key}
    if isinstance(v, np.generic):
        return {"__npscalar__": v.dtype.str, "value": v.item()}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        items = [_encode(x, f"{key}.{i}", tensors) for i, x in enumerate(v)]
        return items if isinstance(v, list) else {"__tuple__": items}
    if isinstance(v, dict) and all(isinstance(k, str) for k in v):
        return {"__dict__": {k: _encode(x, f"{key}.{k}", tensors) for k, x in v.items()}}
    raise TypeError(f"cannot checkpoint scheduler attribute {key!r} of type {type(v).__name__}")


def _decode(v, tensors: dict):
    if isinstance(v, list):
        return [_decode(x, tensors) for x in v]
    if not isinstance(v, dict):
        return v
    if "__tensor__" in v:
        return tensors[v["__tensor__"]]
    if "__ndarray__" in v:
        return tensors[v["__ndarray__"]].numpy()
    if "__npscalar__" in v:
        return np.dtype(v["__npscalar__"]).type(v["value"])
    if "__tuple__" in v:
        return tuple(_decode(x, tensors) for x in v["__tuple__"])
    return {k: _decode(x, tensors) for k, x in v["__dict__"].items()}
