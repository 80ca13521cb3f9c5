"""The per-step planner: a recipe turned into initial noise, each step's windows and merge,
the attention/RoPE patches the workers install, and the refinement after each step.

A thin dispatcher: every section kind's behaviour is the factory registered for it in
:mod:`longvid_dist.methods.registry`; this module knows no kind by name.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..methods import registry
from ..methods.plans import StepPlan
from ..methods.recipes import Recipe
from ..methods.registry import NoiseContext, RefineContext

__all__ = ["Planner", "StepPlan"]


class Planner:
    """Everything a recipe decides, for a latent of ``num_frames`` frames."""

    def __init__(self, recipe: Recipe, num_frames: int, native_window: int,
                 rng: Callable[[str, int | None], torch.Generator]):
        self.recipe = recipe
        self.num_frames = num_frames
        self.native = native_window
        plan = recipe.plan
        self.window = min(plan.params.get("window") or native_window, num_frames)
        self.stride = plan.params.get("stride") or max(self.window // 2, 1)
        self.rng = rng
        # A video no longer than one window degenerates to direct sampling.
        self.kind = registry.SECTION_DEFAULTS["plan"] if num_frames <= self.window else plan.kind
        anchored = any(registry.get("attention", a.kind).anchor_windows for a in recipe.attention_patches())
        self.abam = anchored and self.kind != registry.SECTION_DEFAULTS["plan"]
        self._step_plan = registry.get("plan", self.kind).factory(
            plan.params if self.kind == plan.kind else {}, num_frames=num_frames, window=self.window,
            stride=self.stride, anchored=self.abam, rng=rng)

    # -- initial noise ------------------------------------------------------------------
    def init_noise(self, space, generator: torch.Generator, frames: int, height: int, width: int) -> torch.Tensor:
        """The recipe's initial latent ``[C, F, h, w]``. ``iid`` draws from ``generator``
        exactly as the stock pipeline does; other strategies use the keyed "noise" generator."""
        n = self.recipe.noise
        ctx = NoiseContext(space, generator, self.rng, frames, height, width, self.native, self.num_frames)
        return registry.get("noise", n.kind).factory(dict(n.params), ctx)

    # -- windows and merge --------------------------------------------------------------
    def plan(self, step: int, t: float) -> StepPlan:
        """The windows of step ``step`` (timestep ``t``) and their merge."""
        return self._step_plan(step, t)

    # -- patches the workers install ----------------------------------------------------
    def patches(self) -> dict:
        """Plain-data description of the attention and RoPE patches (sent to every worker)."""
        r = self.recipe
        return {"attention": [{"kind": a.kind, **a.params} for a in r.attention_patches()],
                "rope": {"kind": r.rope.kind, **r.rope.params},
                "train_len": self.native, "test_len": self.num_frames}

    # -- refinement -----------------------------------------------------------------------
    def refine(self, space, latent_next: torch.Tensor, latent: torch.Tensor, merged: torch.Tensor,
               scheduler, step: int) -> torch.Tensor:
        """The recipe's refinement after the scheduler step (GLC's VMCR; identity for none)."""
        r = self.recipe.refine
        ctx = RefineContext(space, latent_next, latent, merged, scheduler, step)
        return registry.get("refine", r.kind).factory(dict(r.params), ctx)
