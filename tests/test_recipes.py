"""Recipes as data: YAML validation, and every built-in recipe end to end (CLI, local and Ray)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from longvid_dist import RenderSpec, SpecError
from longvid_dist.api import render
from longvid_dist.io.video import probe_video, read_frames
from longvid_dist.methods.recipes import (SCHEMA, RecipeError, builtin_names, get_recipe, load_recipe,
                                          recipe_from_dict)
from longvid_dist.runtime.executor import LocalExecutor

ALL = builtin_names()


def test_builtins_are_the_issue_list_and_valid():
    assert set(ALL) >= {"direct", "sliding", "freenoise", "freelong", "riflex", "glc", "glc-no-global",
                        "glc-no-local", "glc-no-reinit", "glc-no-vmcr"}
    glc = get_recipe("glc")
    assert (glc.plan.kind, glc.plan.paths, glc.noise.kind, glc.attention.kind, glc.refine.kind) == \
        ("glc", "both", "glc_reinit", "abam", "vmcr")
    assert glc.attention.lam == 0.1 and glc.refine.omega == 2e-5 and glc.plan.gamma0 == 0.005
    assert get_recipe("glc-no-global").plan.paths == "local"
    assert get_recipe("glc-no-local").plan.paths == "global"
    assert get_recipe("glc-no-reinit").noise.kind == "iid"
    assert get_recipe("glc-no-vmcr").refine.kind == "none"
    assert get_recipe("freenoise").plan.profile == "pyramid"


def test_yaml_round_trip_and_file_recipe(tmp_path):
    d = get_recipe("glc").to_dict()
    d["name"] = "mine"
    d["attention"]["lam"] = 0.25
    p = tmp_path / "mine.yaml"
    import yaml

    p.write_text(yaml.safe_dump(d))
    r = get_recipe(str(p))
    assert r.attention.lam == 0.25 and r.to_dict() == recipe_from_dict(d).to_dict()


@pytest.mark.parametrize("data,key", [
    ({"plan": {"kind": "glc", "gamma": 1}}, "plan.gamma"),
    ({"plan": {"kind": "wavy"}}, "plan.kind"),
    ({"attention": {"kind": "abam", "lam": 1.5}, "plan": "glc"}, "attention.lam"),
    ({"attention": {"kind": "abam", "lam": "high"}, "plan": "glc"}, "attention.lam"),
    ({"plan": {"kind": "sliding", "window": 0}}, "plan.window"),
    ({"plan": {"kind": "sliding", "window": 4.5}}, "plan.window"),
    ({"noise": {"kind": "antiphase", "rho": 0.3}}, "noise.rho"),
    ({"refine": {"kind": "vmcr", "omega": 0}}, "refine.omega"),
    ({"refine": {"kind": "vmcr", "omega": True}}, "refine.omega"),
    ({"noise": {"kind": "glc_reinit", "filter": "box"}}, "noise.filter"),
    ({"extras": 1}, "extras"),
    ({"attention": {"kind": "abam"}}, "abam needs several windows"),
    ({"plan": "glc", "rope": "riflex"}, "riflex"),
    ({"plan": {"kind": "sliding", "window": 4, "stride": 6}}, "plan.stride"),
])
def test_bad_recipes_name_the_key(data, key):
    with pytest.raises(RecipeError) as e:
        recipe_from_dict({"name": "bad", **data})
    assert key in str(e.value) and "recipe 'bad'" in str(e.value)


def test_recipe_file_errors(tmp_path):
    with pytest.raises(RecipeError, match="not valid YAML"):
        (tmp_path / "x.yaml").write_text("plan: [unclosed")
        load_recipe(tmp_path / "x.yaml")
    with pytest.raises(RecipeError, match="No such file"):
        load_recipe(tmp_path / "missing.yaml")
    with pytest.raises(SpecError, match="recipe"):
        RenderSpec(prompt="x", recipe=str(tmp_path / "missing.yaml"))
    with pytest.raises(SpecError, match="window"):
        RenderSpec(prompt="x", recipe="direct", window=5)


def test_every_schema_kind_is_used_or_listed():
    used = {(sec, getattr(get_recipe(n), sec).kind) for n in ALL for sec in SCHEMA}
    assert {(sec, k) for sec, kinds in SCHEMA.items() for k in kinds if k not in ("none", "antiphase")} <= used


def _cli(args, cwd):
    return subprocess.Popen([sys.executable, "-m", "longvid_dist.cli", "render", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_every_recipe_renders_through_the_cli(tmp_path):
    procs = {}
    for name in ALL:  # two at a time: the machine has two cores
        procs[name] = _cli(["--prompt", "a red car", "--frames", "121", "--steps", "2", "--recipe", name,
                            "--quiet", "--out", str(tmp_path / f"{name}.mp4")], tmp_path)
        if len(procs) % 2 == 0:
            for p in procs.values():
                p.wait(timeout=300)
    for name, p in procs.items():
        assert p.wait(timeout=300) == 0, (name, p.stderr.read())
        info = probe_video(str(tmp_path / f"{name}.mp4"))
        assert info["frames"] == 121 and (info["width"], info["height"]) == (64, 64)
        side = json.loads((tmp_path / f"{name}.mp4.json").read_text())
        assert side["recipe"]["name"] == name and side["recipe"] == get_recipe(name).to_dict()


def test_cli_yaml_recipe_and_bad_recipe(tmp_path):
    (tmp_path / "r.yaml").write_text("plan: {kind: sliding, window: 8, stride: 4, profile: gaussian}\n")
    p = _cli(["--prompt", "x", "--frames", "61", "--steps", "2", "--recipe", "r.yaml", "--quiet",
              "--out", "r.mkv"], tmp_path)
    assert p.wait(timeout=300) == 0, p.stderr.read()
    side = json.loads((tmp_path / "r.mkv.json").read_text())
    assert side["recipe"]["plan"] == {"kind": "sliding", "window": 8, "stride": 4, "stride_frac": 0.5,
                                      "profile": "gaussian"}
    # the first step's windows as run: 16 latent frames, window 8, stride 4
    assert side["windows"] == [{"path": "full", "frames": list(range(s, s + 8))} for s in (0, 4, 8)]
    (tmp_path / "bad.yaml").write_text("plan: {kind: glc, gamma0: 7}\n")
    p = _cli(["--prompt", "x", "--recipe", "bad.yaml", "--out", "b.mp4"], tmp_path)
    assert p.wait(timeout=60) == 2
    err = p.stderr.read().strip().splitlines()
    assert len(err) == 1 and "--recipe" in err[0] and "plan.gamma0" in err[0]
    assert not (tmp_path / "b.mp4").exists()


COMPOSED = {"name": "glc-freeloc", "plan": {"kind": "glc"}, "noise": "glc_reinit",
            "attention": [{"kind": "abam", "layers": [0]}, {"kind": "freeloc", "layers": [1], "W1": 3, "W2": 6}],
            "refine": "vmcr"}


@pytest.mark.ray
def test_every_recipe_ray_equals_local(tmp_path, tiny_adapter, tiny_path):
    from longvid_dist.runtime.ray_executor import RayExecutor, connect, shutdown

    connect(None, quiet=True)
    from longvid_dist.config import ParallelConfig

    ex = RayExecutor("wan", tiny_path, ParallelConfig(workers=2))  # one set of actors for all recipes: patches are per render
    import yaml

    composed = tmp_path / "glc-freeloc.yaml"  # FreeLOC inside GLC windows, next to ABAM
    composed.write_text(yaml.safe_dump(COMPOSED))
    try:
        for name in ALL + [str(composed)]:
            tag = Path(name).stem
            spec = RenderSpec(prompt="a cat", frames=121, steps=2, recipe=name, out=str(tmp_path / f"l-{tag}.mkv"))
            render(spec, executor=LocalExecutor(tiny_adapter), progress=False)
            rspec = RenderSpec(prompt="a cat", frames=121, steps=2, recipe=name,
                               out=str(tmp_path / f"r-{tag}.mkv"))
            render(rspec, executor=ex, progress=False)
            assert np.array_equal(read_frames(spec.out), read_frames(rspec.out)), name
    finally:
        tiny_adapter.install(None, None)
        ex.close()
        shutdown()
