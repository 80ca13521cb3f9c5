"""Recipes: named compositions of window plans and merges, and the per-step planner.

A recipe is data (:class:`Recipe`); :class:`Planner` turns it into each step's windows and
the function that merges their predictions. The sampling loop only sees ``Planner``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Callable

import torch

from .merge import fuse_paths, glc_gamma, wls_merge
from .windows import PROFILES, Window, dilated_windows, direct_windows, shifted_windows, sliding_windows

PLANS = ("direct", "sliding", "glc")


@dataclass(frozen=True)
class Recipe:
    """What a render does each step. Window sizes are in latent frames."""

    name: str
    """Recipe name (``longvid recipes`` lists the built-in ones)."""
    description: str
    """One line for listings."""
    plan: str = "direct"
    """Window plan: ``direct`` (one window), ``sliding`` (Gen-L-Video) or ``glc`` (global
    dilated + local randomly shifted windows, fused by gamma(t))."""
    window: int | None = None
    """Window length in latent frames; ``None`` = the model's native clip (21 for Wan)."""
    stride: int | None = None
    """Sliding / local window stride in latent frames; ``None`` = half the window."""
    profile: str = "uniform"
    """Per-frame merge weights: uniform, pyramid (triangular) or gaussian."""
    gamma0: float = 0.005
    """GLC path fusion: initial annealing coefficient (paper default 0.005)."""
    beta: float = 0.0005
    """GLC path fusion: growth rate of gamma with t (paper default 0.0005)."""

    def __post_init__(self):
        if self.plan not in PLANS:
            raise ValueError(f"recipe {self.name!r}: plan {self.plan!r} unknown; use one of {', '.join(PLANS)}")
        if self.profile not in PROFILES:
            raise ValueError(f"recipe {self.name!r}: profile {self.profile!r} unknown; use one of {', '.join(PROFILES)}")
        for k in ("window", "stride"):
            v = getattr(self, k)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"recipe {self.name!r}: {k} must be a positive integer (latent frames), got {v!r}")
        if self.window and self.stride and self.stride > self.window:
            raise ValueError(f"recipe {self.name!r}: stride {self.stride} exceeds window {self.window}")
        if not self.gamma0 >= 0 or not self.gamma0 <= 1:
            raise ValueError(f"recipe {self.name!r}: gamma0 must be in [0, 1], got {self.gamma0}")

    def params(self) -> dict:
        """Parameters other than name/description (for listings and the sidecar)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("name", "description")}

    def with_overrides(self, **kw) -> "Recipe":
        """A copy with the non-None overrides applied (validated again)."""
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


BUILTIN: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("direct", "direct sampling: one window over the whole video (stock pipeline)", plan="direct"),
        Recipe("sliding", "Gen-L-Video: overlapping windows, stride half a window, WLS merge", plan="sliding"),
        Recipe("glc", "GLC-Diffusion: global dilated + local random-shift windows, gamma(t) fusion",
               plan="glc"),
    )
}


def get_recipe(name: str) -> Recipe:
    """A built-in recipe by name; ``ValueError`` listing the choices otherwise."""
    try:
        return BUILTIN[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}: use one of {', '.join(BUILTIN)}") from None


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
