"""The denoising loop: plan -> predict -> merge/fuse -> step, identical for every executor."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from ..runtime.executor import Executor
from .planner import Planner
from .state import SamplerState, same_memory


@dataclass
class StepStats:
    """Where one step's time went (seconds) and how many windows it ran."""

    step: int
    """Step index."""
    t: float
    """Timestep (the largest one when frames have their own)."""
    windows: int
    """Model calls (windows) of the step."""
    predict: float
    """Seconds in the executor's predict."""
    merge: float
    """Seconds merging predictions."""
    sched: float
    """Seconds in the scheduler step and refinement."""


@dataclass
class LoopResult:
    latent: torch.Tensor
    """Final clean latent ``[C, F, h, w]`` (fp32)."""
    steps: list[StepStats] = field(default_factory=list)
    """Per-step timings."""


def denoise(latent: torch.Tensor, state: SamplerState, planner: Planner, executor: Executor,
            on_step: Callable[[StepStats, torch.Tensor, SamplerState], None] | None = None,
            start: int = 0) -> LoopResult:
    """Run the steps of ``state`` from index ``start`` on ``latent`` ``[C, F, h, w]``:
    plan -> predict -> merge/fuse -> step -> refine -> ``on_step`` (progress, checkpoints).

    Every window carries its noise level (``Window.timestep``); window predictions are merged
    into one prediction for the whole latent and the scheduler steps once per timestep (DESIGN
    decision 1), so multistep solvers keep their history. The merge writes into one buffer
    reused every step (no fresh latent-sized allocation), replaced when a scheduler keeps it.
    """
    executor.install(planner.patches())
    result = LoopResult(latent)
    buf = torch.empty_like(latent)  # the merged prediction, overwritten each step
    for i in range(start, state.num_steps):  # resumed: earlier steps are in latent and state
        level = state.noise_level(i)  # 0-d, or [F] when frames have their own timesteps
        t = float(level.max())
        plan = planner.plan(i, t)
        windows = [replace(w, timestep=level if level.ndim == 0 else level[list(w.frames)]) for w in plan.windows]
        t0 = time.perf_counter()
        preds = executor.predict(latent, windows)
        t1 = time.perf_counter()
        merged = plan.merge(preds, out=buf)  # [C, F, h, w]
        del preds  # the executor may reuse their memory next step (a direct plan's merged is one)
        t2 = time.perf_counter()
        stepped = state.step(merged, i, latent)
        latent = planner.refine(executor.space, stepped, latent, merged, state.scheduler, i)
        if state.holds(buf) or same_memory(latent, buf):  # kept past this step: never overwrite it
            buf = torch.empty_like(latent)
        t3 = time.perf_counter()
        stats = StepStats(i, t, len(windows), t1 - t0, t2 - t1, t3 - t2)
        result.steps.append(stats)
        if on_step:
            on_step(stats, latent, state)
    result.latent = latent
    return result
