"""longvid probe on the tiny model, and FreeLOC profiles in recipes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from longvid_dist.methods.recipes import RecipeError, recipe_from_dict
from longvid_dist.sampling.rng import keyed_generator
from longvid_dist.methods.probe import LayerProbe, assign, probe
from longvid_dist.methods.freeloc import freeloc_profile


def test_probe_cli_writes_a_valid_profile(tmp_path):
    out = tmp_path / "p.json"
    r = subprocess.run([sys.executable, "-m", "longvid_dist.cli", "probe", "--frames", "101", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    prof = json.loads(out.read_text())
    assert prof["num_layers"] == 2 and prof["latent_frames"] == 26
    assert set(prof["layers"]) == {"0", "1"} and set(prof["layers"].values()) <= {"vrpr", "vrpr+tsa"}
    for m in prof["metrics"].values():
        assert m["logit_change"] > 0 and m["entropy_change"] > 0
    # the probe profile drives a freeloc recipe
    assert freeloc_profile(str(out), {"num_layers": 2, "dim": 24}) == prof["layers"]
    with pytest.raises(ValueError, match="for 2 layers"):
        freeloc_profile(str(out), {"num_layers": 30, "dim": 1536})


@pytest.mark.parametrize("args,flag", [(["--frames", "100"], "--frames"), (["--out", "x.txt"], "--out"),
                                       (["--tsa-fraction", "2"], "--tsa-fraction")])
def test_probe_bad_input(tmp_path, args, flag):
    argv = ["--out", str(tmp_path / "p.json"), *args]
    r = subprocess.run([sys.executable, "-m", "longvid_dist.cli", "probe", *argv], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and flag in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_probe_metrics_see_position_and_context(tiny_adapter):
    prof = probe(tiny_adapter, 101, 64, 64, keyed_generator(0, "probe"), timesteps=(500,), queries=64)
    assert len(prof["metrics"]) == 2
    # a window that covers the whole video leaves attention unchanged: zero entropy change
    p = LayerProbe(queries=32, window=1000)
    tiny_adapter.install(p, None)
    try:
        import torch

        cond = tiny_adapter.encode_prompt("a", "", 1.0)
        tiny_adapter.predict(torch.randn(16, 12, 8, 8), torch.tensor(500.0), cond)
    finally:
        tiny_adapter.install(None, None)
    assert all(abs(v[0][1]) < 1e-6 for v in p.metrics.values())


def test_assign_ranks_by_context_sensitivity():
    metrics = {0: (0.5, 0.30), 1: (0.5, 0.01), 2: (0.5, 0.20), 3: (0.5, 0.02)}
    assert assign(metrics, 0.5) == {1: "vrpr+tsa", 3: "vrpr+tsa", 0: "vrpr", 2: "vrpr"}
    assert set(assign(metrics, 0.0).values()) == {"vrpr"}


def test_shipped_profiles_match_architectures():
    wan = freeloc_profile(None, {"num_layers": 30, "dim": 1536})
    tsa = sorted(int(k) for k, v in wan.items() if v == "vrpr+tsa")
    assert tsa == [0, 1, 4, 6, 7, 9, 10, 11, 13, 14, 15, 16, 18, 22, 23, 24, 25] and len(wan) == 30
    with pytest.raises(ValueError, match="longvid probe"):
        freeloc_profile(None, {"num_layers": 40, "dim": 5120})


def test_composition_conflicts_are_refused():
    with pytest.raises(RecipeError, match="conflicting patches on layer 1: abam and freeloc"):
        recipe_from_dict({"name": "c", "plan": "glc", "attention": [{"kind": "abam", "layers": [0, 1]},
                                                                     {"kind": "freeloc", "layers": [1]}]})
    with pytest.raises(RecipeError, match="explicit disjoint layers"):
        recipe_from_dict({"name": "c", "plan": "glc", "attention": [{"kind": "abam"}, {"kind": "freespec", "layers": [1]}]})
    with pytest.raises(RecipeError, match="needs paths: both"):
        recipe_from_dict({"name": "c", "plan": {"kind": "glc", "paths": "local", "fusion": "freespec"}})
