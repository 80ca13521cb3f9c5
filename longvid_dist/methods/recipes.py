"""Recipes: named compositions of window plans and merges, as data.

A recipe is a frozen :class:`Recipe`; ``sampling.planner.Planner`` turns it into each step's
windows and the function that merges their predictions. Importing this module is cheap (no
torch), so specs are validated before anything heavy loads.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

PROFILES = ("uniform", "pyramid", "triangular", "gaussian")

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
