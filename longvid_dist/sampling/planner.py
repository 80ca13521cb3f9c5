"""The per-step planner: a recipe turned into initial noise, each step's windows and merge,
the attention/RoPE patches the workers install, and the refinement after each step."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..methods.merge import fuse_paths, glc_gamma, wls_merge
from ..methods.recipes import Recipe
from ..methods.windows import (Window, dilated_windows, direct_windows, shifted_windows, sliding_windows,
                               with_anchor)


@dataclass
class StepPlan:
    """The windows of one step and how to merge their predictions."""

    windows: list[Window]
    """Every model call of the step, in merge order (anchors before their followers)."""
    merge: Callable[[list[torch.Tensor]], torch.Tensor] = field(repr=False)
    """Predictions (aligned with ``windows``) -> merged ``[C, F, h, w]`` prediction."""


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
        self.kind = "direct" if num_frames <= self.window else plan.kind
        self.abam = any(a.kind == "abam" for a in recipe.attention_patches()) and self.kind != "direct"

    # -- initial noise ------------------------------------------------------------------
    def init_noise(self, space, generator: torch.Generator, frames: int, height: int, width: int) -> torch.Tensor:
        """The recipe's initial latent ``[C, F, h, w]``. ``iid`` draws from ``generator``
        exactly as the stock pipeline does; other strategies use the keyed "noise" generator."""
        n = self.recipe.noise
        if n.kind == "iid":
            return space.init_noise(generator, frames, height, width)
        from ..methods.noise import make_noise

        params = dict(n.params)
        if "window" in params:
            params["window"] = min(params["window"] or self.native, self.num_frames)
            params["stride"] = params["stride"] or max(params["window"] // 4, 1)
        if "filter" in params:
            params["kind"] = params.pop("filter")
        shape = space.latent_shape(frames, height, width)
        return make_noise(n.kind, self.rng("noise", None), shape, **params)

    # -- windows and merge --------------------------------------------------------------
    def plan(self, step: int, t: float) -> StepPlan:
        F, L, S, p = self.num_frames, self.window, self.stride, self.recipe.plan.params
        if self.kind == "direct":
            wins = direct_windows(F)
            return StepPlan(wins, lambda preds: wls_merge(preds, wins, F))
        if self.kind == "sliding":
            wins = sliding_windows(F, L, S, p["profile"])
            if self.abam:
                wins = with_anchor(wins)
            return StepPlan(wins, lambda preds: wls_merge(preds, wins, F))
        # glc: global dilated path + local path shifted by a seeded draw, fused by gamma(t)
        paths = p["paths"]
        glob = dilated_windows(F, L) if paths in ("both", "global") else []
        loc = []
        if paths in ("both", "local"):
            shift = int(torch.randint(0, S, (1,), generator=self.rng("local_shift", step)).item())
            loc = shifted_windows(F, L, S, shift, p["profile"])
        if self.abam:
            glob, loc = with_anchor(glob), with_anchor(loc)
        n = len(glob)
        if not loc:
            return StepPlan(glob, lambda preds: wls_merge(preds, glob, F))
        if not glob:
            return StepPlan(loc, lambda preds: wls_merge(preds, loc, F))
        if p["fusion"] == "freespec":  # spectral fusion of the two merged paths, at the coordinator
            from ..methods.spectral import freespec_fuse_paths

            return StepPlan(glob + loc, lambda preds: freespec_fuse_paths(
                wls_merge(preds[:n], glob, F), wls_merge(preds[n:], loc, F), tau=p["tau"]))
        gamma = glc_gamma(t, p["gamma0"], p["beta"])
        return StepPlan(glob + loc, lambda preds: fuse_paths(wls_merge(preds[:n], glob, F),
                                                             wls_merge(preds[n:], loc, F), gamma))

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
        """GLC's VMCR after the scheduler step (identity for other recipes)."""
        if self.recipe.refine.kind != "vmcr":
            return latent_next
        from ..methods.refine import vmcr_step

        x0 = space.predict_x0(latent, merged, scheduler, step)
        return vmcr_step(latent_next, x0, **self.recipe.refine.params)


def make_patches(cfg: dict | None, num_layers: int, model_info: dict | None = None):
    """``(attention patch or None, temporal-RoPE map or None)`` from :meth:`Planner.patches`.

    ``model_info`` (``num_layers``, ``dim``, ``model``) lets FreeLOC find the model's shipped
    profile when the recipe names none.
    """
    if not cfg:
        return None, None
    from ..methods.attention import ABAM, LayerDispatch, SpectralBlend

    patches = []
    for a in cfg["attention"]:
        a = dict(a)
        kind = a.pop("kind")
        if a.get("layers") is not None:
            a["layers"] = tuple(a["layers"])
        if kind == "abam":
            patches.append(ABAM(**a))
        elif kind == "freelong":
            patches.append(SpectralBlend(**a))
        elif kind == "freespec":
            from ..methods.spectral import FreeSpecAttention

            patches.append(FreeSpecAttention(**a))
        elif kind == "freeloc":
            patches.append(freeloc_patch(a, model_info or {"num_layers": num_layers}))
        else:
            raise ValueError(f"unknown attention patch {kind!r}")
    attention = None
    if len(patches) == 1:
        attention = patches[0]
    elif patches:
        attention = LayerDispatch(patches, num_layers)
    rope = None
    if cfg["rope"]["kind"] == "riflex":
        from ..methods.rope import riflex

        k, factor = cfg["rope"]["k"], cfg["rope"]["factor"]
        train, test = cfg["train_len"], cfg["test_len"]

        def rope(theta):
            return riflex(theta, train, test, k=k, factor=factor)

    return attention, rope


PROFILE_DIR = __import__("pathlib").Path(__file__).resolve().parent.parent / "profiles"


def freeloc_profile(path: str | None, model_info: dict) -> dict:
    """A FreeLOC layer profile: the given ``longvid probe`` JSON, else the one shipped for this
    architecture (matched on layer count and width), e.g. the published Wan2.1-1.3B one."""
    import json

    if path:
        data = json.loads(open(path).read())
    else:
        for f in sorted(PROFILE_DIR.glob("*.json")):
            data = json.loads(f.read_text())
            if (data.get("num_layers"), data.get("dim")) == (model_info.get("num_layers"), model_info.get("dim")):
                break
        else:
            raise ValueError(f"no FreeLOC profile ships for a {model_info.get('num_layers')}-layer, "
                             f"{model_info.get('dim')}-wide model; run `longvid probe` and set attention.profile")
    if data.get("num_layers") not in (None, model_info.get("num_layers")):
        raise ValueError(f"FreeLOC profile {path!r} is for {data['num_layers']} layers, the model has "
                         f"{model_info.get('num_layers')}")
    return data["layers"]


def freeloc_patch(params: dict, model_info: dict):
    """The FreeLOC patch of a recipe's ``attention: {kind: freeloc, ...}`` section."""
    from ..methods.freeloc import FreeLOC, VRPRParams

    profile = freeloc_profile(params.get("profile"), model_info)
    if params.get("layers") is not None:  # composed with other patches: only these layers
        profile = {k: v for k, v in profile.items() if int(k) in params["layers"]}
    w = {k: params.get(k) for k in ("W1", "W2", "G1", "G2", "clip")}
    vrpr = None
    if w["W1"] is not None or w["W2"] is not None:
        if w["W1"] is None or w["W2"] is None:
            raise ValueError("freeloc: set both W1 and W2 (or neither, for the length rule)")
        vrpr = VRPRParams(w["W1"], w["W2"], w["G1"] or 2, w["G2"] or 8, w["clip"] or 20)
    patch = FreeLOC(profile=profile, params=vrpr, D1=params["D1"], D2=params["D2"], Ds=params["Ds"])
    if params.get("layers") is not None:
        patch.layers = tuple(params["layers"])
    return patch
