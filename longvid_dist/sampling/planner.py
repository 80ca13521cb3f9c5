"""The per-step planner: a recipe turned into initial noise, each step's windows and merge,
the attention/RoPE patches the workers install, and the refinement after each step.

A thin dispatcher: every section kind's behaviour is the factory registered for it in
:mod:`longvid_dist.methods.registry`; this module knows no kind by name.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch

from ..methods import registry
from ..methods.plans import StepPlan
from ..methods.recipes import Recipe
from ..methods.registry import NoiseContext, RefineContext

__all__ = ["Planner", "StepPlan"]


class Planner:
    """Everything a recipe decides, for a latent of ``num_frames`` frames.

    Every section's parameters are resolved once here (:func:`registry.resolve`: the model's
    defaults filled in for this video) and the resolved values are what the factories, the
    workers (:meth:`patches`) and the sidecar (:meth:`resolved`) see. ``tokens_per_frame``
    (transformer tokens per latent frame) lets geometry-dependent attention defaults (FreeLOC's
    stripe width) resolve at the coordinator; None leaves them to the layer. ``conds`` (a
    :class:`~longvid_dist.storyboard.StoryboardConds`) gives every window the conditioning id of
    the storyboard segments it covers; without it every window keeps ``main``.
    """

    def __init__(self, recipe: Recipe, num_frames: int, native_window: int,
                 rng: Callable[[str, int | None], torch.Generator], tokens_per_frame: int | None = None,
                 temporal_factor: int = 4, conds=None):
        self.recipe = recipe
        self.conds = conds
        self.num_frames = num_frames
        self.native = native_window
        plan = recipe.plan
        geo = registry.Geometry(num_frames, native_window, temporal_factor=temporal_factor)
        self._plan_params = registry.resolve("plan", plan.kind, plan.params, geo)
        self.rng = rng
        self.chunks = None
        """The chunked plan object (diffusion forcing, causal rollout), or None for window plans."""
        if registry.get("plan", plan.kind).chunked:  # made chunk after chunk, never degenerates
            self.kind, self.abam, self._step_plan = plan.kind, False, None
            self.chunks = registry.get("plan", plan.kind).factory(self._plan_params, num_frames=num_frames,
                                                                  temporal=temporal_factor, rng=rng)
            self.window = self.stride = max(s.sink + s.frames for s in self.chunks.segments())  # one model call
            self.geometry = registry.Geometry(num_frames, native_window, self.window, tokens_per_frame,
                                              temporal_factor)
            return
        self.window = min(self._plan_params.get("window") or native_window, num_frames)
        self.stride = self._plan_params.get("stride") or max(self.window // 2, 1)
        # A video no longer than one window degenerates to direct sampling.
        self.kind = registry.SECTION_DEFAULTS["plan"] if num_frames <= self.window else plan.kind
        anchored = any(registry.get("attention", a.kind).anchor_windows for a in recipe.attention_patches())
        self.abam = anchored and self.kind != registry.SECTION_DEFAULTS["plan"]
        self._step_plan = registry.get("plan", self.kind).factory(
            self._plan_params if self.kind == plan.kind else {}, num_frames=num_frames, window=self.window,
            stride=self.stride, anchored=self.abam, rng=rng)
        # what one model call sees: the whole video for a direct plan, else the plan's window
        self.geometry = registry.Geometry(num_frames, native_window,
                                          num_frames if self.kind == registry.SECTION_DEFAULTS["plan"] else self.window,
                                          tokens_per_frame)

    def _resolved(self, sec: str, part) -> dict:
        return registry.resolve(sec, part.kind, part.params, self.geometry)

    # -- the recipe as used -----------------------------------------------------------------
    def resolved(self) -> dict:
        """The recipe as this render runs it (plain data, the sidecar's ``resolved_recipe``):
        every section's parameters with each default replaced by the value used (window,
        stride, band, FreeLOC's W1/W2/G1/G2/clip/Ds...). A plan that degenerates to direct
        sampling (a video no longer than one window) says so in ``runs_as``."""
        out: dict = {"name": self.recipe.name}
        for sec in registry.SECTIONS:
            s = getattr(self.recipe, sec)
            if sec == "plan":
                out[sec] = {"kind": s.kind, **_plain(self._plan_params)}
                if self.kind != s.kind:
                    out[sec]["runs_as"] = self.kind
            elif sec == "attention" and s.kind == "composite":
                out[sec] = [{"kind": p.kind, **_plain(self._resolved(sec, p))} for p in s.params["patches"]]
            else:
                out[sec] = {"kind": s.kind, **_plain(self._resolved(sec, s))}
        return out

    # -- initial noise ------------------------------------------------------------------
    def init_noise(self, space, generator: torch.Generator, frames: int, height: int, width: int) -> torch.Tensor:
        """The recipe's initial latent ``[C, F, h, w]``. ``iid`` draws from ``generator``
        exactly as the stock pipeline does; other strategies use the keyed "noise" generator."""
        n = self.recipe.noise
        ctx = NoiseContext(space, generator, self.rng, frames, height, width, self.native, self.num_frames)
        return registry.get("noise", n.kind).factory(self._resolved("noise", n), ctx)

    # -- windows and merge --------------------------------------------------------------
    def plan(self, step: int, t: float) -> StepPlan:
        """The windows of step ``step`` (timestep ``t``) and their merge, each window with its
        conditioning id when there is a storyboard. A chunked plan has no steps of its own: its
        largest model call stands for one (what cost estimates read)."""
        if self.chunks is not None:
            from ..methods.windows import direct_windows

            return StepPlan(direct_windows(self.window), lambda preds, out=None: preds[0])
        plan = self._step_plan(step, t)
        if self.conds is None:
            return plan
        return StepPlan([replace(w, cond=self.conds.cond_for(w.frames, w.weights, w.path, w.role))
                         for w in plan.windows], plan.merge)

    def windows(self, step: int, t: float) -> list[dict]:
        """Plain data of step ``step``'s windows: ``[{"path", "frames"}, ...]`` in merge order
        (and each one's ``cond`` with a storyboard)."""
        if self.chunks is not None:
            return [{"path": "chunk", "frames": list(range(s.frames))} for s in self.chunks.segments()[:1]]
        return [{"path": w.path, "frames": list(w.frames), **({"cond": w.cond} if self.conds else {})}
                for w in self.plan(step, t).windows]

    # -- patches the workers install ----------------------------------------------------
    def patches(self) -> dict:
        """Plain-data description of the attention and RoPE patches (sent to every worker),
        with resolved parameters."""
        r = self.recipe
        g = self.geometry
        return {"attention": [{"kind": a.kind, **self._resolved("attention", a)} for a in r.attention_patches()],
                "rope": {"kind": r.rope.kind, **self._resolved("rope", r.rope)},
                "train_len": self.native, "test_len": self.num_frames,
                "window": g.window, "tokens_per_frame": g.tokens_per_frame}

    # -- refinement -----------------------------------------------------------------------
    def refine(self, space, latent_next: torch.Tensor, latent: torch.Tensor, merged: torch.Tensor,
               scheduler, step: int) -> torch.Tensor:
        """The recipe's refinement after the scheduler step (GLC's VMCR; identity for none)."""
        r = self.recipe.refine
        ctx = RefineContext(space, latent_next, latent, merged, scheduler, step)
        return registry.get("refine", r.kind).factory(self._resolved("refine", r), ctx)


def _plain(params: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}
