"""Recipes: named compositions of training-free methods, as data.

A recipe has five sections, each a ``kind`` plus parameters:

- ``plan``: which windows each step denoises and how they merge (direct, sliding, glc);
- ``noise``: the initial noise (iid, freenoise, glc_reinit, antiphase);
- ``attention``: a self-attention patch (none, abam, freelong, freespec, freeloc), or a list
  of patches on disjoint ``layers``;
- ``rope``: a temporal RoPE change (none, riflex);
- ``refine``: a latent refinement after each step (none, vmcr).

Built-in recipes are YAML files shipped in ``longvid_dist/recipes``; ``--recipe path.yaml``
loads a user's file with the same rules. :data:`SCHEMA` is the single source of every
parameter's type, default and allowed range; validation names the offending key. Importing
this module does not import torch, so specs are validated before anything heavy loads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

PROFILES = ("uniform", "pyramid", "triangular", "gaussian")
RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes"


@dataclass(frozen=True)
class Param:
    """One recipe parameter."""

    type: tuple
    """Allowed Python types (``type(None)`` admits null = "the model's default")."""
    default: Any
    """Value when the recipe omits it."""
    allowed: str
    """Human description of allowed values, used in error messages and listings."""
    check: Callable[[Any], bool] = lambda v: True
    """Range check on a non-null value."""


def _num(lo=-math.inf, hi=math.inf, lo_open=False, hi_open=False):
    def ok(v):
        return math.isfinite(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    return ok


_INT_OR_NULL = (int, type(None))
_NUM = (int, float)
_WINDOW = Param(_INT_OR_NULL, None, "a positive integer (latent frames) or null for the model's native clip",
                lambda v: v >= 1)
_STRIDE = Param(_INT_OR_NULL, None, "a positive integer (latent frames) or null for half the window",
                lambda v: v >= 1)
_PROFILE = Param((str,), "uniform", f"one of {', '.join(PROFILES)}", lambda v: v in PROFILES)
_LAYERS = Param((list, type(None)), None, "null (all layers) or a list of layer indices",
                lambda v: all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v))
_CUTOFF = Param(_NUM, 0.25, "a number in (0, 1]", _num(0, 1, lo_open=True))
_OPT_POS = Param(_INT_OR_NULL, None, "null (the length rule) or a positive integer", lambda v: v >= 1)

SCHEMA: dict[str, dict[str, dict[str, Param]]] = {
    "plan": {
        "direct": {},
        "sliding": {"window": _WINDOW, "stride": _STRIDE, "profile": _PROFILE},
        "glc": {
            "window": _WINDOW, "stride": _STRIDE, "profile": _PROFILE,
            "paths": Param((str,), "both", "both, global or local", lambda v: v in ("both", "global", "local")),
            "gamma0": Param(_NUM, 0.005, "a number in [0, 1]", _num(0, 1)),
            "beta": Param(_NUM, 0.0005, "a number >= 0", _num(0)),
            "fusion": Param((str,), "gamma", "gamma (GLC Eq. 9) or freespec (spectral, at the coordinator)",
                            lambda v: v in ("gamma", "freespec")),
            "tau": Param(_NUM, 0.9, "a number in [0, 1] (FreeSpec energy fraction)", _num(0, 1)),
        },
    },
    "noise": {
        "iid": {},
        "freenoise": {"window": _WINDOW,
                      "stride": Param(_INT_OR_NULL, None, "a positive integer or null for a quarter window",
                                      lambda v: v >= 1)},
        "glc_reinit": {
            "window": _WINDOW,
            "stride": Param(_INT_OR_NULL, None, "a positive integer or null for a quarter window",
                            lambda v: v >= 1),
            "filter": Param((str,), "gaussian", "gaussian or butterworth", lambda v: v in ("gaussian", "butterworth")),
            "d_s": _CUTOFF, "d_t": _CUTOFF,
            "order": Param((int,), 4, "a positive integer (Butterworth order)", lambda v: v >= 1),
        },
        "antiphase": {"rho": Param(_NUM, -0.3, "a number in (-1, 0)", _num(-1, 0, True, True))},
    },
    "attention": {
        "none": {},
        "abam": {"lam": Param(_NUM, 0.1, "a number in [0, 1]", _num(0, 1)), "layers": _LAYERS},
        "freelong": {"band": Param((int,), 8, "a positive integer (frames)", lambda v: v >= 1),
                     "d_s": _CUTOFF, "d_t": _CUTOFF, "layers": _LAYERS},
        "freespec": {"tau": Param(_NUM, 0.9, "a number in [0, 1]", _num(0, 1)),
                     "k": Param(_INT_OR_NULL, None, "null (from tau) or a rank >= 0", lambda v: v >= 0),
                     "band": Param((int,), 8, "a positive integer (frames)", lambda v: v >= 1),
                     "method": Param((str,), "gram", "gram or randomized", lambda v: v in ("gram", "randomized")),
                     "layers": _LAYERS},
        "freeloc": {"profile": Param((str, type(None)), None, "null (the model's shipped profile) or a path to "
                                     "a `longvid probe` JSON", lambda v: bool(v)),
                    "W1": _OPT_POS, "W2": _OPT_POS, "G1": _OPT_POS, "G2": _OPT_POS, "clip": _OPT_POS,
                    "D1": Param((int,), 8, "a positive integer (frames)", lambda v: v >= 1),
                    "D2": Param((int,), 24, "a positive integer (frames)", lambda v: v >= 1),
                    "Ds": Param(_INT_OR_NULL, None, "null (the paper's stripe width) or an integer >= 0",
                                lambda v: v >= 0),
                    "layers": _LAYERS},
    },
    "rope": {
        "none": {},
        "riflex": {"k": Param(_INT_OR_NULL, None, "null (the paper's rule) or a frequency index >= 0",
                              lambda v: v >= 0),
                   "factor": Param(_NUM, 0.9, "a number in (0, 1]", _num(0, 1, lo_open=True))},
    },
    "refine": {
        "none": {},
        "vmcr": {"lam_f": Param(_NUM, 0.2, "a number >= 0", _num(0)),
                 "lam_mse": Param(_NUM, 0.001, "a number >= 0", _num(0)),
                 "lam_phase": Param(_NUM, 1.0, "a number >= 0", _num(0)),
                 "omega": Param(_NUM, 2e-5, "a number > 0", _num(0, lo_open=True))},
    },
}
SECTION_DEFAULTS = {"plan": "direct", "noise": "iid", "attention": "none", "rope": "none", "refine": "none"}


class RecipeError(ValueError):
    """A recipe has an unknown key, a wrong type, an out-of-range value or a conflict."""


@dataclass(frozen=True)
class Section:
    """One section of a recipe: a kind and its complete, validated parameters."""

    kind: str
    params: dict = field(default_factory=dict)

    def __getattr__(self, name):
        try:
            return self.params[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass(frozen=True)
class Recipe:
    """A validated recipe. Build with :func:`recipe_from_dict`, :func:`load_recipe` or
    :func:`get_recipe`."""

    name: str
    """Recipe name."""
    description: str
    """One line for listings."""
    plan: Section
    """Window plan and merge."""
    noise: Section
    """Initial noise strategy."""
    attention: Section
    """Self-attention patch."""
    rope: Section
    """Temporal RoPE change."""
    refine: Section
    """Per-step latent refinement."""

    def to_dict(self) -> dict:
        """Plain data (YAML-able; the sidecar records it)."""
        out: dict = {"name": self.name, "description": self.description}
        for sec in SCHEMA:
            s = getattr(self, sec)
            if s.kind == "composite":
                out[sec] = [{"kind": p.kind, **_plain(p.params)} for p in s.params["patches"]]
            else:
                out[sec] = {"kind": s.kind, **_plain(s.params)}
        return out

    def attention_patches(self) -> tuple[Section, ...]:
        """The attention section as a tuple of patches (empty for none)."""
        a = self.attention
        return a.params["patches"] if a.kind == "composite" else (() if a.kind == "none" else (a,))

    def with_overrides(self, window: int | None = None, stride: int | None = None) -> "Recipe":
        """The recipe with the plan's window/stride replaced where given (CLI flags)."""
        d = self.to_dict()
        for k, v in (("window", window), ("stride", stride)):
            if v is not None:
                if k not in SCHEMA["plan"][d["plan"]["kind"]]:
                    raise RecipeError(f"recipe {self.name!r}: plan {d['plan']['kind']} has no {k}")
                d["plan"][k] = v
        return recipe_from_dict(d)


def _plain(params: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}


def _section(recipe: str, sec: str, value) -> Section:
    if value is None:
        value = {"kind": SECTION_DEFAULTS[sec]}
    if isinstance(value, str):
        value = {"kind": value}
    if not isinstance(value, dict):
        raise RecipeError(f"recipe {recipe!r}: {sec}: must be a mapping with a 'kind', got {value!r}")
    kinds = SCHEMA[sec]
    kind = value.get("kind", SECTION_DEFAULTS[sec])
    if kind not in kinds:
        raise RecipeError(f"recipe {recipe!r}: {sec}.kind: {kind!r} unknown; use one of {', '.join(kinds)}")
    schema = kinds[kind]
    params = {}
    for key, v in value.items():
        if key == "kind":
            continue
        if key not in schema:
            allowed = ", ".join(schema) or "none"
            raise RecipeError(f"recipe {recipe!r}: {sec}.{key}: unknown key for {sec} {kind}; allowed: {allowed}")
        p = schema[key]
        if isinstance(v, bool) or not isinstance(v, p.type) or (v is not None and not p.check(v)):
            raise RecipeError(f"recipe {recipe!r}: {sec}.{key}: must be {p.allowed}, got {v!r}")
        params[key] = tuple(v) if isinstance(v, list) else v
    for key, p in schema.items():
        params.setdefault(key, p.default)
    return Section(kind, params)


def _attention(recipe: str, value) -> Section:
    """One patch, or a list of patches (``kind: composite``) that must use disjoint layers."""
    if not isinstance(value, list):
        return _section(recipe, "attention", value)
    parts = tuple(_section(recipe, "attention", v) for v in value)
    if any(p.kind == "none" for p in parts) or len(parts) < 2:
        raise RecipeError(f"recipe {recipe!r}: attention: a list needs two or more patches (no 'none')")
    seen: dict = {}
    for p in parts:
        layers = p.params.get("layers")
        if layers is None:
            raise RecipeError(f"recipe {recipe!r}: attention.{p.kind}.layers: patches in a list need explicit "
                              f"disjoint layers")
        for layer in layers:
            if layer in seen:
                raise RecipeError(f"recipe {recipe!r}: attention: conflicting patches on layer {layer}: "
                                  f"{seen[layer]} and {p.kind}")
            seen[layer] = p.kind
    return Section("composite", {"patches": parts})


def recipe_from_dict(d: dict, name: str | None = None) -> Recipe:
    """Validate a recipe mapping (as read from YAML); :class:`RecipeError` names the key."""
    name = name or d.get("name") or "recipe"
    if not isinstance(d, dict):
        raise RecipeError(f"recipe {name!r}: must be a mapping of sections")
    unknown = set(d) - set(SCHEMA) - {"name", "description"}
    if unknown:
        raise RecipeError(f"recipe {name!r}: {sorted(unknown)[0]}: unknown key; allowed: name, description, "
                          f"{', '.join(SCHEMA)}")
    secs = {sec: (_attention if sec == "attention" else lambda n, v, sec=sec: _section(n, sec, v))(name, d.get(sec))
            for sec in SCHEMA}
    r = Recipe(name, str(d.get("description", "")), **secs)
    _check_conflicts(r)
    return r


def _check_conflicts(r: Recipe) -> None:
    plan = r.plan
    kinds = {p.kind for p in r.attention_patches()}
    if "abam" in kinds and plan.kind == "direct":
        raise RecipeError(f"recipe {r.name!r}: attention abam needs several windows (plan sliding or glc), "
                          f"plan is direct")
    if r.rope.kind == "riflex" and plan.kind != "direct":
        raise RecipeError(f"recipe {r.name!r}: rope riflex extrapolates one window over the whole video and "
                          f"needs plan direct, plan is {plan.kind}")
    if plan.params.get("fusion") == "freespec" and plan.params.get("paths") != "both":
        raise RecipeError(f"recipe {r.name!r}: plan.fusion: freespec fuses the global and local paths and "
                          f"needs paths: both")
    w, s = plan.params.get("window"), plan.params.get("stride")
    if w and s and s > w:
        raise RecipeError(f"recipe {r.name!r}: plan.stride: {s} exceeds plan.window {w}")


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a YAML recipe file."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise RecipeError(f"recipe file {str(path)!r}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe file {str(path)!r}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"recipe file {str(path)!r}: must be a YAML mapping of sections")
    return recipe_from_dict(data, name=data.get("name") or path.stem)


def builtin_names() -> list[str]:
    """Names of the recipes shipped with the package, in listing order."""
    order = ["direct", "sliding", "freenoise", "freelong", "riflex", "glc",
             "glc-no-global", "glc-no-local", "glc-no-reinit", "glc-no-vmcr", "freespec", "freespec-attn",
             "freeloc"]
    found = {p.stem for p in RECIPE_DIR.glob("*.yaml")}
    return [n for n in order if n in found] + sorted(found - set(order))


def get_recipe(name: str) -> Recipe:
    """A built-in recipe by name, or a YAML file by path (``*.yaml`` / ``*.yml``)."""
    if name.endswith((".yaml", ".yml")):
        return load_recipe(name)
    path = RECIPE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise RecipeError(f"unknown recipe {name!r}: use one of {', '.join(builtin_names())}, "
                          f"or a path to a .yaml recipe")
    return load_recipe(path)
