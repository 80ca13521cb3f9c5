"""The per-step planner: a recipe turned into each step's windows and merge."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..methods.merge import fuse_paths, glc_gamma, wls_merge
from ..methods.recipes import Recipe
from ..methods.windows import Window, dilated_windows, direct_windows, shifted_windows, sliding_windows


@dataclass
class StepPlan:
    """The windows of one step and how to merge their predictions."""

    windows: list[Window]
    """Every model call of the step, in merge order."""
    merge: Callable[[list[torch.Tensor]], torch.Tensor] = field(repr=False)
    """Predictions (aligned with ``windows``) -> merged ``[C, F, h, w]`` prediction."""


class Planner:
    """Per-step window plans of a recipe for a latent of ``num_frames`` frames."""

    def __init__(self, recipe: Recipe, num_frames: int, native_window: int,
                 rng: Callable[[str, int], torch.Generator]):
        self.recipe = recipe
        self.num_frames = num_frames
        self.window = min(recipe.window or native_window, num_frames)
        self.stride = recipe.stride or max(self.window // 2, 1)
        self.rng = rng
        # A video no longer than one window degenerates to direct sampling.
        self.kind = "direct" if num_frames <= self.window else recipe.plan

    def plan(self, step: int, t: float) -> StepPlan:
        F, L, S, r = self.num_frames, self.window, self.stride, self.recipe
        if self.kind == "direct":
            wins = direct_windows(F)
            return StepPlan(wins, lambda p: wls_merge(p, wins, F))
        if self.kind == "sliding":
            wins = sliding_windows(F, L, S, r.profile)
            return StepPlan(wins, lambda p: wls_merge(p, wins, F))
        # glc: global dilated path + local path shifted by a seeded draw, fused by gamma(t)
        shift = int(torch.randint(0, S, (1,), generator=self.rng("local_shift", step)).item())
        glob = dilated_windows(F, L)
        loc = shifted_windows(F, L, S, shift, r.profile)
        gamma = glc_gamma(t, r.gamma0, r.beta)
        n = len(glob)

        def merge(p):
            return fuse_paths(wls_merge(p[:n], glob, F), wls_merge(p[n:], loc, F), gamma)

        return StepPlan(glob + loc, merge)
