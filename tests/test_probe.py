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
    assert set(prof["layers"]) == {"0", "1"} and set(prof["layers"].values()) <= {"vrpr", "vrpr+tsa", "none"}
    for m in prof["metrics"].values():
        assert m["logit_change"] > 0 and m["entropy_change"] > 0
    # FreeLOC's rule: vrpr+tsa goes to the layer with the largest entropy change (round(17/30 * 2) = 1 layer)
    ent = {k: m["entropy_change"] for k, m in prof["metrics"].items()}
    assert [k for k, v in prof["layers"].items() if v == "vrpr+tsa"] == [max(ent, key=ent.get)]
    assert prof["dim"] == 24
    # the probe profile drives a freeloc recipe
    assert freeloc_profile(str(out), {"num_layers": 2, "dim": 24}) == prof["layers"]
    with pytest.raises(ValueError, match="for 2 layers"):
        freeloc_profile(str(out), {"num_layers": 30, "dim": 1536})


@pytest.mark.parametrize("args,flag", [(["--frames", "100"], "--frames"), (["--out", "x.txt"], "--out"),
                                       (["--tsa-fraction", "2"], "--tsa-fraction"),
                                       (["--position-threshold", "-1"], "--position-threshold")])
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


def test_assign_follows_the_papers_rule():
    """FreeLOC (Free-Lunch Long Video Generation via Layer-Adaptive O.O.D Correction), Layer-wise
    Probing: VRPR+TSA to the context-sensitive layers (largest entropy change S_i), VRPR to the
    position-sensitive ones among the rest, nothing to the others."""
    # layer: (logit_change, entropy_change)
    metrics = {0: (0.50, 0.30), 1: (0.50, 0.01), 2: (0.01, 0.20), 3: (0.04, 0.02), 4: (0.06, 0.05), 5: (0.9, 0.25)}
    assert assign(metrics, 0.5, position_threshold=0.05) == {
        0: "vrpr+tsa", 5: "vrpr+tsa", 2: "vrpr+tsa",  # the three largest S_i, whatever their logit change
        4: "vrpr", 1: "vrpr",  # position-sensitive (>= 0.05)
        3: "none"}  # neither
    assert set(assign(metrics, 0.0, 0.0).values()) == {"vrpr"}
    assert set(assign(metrics, 1.0).values()) == {"vrpr+tsa"}
    # ties in S_i go to the lower layer
    assert assign({0: (1, 0.1), 1: (1, 0.1)}, 0.5) == {0: "vrpr+tsa", 1: "vrpr"}


def test_shipped_tiny_profile_follows_the_rule():
    from longvid_dist.methods.freeloc import PROFILE_DIR
    from longvid_dist.methods.probe import PUBLISHED_TSA_FRACTION

    prof = json.loads((PROFILE_DIR / "tiny-wan.json").read_text())
    metrics = {int(k): (m["logit_change"], m["entropy_change"]) for k, m in prof["metrics"].items()}
    assert {str(k): v for k, v in assign(metrics, PUBLISHED_TSA_FRACTION).items()} == prof["layers"]


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
