"""Window plans as recipe kinds: which windows each step denoises and how they merge.

``direct`` (one window), ``sliding`` (Gen-L-Video) and ``glc`` (GLC-Diffusion's global dilated
+ local shifted paths) each register a factory returning ``step_plan(step, t) -> StepPlan``.
The windows come from :mod:`.windows`, the merges from :mod:`.merge` and :mod:`.spectral`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .merge import fuse_paths, glc_gamma, wls_merge
from .registry import INT_OR_NULL, NUM, Geometry, Param, num_range, register
from .windows import (PROFILES, Window, dilated_windows, direct_windows, shifted_windows, sliding_windows,
                      with_anchor)


@dataclass
class StepPlan:
    """The windows of one step and how to merge their predictions."""

    windows: list[Window]
    """Every model call of the step, in merge order (anchors before their followers)."""
    merge: Callable[..., torch.Tensor] = field(repr=False)
    """``merge(preds, out=None)``: predictions (aligned with ``windows``) -> merged ``[C, F, h, w]``
    prediction, written into ``out`` (an fp32 buffer of that shape) when given and the merge
    makes a new tensor; it may also return a prediction passed through, or a fresh tensor."""


WINDOW = Param(INT_OR_NULL, None, "a positive integer (latent frames) or null for the model's native clip",
               lambda v: v >= 1)
STRIDE = Param(INT_OR_NULL, None, "a positive integer (latent frames) or null for stride_frac of the window",
               lambda v: v >= 1)
STRIDE_FRAC = Param(NUM, 0.5, "a number in (0, 1]: the stride as a fraction of the window when stride is null "
                    "(0.5 Gen-L-Video's half window, 0.25 FreeNoise's quarter)", num_range(0, 1, lo_open=True))
PROFILE = Param((str,), "uniform", f"one of {', '.join(PROFILES)}", lambda v: v in PROFILES)


def resolve_window_stride(params: dict, geometry: Geometry) -> dict:
    """A windowed plan's ``window`` (null: the model's native clip) and ``stride`` (null:
    ``stride_frac`` of the window, rounded down, at least 1), both at most the video."""
    out = dict(params)
    window = min(params.get("window") or geometry.native_window, geometry.num_frames)
    out["window"] = window
    out["stride"] = params.get("stride") or max(int(window * params.get("stride_frac", 0.5)), 1)
    return out


def _check_stride(recipe, section) -> str | None:
    w, s = section.params.get("window"), section.params.get("stride")
    if w and s and s > w:
        return f"plan.stride: {s} exceeds plan.window {w}"
    return None


def direct_plan(params, num_frames, window, stride, anchored, rng):
    """Direct sampling: one window over the whole video, returned unchanged by the merge."""
    wins = direct_windows(num_frames)
    plan = StepPlan(wins, lambda preds, out=None: wls_merge(preds, wins, num_frames, out=out))
    return lambda step, t: plan


def sliding_plan(params, num_frames, window, stride, anchored, rng):
    """Gen-L-Video (Wang et al. 2023, "Gen-L-Video: Multi-Text to Long Video Generation via
    Temporal Co-Denoising", §3): overlapping windows merged by closed-form weighted least
    squares; with ABAM the first window anchors the others."""
    wins = sliding_windows(num_frames, window, stride, params["profile"])
    if anchored:
        wins = with_anchor(wins)
    plan = StepPlan(wins, lambda preds, out=None: wls_merge(preds, wins, num_frames, out=out))
    return lambda step, t: plan


def glc_plan(params, num_frames, window, stride, anchored, rng):
    """GLC-Diffusion (Ma et al., "GLC-Diffusion: Global-Local Collaborative Diffusion for Long
    Video Generation", §3.2, Eq. 4, 6, 9): a global dilated path and a local path whose windows
    shift by a seeded draw each step, each WLS-merged, fused by ``gamma(t) = gamma0 e^(beta t)``
    (or spectrally at the coordinator with ``fusion: freespec``)."""
    F, L, S, p = num_frames, window, stride, params
    paths = p["paths"]
    work: dict = {}  # the global path's merge buffer, reused every step (fused into the local one)

    def global_merge(preds, glob):
        merged = wls_merge(preds, glob, F, out=work.get("global"))
        if all(merged.data_ptr() != q.data_ptr() for q in preds):  # not a prediction passed through
            work["global"] = merged
        return merged

    def step_plan(step: int, t: float) -> StepPlan:
        glob = dilated_windows(F, L) if paths in ("both", "global") else []
        loc = []
        if paths in ("both", "local"):
            shift = int(torch.randint(0, S, (1,), generator=rng("local_shift", step)).item())
            loc = shifted_windows(F, L, S, shift, p["profile"])
        if anchored:
            glob, loc = with_anchor(glob), with_anchor(loc)
        n = len(glob)
        if not loc:
            return StepPlan(glob, lambda preds, out=None: wls_merge(preds, glob, F, out=out))
        if not glob:
            return StepPlan(loc, lambda preds, out=None: wls_merge(preds, loc, F, out=out))
        if p["fusion"] == "freespec":  # spectral fusion of the two merged paths, at the coordinator
            from .spectral import freespec_fuse_paths

            return StepPlan(glob + loc, lambda preds, out=None: freespec_fuse_paths(
                global_merge(preds[:n], glob), wls_merge(preds[n:], loc, F, out=out), tau=p["tau"]))
        gamma = glc_gamma(t, p["gamma0"], p["beta"])  # fused into the local merge, in out
        return StepPlan(glob + loc, lambda preds, out=None: fuse_paths(global_merge(preds[:n], glob),
                                                                       wls_merge(preds[n:], loc, F, out=out), gamma))

    return step_plan


def _check_glc(recipe, section) -> str | None:
    if section.params["fusion"] == "freespec" and section.params["paths"] != "both":
        return "plan.fusion: freespec fuses the global and local paths and needs paths: both"
    return _check_stride(recipe, section)


register("plan", "direct", direct_plan)
register("plan", "sliding", sliding_plan, {"window": WINDOW, "stride": STRIDE, "stride_frac": STRIDE_FRAC,
                                          "profile": PROFILE},
         check=_check_stride, resolve=resolve_window_stride)
register("plan", "glc", glc_plan, {
    "window": WINDOW, "stride": STRIDE, "stride_frac": STRIDE_FRAC, "profile": PROFILE,
    "paths": Param((str,), "both", "both, global or local", lambda v: v in ("both", "global", "local")),
    "gamma0": Param(NUM, 0.005, "a number in [0, 1]", num_range(0, 1)),
    "beta": Param(NUM, 0.0005, "a number >= 0", num_range(0)),
    "fusion": Param((str,), "gamma", "gamma (GLC Eq. 9) or freespec (spectral, at the coordinator)",
                    lambda v: v in ("gamma", "freespec")),
    "tau": Param(NUM, 0.9, "a number in [0, 1] (FreeSpec energy fraction)", num_range(0, 1)),
}, check=_check_glc, resolve=resolve_window_stride)
