"""Recipes: named compositions of training-free methods, as data.

A recipe has five sections, each a ``kind`` plus parameters:

- ``plan``: which windows each step denoises and how they merge (e.g. direct, sliding, glc);
- ``noise``: the initial noise (e.g. iid, freenoise, glc_reinit, antiphase);
- ``attention``: a self-attention patch (e.g. none, abam, freelong, freespec, freeloc), or a
  list of patches on disjoint ``layers``;
- ``rope``: a temporal RoPE change (e.g. none, riflex);
- ``refine``: a latent refinement after each step (e.g. none, vmcr).

Built-in recipes are YAML files shipped in ``longvid_dist/recipes``; ``--recipe path.yaml``
loads a user's file with the same rules. Each kind, its parameters (type, default, allowed
range), the model capabilities it needs and its conflicts with other sections are registered
next to the method (:mod:`.registry`); :data:`SCHEMA` is a view of them. Validation names the
offending key. Validating a recipe imports the method modules, and so torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import registry
from .registry import SECTION_DEFAULTS, SECTIONS, Param  # noqa: F401  (Param: re-exported)

RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes"


class _Schema(Mapping):
    """section -> kind -> {param: :class:`Param`}, read from the registry on each access (so
    kinds registered later show up)."""

    def __getitem__(self, section):
        if section not in SECTIONS:
            raise KeyError(section)
        return {n: k.params for n, k in registry.kinds(section).items()}

    def __iter__(self):
        return iter(SECTIONS)

    def __len__(self):
        return len(SECTIONS)


SCHEMA: Mapping[str, dict[str, dict[str, Param]]] = _Schema()
"""Every parameter's type, default and allowed range, per section and kind (from the registry)."""


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

    def requires(self) -> frozenset[str]:
        """Model capabilities this recipe needs (union over its sections' kinds)."""
        need: set[str] = set()
        for sec in SECTIONS:
            for part in self._parts(sec):
                req = registry.get(sec, part.kind).requires
                need |= set(req(part.params) if callable(req) else req)
        return frozenset(need)

    def _parts(self, sec: str) -> tuple[Section, ...]:
        """The section as registered kinds (an attention list as its patches)."""
        s = getattr(self, sec)
        return s.params["patches"] if s.kind == "composite" else (s,)

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
        if (isinstance(v, bool) and bool not in p.type) or not isinstance(v, p.type) \
                or (v is not None and not p.check(v)):
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
    """Each kind's registered check against the rest of the recipe (e.g. ABAM needs windows),
    and every attention patch against a plan that masks attention block-causally."""
    if "block_causal_attention" in r.requires():
        for p in r.attention_patches():
            why = registry.get("attention", p.kind).mask_refusal
            if why:
                raise RecipeError(f"recipe {r.name!r}: attention.kind: {p.kind} cannot honour the block-causal "
                                  f"attention mask that plan {r.plan.kind} asks for ({why})")
    for sec in SECTIONS:
        for part in r._parts(sec):
            check = registry.get(sec, part.kind).check
            msg = check(r, part) if check else None
            if msg:
                raise RecipeError(f"recipe {r.name!r}: {msg}")


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
    """Names of the recipes shipped with the package: ``direct`` (the stock pipeline) first,
    then by name."""
    return sorted((p.stem for p in RECIPE_DIR.glob("*.yaml")), key=lambda n: (n != "direct", n))


def get_recipe(name: str) -> Recipe:
    """A built-in recipe by name, or a YAML file by path (``*.yaml`` / ``*.yml``)."""
    if name.endswith((".yaml", ".yml")):
        return load_recipe(name)
    path = RECIPE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise RecipeError(f"unknown recipe {name!r}: use one of {', '.join(builtin_names())}, "
                          f"or a path to a .yaml recipe")
    return load_recipe(path)
