"""The denoising loop: plan -> predict -> merge/fuse -> step, identical for every executor."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..runtime.executor import Executor
from .planner import Planner


@dataclass
class StepStats:
    """Where one step's time went (seconds) and how many windows it ran."""

    step: int
    t: float
    windows: int
    predict: float
    merge: float
    sched: float


@dataclass
class LoopResult:
    latent: torch.Tensor
    """Final clean latent ``[C, F, h, w]`` (fp32)."""
    steps: list[StepStats] = field(default_factory=list)
    """Per-step timings."""


def denoise(latent: torch.Tensor, scheduler, planner: Planner, executor: Executor,
            on_step: Callable[[StepStats, torch.Tensor, object], None] | None = None,
            start: int = 0) -> LoopResult:
    """Run the timesteps of ``scheduler`` from index ``start`` on ``latent`` ``[C, F, h, w]``:
    plan -> predict -> merge/fuse -> step -> refine -> ``on_step`` (progress, checkpoints).

    Window predictions are merged into one prediction for the whole latent and the scheduler
    steps once per timestep (DESIGN decision 1), so multistep solvers keep their history.
    """
    executor.install(planner.patches())
    result = LoopResult(latent)
    for i, t in enumerate(scheduler.timesteps):
        if i < start:  # resumed: these steps are in the restored latent and scheduler
            continue
        plan = planner.plan(i, float(t))
        t0 = time.perf_counter()
        preds = executor.predict(latent, t, plan.windows)
        t1 = time.perf_counter()
        merged = plan.merge(preds)  # [C, F, h, w]
        t2 = time.perf_counter()
        stepped = scheduler.step(merged[None], t, latent[None], return_dict=False)[0][0]
        latent = planner.refine(executor.space, stepped, latent, merged, scheduler, i)
        t3 = time.perf_counter()
        stats = StepStats(i, float(t), len(plan.windows), t1 - t0, t2 - t1, t3 - t2)
        result.steps.append(stats)
        if on_step:
            on_step(stats, latent, scheduler)
    result.latent = latent
    return result
