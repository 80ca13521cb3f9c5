"""Every builtin recipe renders bit for bit as recorded in ``golden_recipes.json``, in the set of
digests made with this machine's numerics (see ``golden_recipes``).

The first record was made before the engine was reshaped (the seams issue); a change that
alters a recipe's output on purpose re-records that recipe (``python -m tests.golden_recipes
NAME``) and says why in its commit.
"""

from __future__ import annotations

import json

import pytest

from .golden_recipes import GEOMETRY, GOLDEN, matching_set, render_golden

RECORD = json.loads(GOLDEN.read_text())
NAMES = sorted(RECORD["sets"][0]["recipes"])


def test_record_matches_geometry_and_builtins():
    from longvid_dist.methods.recipes import builtin_names

    assert RECORD["geometry"] == GEOMETRY
    assert all(sorted(st["recipes"]) == sorted(builtin_names()) for st in RECORD["sets"])


@pytest.fixture(scope="module")
def recorded(tiny_adapter) -> dict:
    """The set this machine is held to: the one whose ``direct`` render it reproduces."""
    k = matching_set(RECORD["sets"], tiny_adapter)
    if k is None:
        pytest.fail("no recorded set reproduces the 'direct' recipe here: either the engine changed the stock "
                    "sampler's output, or this machine's numerics (CPU, BLAS kernels) are new to the record -- "
                    "on an unchanged engine (git stash) record them with python -m tests.golden_recipes --new-set "
                    "LABEL", pytrace=False)
    return RECORD["sets"][k]["recipes"]


@pytest.mark.parametrize("name", NAMES)
def test_recipe_output_is_unchanged(name, tiny_adapter, recorded):
    want = recorded[name]
    got = render_golden(name, tiny_adapter)
    moved = [i for i, (a, b) in enumerate(zip(got["frame_means"], want["frame_means"])) if a != b]
    assert got["shape"] == want["shape"]
    assert got["latent_sha256"] == want["latent_sha256"], f"{name}: final latent changed"
    assert got["frames_sha256"] == want["frames_sha256"], f"{name}: frames changed (first moved: {moved[:5]})"
