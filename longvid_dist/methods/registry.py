"""The method registry: every recipe section kind, registered where the method is defined.

A recipe has five sections (:data:`SECTIONS`); each section names a *kind* (``plan: glc``,
``attention: abam``...). A module of this package declares a kind with :func:`register`: its
parameter schema (:class:`Param`), the factory that builds it, the model capabilities it needs
and, optionally, a check against the rest of the recipe. Nothing else lists kinds: recipe
validation (:mod:`.recipes`), the planner and :func:`build_patches` look them up here, so a new
method is one module plus one YAML recipe.

Method modules are found by importing every module of this package once, on first use
(:func:`discover`). This module itself imports neither torch nor any method module at import.

Factory calling conventions, per section:

- ``plan``: ``factory(params, num_frames=, window=, stride=, anchored=, rng=)`` returns
  ``step_plan(step, t) -> StepPlan`` (see :mod:`.plans`);
- ``noise``: ``factory(params, ctx: NoiseContext)`` returns the initial latent ``[C, F, h, w]``;
- ``attention``: ``factory(params, model_info)`` returns an ``AttentionPatch``;
- ``rope``: ``factory(params, train_len, test_len)`` returns ``theta -> theta'`` (numpy);
- ``refine``: ``factory(params, ctx: RefineContext)`` returns the refined ``z_{t-1}``.

A kind may also register ``resolve(params, geometry: Geometry) -> params``: the parameters with
every null ("the model's default") replaced by the value a render of that geometry uses (a
plan's window and stride, a band of half the native clip, FreeLOC's VRPR bands and stripe
width). :func:`resolve` applies it; the planner hands resolved parameters to the factories and
workers and records them in the sidecar, so what is reported is what ran.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable

SECTIONS = ("plan", "noise", "attention", "rope", "refine")
"""Recipe sections, in recipe (and listing) order."""

SECTION_DEFAULTS = {"plan": "direct", "noise": "iid", "attention": "none", "rope": "none", "refine": "none"}
"""The kind of a section a recipe omits."""


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


def num_range(lo=-math.inf, hi=math.inf, lo_open=False, hi_open=False) -> Callable[[Any], bool]:
    """A :attr:`Param.check` accepting finite numbers in ``[lo, hi]`` (ends open where asked)."""
    def ok(v):
        return math.isfinite(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    return ok


INT_OR_NULL = (int, type(None))
NUM = (int, float)
LAYERS = Param((list, type(None)), None, "null (all layers) or a list of layer indices",
               lambda v: all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v))
"""The ``layers`` parameter every attention patch takes (composition on disjoint layers)."""
CUTOFF = Param(NUM, 0.25, "a number in (0, 1]", num_range(0, 1, lo_open=True))
"""A low-pass cut-off as a fraction of Nyquist."""


@dataclass(frozen=True)
class Kind:
    """One registered section kind."""

    section: str
    """The recipe section it fills (one of :data:`SECTIONS`)."""
    name: str
    """Its ``kind:`` name in recipes."""
    params: dict[str, Param]
    """Parameter schema: name -> :class:`Param`, in listing order."""
    factory: Callable | None
    """Builds the method (calling convention per section: see the module docstring); None for
    a kind that does nothing (``attention: none``, ``rope: none``)."""
    requires: frozenset[str] | Callable[[dict], Any] = frozenset()
    """Model capabilities it needs (``attention_patches``, ``temporal_rope``), or a function of
    the section's parameters giving them (a need that depends on a setting)."""
    check: Callable[[Any, Any], str | None] | None = None
    """``check(recipe, section) -> message or None``: a conflict with the rest of the recipe."""
    anchor_windows: bool = False
    """Attention kinds only: the plan marks each path's first window as the anchor of the others."""
    resolve: Callable[[dict, "Geometry"], dict] | None = None
    """``resolve(params, geometry) -> params`` with defaults that depend on the model or the
    video filled in (see :func:`resolve`); None: the parameters are used as given."""
    sp_modes: tuple[str, ...] = ("ulysses", "ring")
    """Attention and plan kinds: sequence-parallel modes the patch or plan is correct under (a
    layout using another is refused before the render starts; causal rollout: none)."""
    check_video: Callable[[dict, "Geometry"], str | None] | None = None
    """``check_video(resolved params, geometry) -> message or None``: a conflict with the video
    itself (its length, the model's clip), checked when a render is specified."""
    mask_refusal: str | None = None
    """Attention kinds only: why the patch cannot honour the model's own attention mask
    (``AttnContext.mask``: the block-causal mask of diffusion forcing); a recipe whose plan asks
    for one (capability ``block_causal_attention``) is refused with it. None: it honours the mask."""
    chunked: bool = False
    """Plan kinds only: a chunked plan (diffusion forcing, causal rollout) made chunk after
    chunk by :mod:`longvid_dist.sampling.chunks`; its factory is
    ``factory(params, num_frames=, temporal=, rng=)`` and returns the plan object."""


@dataclass(frozen=True)
class Geometry:
    """What a render's resolved parameters may depend on."""

    num_frames: int
    """Latent frames of the video."""
    native_window: int
    """The model's native clip length in latent frames."""
    window: int | None = None
    """Latent frames each model call sees (the resolved plan window; the whole video for a
    direct plan); None: ``num_frames``."""
    tokens_per_frame: int | None = None
    """Transformer tokens per latent frame, when known (FreeLOC's stripe width needs it)."""
    temporal_factor: int = 4
    """Pixel frames per latent frame after the first (plans with parameters in pixel frames)."""

    @property
    def window_frames(self) -> int:
        """Latent frames of one model call."""
        return self.window or self.num_frames


_KINDS: dict[str, dict[str, Kind]] = {sec: {} for sec in SECTIONS}
_discovered = False


def register(section: str, name: str, factory: Callable | None = None, params: dict[str, Param] | None = None,
             requires=(), check=None, anchor_windows: bool = False, resolve=None,
             sp_modes: tuple[str, ...] = ("ulysses", "ring"), chunked: bool = False, check_video=None,
             mask_refusal: str | None = None) -> Kind:
    """Register kind ``name`` of ``section``; re-registering a name replaces it (module reload)."""
    if section not in _KINDS:
        raise ValueError(f"unknown recipe section {section!r}; use one of {', '.join(SECTIONS)}")
    k = Kind(section, name, dict(params or {}), factory, requires if callable(requires) else frozenset(requires),
             check, anchor_windows, resolve,
             tuple(sp_modes), check_video, mask_refusal, chunked)
    _KINDS[section][name] = k
    return k


def unregister(section: str, name: str) -> None:
    """Remove a registered kind (tests)."""
    _KINDS[section].pop(name, None)


def discover() -> None:
    """Import every module of the methods package once, so each registers its kinds."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    from . import __name__ as pkg_name, __path__ as pkg_path

    for mod in sorted(pkgutil.iter_modules(pkg_path), key=lambda m: m.name):
        importlib.import_module(f"{pkg_name}.{mod.name}")


def kinds(section: str) -> dict[str, Kind]:
    """The registered kinds of ``section``: the section default first, then by name."""
    discover()
    reg = _KINDS[section]
    default = SECTION_DEFAULTS[section]
    return {n: reg[n] for n in sorted(reg, key=lambda n: (n != default, n))}


def get(section: str, name: str) -> Kind:
    """The registered kind ``name`` of ``section`` (``KeyError`` if none)."""
    discover()
    return _KINDS[section][name]


def resolve(section: str, name: str, params: dict, geometry: Geometry) -> dict:
    """``params`` of kind ``name`` with every model- or video-dependent default (null) replaced
    by the value used for ``geometry``; idempotent (resolved parameters resolve to themselves).
    A new dict; kinds without a ``resolve`` return their parameters unchanged."""
    kind = get(section, name)
    params = dict(params)
    return dict(kind.resolve(params, geometry)) if kind.resolve else params


def schema() -> dict[str, dict[str, dict[str, Param]]]:
    """section -> kind -> {param: :class:`Param`}."""
    return {sec: {n: k.params for n, k in kinds(sec).items()} for sec in SECTIONS}


# Kinds that do nothing live here: they belong to no method.
register("attention", "none")
register("rope", "none")
register("refine", "none", factory=lambda params, ctx: ctx.latent_next)


@dataclass
class NoiseContext:
    """What a noise factory may use to draw the initial latent."""

    space: Any
    """The model's latent space (``init_noise``, ``latent_shape``)."""
    generator: Any
    """The stock pipeline's generator (``iid`` draws from it exactly as diffusers does)."""
    keyed: Callable[[str, int | None], Any]
    """Keyed generators ``(purpose, step) -> torch.Generator`` of the render."""
    frames: int
    """Pixel frames."""
    height: int
    """Pixel height."""
    width: int
    """Pixel width."""
    native_window: int
    """The model's native clip length in latent frames."""
    num_frames: int
    """Latent frames of the video."""


@dataclass
class RefineContext:
    """What a refine factory may use after the scheduler step."""

    space: Any
    """The model's latent space (``predict_x0``)."""
    latent_next: Any
    """``z_{t-1}`` from the scheduler step, ``[C, F, h, w]``."""
    latent: Any
    """``z_t``, ``[C, F, h, w]``."""
    merged: Any
    """The merged model prediction at ``t``, ``[C, F, h, w]``."""
    scheduler: Any
    """The diffusers scheduler."""
    step: int
    """Step index."""


def build_patches(patches: dict | None, model_info: dict):
    """``(attention patch or None, temporal-RoPE map or None)`` for a model.

    ``patches`` is the plain data of ``Planner.patches()`` (``attention``: list of
    ``{kind, **params}``; ``rope``: ``{kind, **params}``; ``train_len``, ``test_len``, and
    optionally ``window`` and ``tokens_per_frame``, the :class:`Geometry` its defaults resolve for);
    ``model_info`` is the adapter's ``{num_layers, dim, family}`` (FreeLOC finds its shipped
    profile by it). Several attention patches are dispatched per layer (``LayerDispatch``).
    """
    if not patches:
        return None, None
    geometry = Geometry(patches["test_len"], patches["train_len"], patches.get("window"),
                        patches.get("tokens_per_frame"))
    built = []
    for a in patches["attention"]:
        a = dict(a)
        name = a.pop("kind")
        try:
            kind = get("attention", name)
        except KeyError:
            raise ValueError(f"unknown attention patch {name!r}") from None
        a = resolve("attention", name, a, geometry)  # already resolved by the planner: unchanged
        if a.get("layers") is not None:
            a["layers"] = tuple(a["layers"])
        if kind.factory is not None:
            built.append(kind.factory(a, model_info))
    attention = None
    if len(built) == 1:
        attention = built[0]
    elif built:
        from .attention import LayerDispatch

        attention = LayerDispatch(built, model_info["num_layers"])
    r = dict(patches["rope"])
    rope_kind = get("rope", r.pop("kind"))
    rope = rope_kind.factory(r, patches["train_len"], patches["test_len"]) if rope_kind.factory else None
    return attention, rope
