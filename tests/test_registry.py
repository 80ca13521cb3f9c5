"""Methods are plug-ins: a kind registered from a new module is usable in recipes as is."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from longvid_dist.methods import registry
from longvid_dist.methods.recipes import SCHEMA, RecipeError, get_recipe, recipe_from_dict
from longvid_dist.sampling.planner import Planner
from longvid_dist.sampling.rng import keyed_generator

PLUGIN = '''
import torch

from longvid_dist.methods.registry import NUM, Param, num_range, register
from longvid_dist.models.hooks import AttentionPatch, sdpa


class Scaled(AttentionPatch):
    """Attention on keys scaled by ``gain`` (a toy method)."""

    name = "scaled"

    def __init__(self, gain, layers=None):
        self.gain, self.layers = gain, layers

    def attend(self, q, k, v, ctx):
        return sdpa(q, k * self.gain, v)


def _check(recipe, section):
    return "attention.gain: 0 needs plan direct" if section.params["gain"] == 0 and recipe.plan.kind != "direct" else None


register("attention", "scaled", lambda params, model_info: Scaled(**params),
         {"gain": Param(NUM, 1.0, "a number >= 0", num_range(0))}, requires=("attention_patches", "toy"),
         check=_check)
register("noise", "zeros", lambda params, ctx: torch.zeros(ctx.space.latent_shape(ctx.frames, ctx.height, ctx.width)))
'''


@pytest.fixture
def plugin(tmp_path):
    path = tmp_path / "toy_method.py"
    path.write_text(PLUGIN)
    spec = importlib.util.spec_from_file_location("toy_method", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["toy_method"] = mod
    spec.loader.exec_module(mod)
    yield mod
    registry.unregister("attention", "scaled")
    registry.unregister("noise", "zeros")
    sys.modules.pop("toy_method")


def test_a_kind_registered_in_a_new_module_is_usable_in_a_recipe(plugin):
    r = recipe_from_dict({"name": "toy", "attention": {"kind": "scaled", "gain": 2.5}, "noise": "zeros"})
    assert (r.attention.kind, r.attention.gain, r.noise.kind) == ("scaled", 2.5, "zeros")
    assert SCHEMA["attention"]["scaled"]["gain"].default == 1.0
    assert r.requires() == frozenset({"attention_patches", "toy"})
    with pytest.raises(RecipeError, match="attention.gain"):
        recipe_from_dict({"name": "toy", "attention": {"kind": "scaled", "gain": -1}})
    with pytest.raises(RecipeError, match="recipe 'toy': attention.gain: 0 needs plan direct"):
        recipe_from_dict({"name": "toy", "plan": "sliding", "attention": {"kind": "scaled", "gain": 0}})

    planner = Planner(r, num_frames=8, native_window=4, rng=lambda purpose, step: keyed_generator(0, purpose, step))
    attention, rope = registry.build_patches(planner.patches(), {"num_layers": 2, "dim": 8, "family": "wan"})
    assert isinstance(attention, plugin.Scaled) and attention.gain == 2.5 and rope is None

    class Space:
        def latent_shape(self, frames, height, width):
            return (4, (frames - 1) // 4 + 1, height // 8, width // 8)

    z = planner.init_noise(Space(), torch.Generator(), 29, 64, 64)
    assert z.shape == (4, 8, 8, 8) and not z.any()


def test_unregistered_kind_is_refused_naming_the_known_ones(plugin):
    registry.unregister("attention", "scaled")
    with pytest.raises(RecipeError, match=r"attention.kind: 'scaled' unknown; use one of none, "):
        recipe_from_dict({"name": "toy", "attention": {"kind": "scaled"}})


@pytest.mark.parametrize("name,needs", [
    ("direct", set()), ("sliding", set()), ("freenoise", set()), ("glc", {"attention_patches"}),
    ("freelong", {"attention_patches"}), ("freespec", set()), ("freespec-attn", {"attention_patches"}),
    ("freeloc", {"attention_patches", "temporal_rope"}), ("riflex", {"temporal_rope"}),
])
def test_builtin_recipes_report_the_capabilities_they_need(name, needs):
    assert get_recipe(name).requires() == frozenset(needs)


def test_composed_attention_needs_the_union_of_its_patches():
    r = recipe_from_dict({"name": "c", "plan": "glc", "attention": [{"kind": "abam", "layers": [0]},
                                                                     {"kind": "freeloc", "layers": [1]}]})
    assert r.requires() == frozenset({"attention_patches", "temporal_rope"})


def test_build_patches_dispatches_composed_patches_per_layer():
    from longvid_dist.methods.attention import ABAM, LayerDispatch
    from longvid_dist.methods.freeloc import FreeLOC

    r = recipe_from_dict({"name": "c", "plan": "glc", "attention": [{"kind": "abam", "layers": [0]},
                                                                     {"kind": "freeloc", "layers": [1]}]})
    planner = Planner(r, num_frames=12, native_window=4, rng=lambda purpose, step: keyed_generator(0, purpose, step))
    attention, rope = registry.build_patches(planner.patches(), {"num_layers": 30, "dim": 1536, "family": "wan"})
    assert isinstance(attention, LayerDispatch) and rope is None
    assert isinstance(attention.by_layer[0], ABAM) and isinstance(attention.by_layer[1], FreeLOC)
    assert sorted(attention.by_layer) == [0, 1]
    assert registry.build_patches(None, {"num_layers": 2}) == (None, None)
