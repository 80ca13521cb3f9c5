"""Every builtin recipe renders bit for bit as recorded in ``golden_recipes.json``.

The record was made before the engine was reshaped (the seams issue); a change that alters a
recipe's output on purpose regenerates that recipe (``python -m tests.golden_recipes NAME``)
and says why in its commit.
"""

from __future__ import annotations

import json

import pytest

from .golden_recipes import GEOMETRY, GOLDEN, render_golden

RECORD = json.loads(GOLDEN.read_text())


def test_record_matches_geometry_and_builtins():
    from longvid_dist.methods.recipes import builtin_names

    assert RECORD["geometry"] == GEOMETRY
    assert sorted(RECORD["recipes"]) == sorted(builtin_names())


@pytest.mark.parametrize("name", sorted(RECORD["recipes"]))
def test_recipe_output_is_unchanged(name, tiny_adapter):
    want = RECORD["recipes"][name]
    got = render_golden(name, tiny_adapter)
    moved = [i for i, (a, b) in enumerate(zip(got["frame_means"], want["frame_means"])) if a != b]
    assert got["shape"] == want["shape"]
    assert got["latent_sha256"] == want["latent_sha256"], f"{name}: final latent changed"
    assert got["frames_sha256"] == want["frames_sha256"], f"{name}: frames changed (first moved: {moved[:5]})"
