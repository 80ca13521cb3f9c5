"""Sequence parallelism: a window's forward split over ``ulysses * ring`` processes equals the
single-process forward, for plain attention and every attention patch (CPU, fp32, gloo)."""

from __future__ import annotations

import pytest

from .sp_oracle import CASES, DF_CASES, load, run_cases, split_forward


@pytest.fixture(scope="module")
def reference(tiny_adapter):
    return run_cases(tiny_adapter)


@pytest.mark.parametrize("ulysses,ring", [(2, 1), (1, 2), (2, 2)], ids=["U2", "R2", "U2R2"])
def test_split_forward_equals_single_process(tmp_path, reference, ulysses, ring):
    got = split_forward(ulysses, ring, str(tmp_path / "out.pt"))
    assert sorted(got) == sorted(CASES)
    for case, ref in reference.items():
        err = (got[case] - ref).abs().max().item()
        assert err <= 1e-6, (case, err)
    # the cases really differ from plain attention (each patch is exercised)
    assert all((reference[c] - reference["plain"]).abs().max() > 1e-4 for c in CASES if c != "plain")


@pytest.mark.parametrize("model,ulysses,ring", [
    ("tiny-ltx", 2, 1), ("tiny-ltx", 1, 2),
    ("tiny-cogvideox", 2, 1), ("tiny-cogvideox", 1, 2),
    ("tiny-hunyuan", 2, 1), ("tiny-hunyuan", 1, 2), ("tiny-hunyuan", 2, 2),
], ids=lambda v: str(v))
def test_family_split_forward_equals_single_process(tmp_path, model, ulysses, ring):
    """LTX (diffusers' plan, text kept whole), CogVideoX and HunyuanVideo (the adapters' plans;
    joint text-video attention with the video tokens split and the text replicated): plain
    attention and every patch, split over the group, equal the unsplit forward."""
    reference = run_cases(load(model), model)
    got = split_forward(ulysses, ring, str(tmp_path / "out.pt"), model)
    assert sorted(got) == sorted(CASES)
    for case, ref in reference.items():
        err = (got[case] - ref).abs().max().item()
        assert err <= 1e-6, (case, err)
    assert all((reference[c] - reference["plain"]).abs().max() > 1e-4 for c in CASES if c != "plain")


@pytest.mark.parametrize("ulysses,ring", [(2, 1), (1, 2), (2, 2)], ids=["U2", "R2", "U2R2"])
def test_diffusion_forcing_split_forward_equals_single_process(tmp_path, ulysses, ring):
    """SkyReels-V2 DF (the adapter's plan: per-token modulation split in every block): a
    timestep per latent frame and the block-causal mask, split over the group (81 tokens: padded),
    equal the unsplit forward; under ring each rank owns whole causal blocks (chunks aligned to
    them) and receives keys/values from the ranks before it only."""
    reference = run_cases(load("tiny-skyreels-df"), "tiny-skyreels-df")
    got = split_forward(ulysses, ring, str(tmp_path / "out.pt"), "tiny-skyreels-df")
    assert sorted(got) == sorted(DF_CASES)
    for case, ref in reference.items():
        err = (got[case] - ref).abs().max().item()
        assert err <= 1e-6, (case, err)
    assert (reference["df-block3"] - reference["df-full"]).abs().max() > 1e-4  # the mask is exercised


def test_a_family_without_context_parallel_is_refused_naming_it(tmp_path):
    import dataclasses

    from longvid_dist import SpecError
    from longvid_dist.models.registry import FAMILIES, adapter_class
    from longvid_dist.models.tiny import tiny_model_path
    from longvid_dist.runtime.ray_executor import check_sequence_parallel

    fam = FAMILIES["cogvideox"]
    cls, source = adapter_class(fam), str(tiny_model_path("tiny-cogvideox"))
    check_sequence_parallel(fam, cls, source, ParallelConfig(workers=2, ulysses_degree=2))  # declared: passes
    bare = dataclasses.replace(fam, capabilities=fam.capabilities - {"context_parallel"})
    with pytest.raises(SpecError) as e:
        check_sequence_parallel(bare, cls, source, ParallelConfig(workers=2, ring_degree=2))
    assert e.value.field == "ring_degree" and "context_parallel" in e.value.message
    with pytest.raises(SpecError) as e:  # tiny CogVideoX has 2 heads
        check_sequence_parallel(fam, cls, source, ParallelConfig(workers=4, ulysses_degree=4))
    assert e.value.field == "ulysses_degree"


# -- on Ray actors -------------------------------------------------------------------------------

import os  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from longvid_dist import ParallelConfig, RenderSpec  # noqa: E402
from longvid_dist.api import render  # noqa: E402
from longvid_dist.io.video import read_frames  # noqa: E402

KW = dict(prompt="a cat runs on the beach", negative_prompt="blurry", frames=81, height=32, width=48, steps=3)


def _local(tmp_path, tiny_adapter, name, **kw):
    from longvid_dist.runtime.executor import LocalExecutor

    spec = RenderSpec(**{**KW, **kw}, out=str(tmp_path / name))
    render(spec, executor=LocalExecutor(tiny_adapter), progress=False)
    return read_frames(spec.out)


@pytest.mark.ray
@pytest.mark.parametrize("recipe,ulysses,ring", [("glc", 2, 1), ("glc", 1, 2), ("freeloc", 2, 1)])
def test_split_render_equals_unsplit(tmp_path, tiny_adapter, ray_local, recipe, ulysses, ring):
    ref = _local(tmp_path, tiny_adapter, "ref.mkv", recipe=recipe)
    spec = RenderSpec(**KW, recipe=recipe, out=str(tmp_path / "sp.mkv"))
    render(spec, ParallelConfig(workers=2, ulysses_degree=ulysses, ring_degree=ring), progress=False)
    out = read_frames(spec.out)
    assert out.shape == ref.shape
    assert np.abs(out.astype(int) - ref).max() <= 1  # in practice 0: the split forward is exact


@pytest.mark.ray
def test_group_member_killed_mid_render_gives_identical_video(tmp_path, tiny_adapter, tiny_path, ray_local):
    from longvid_dist.runtime.ray_executor import RayExecutor

    ref = _local(tmp_path, tiny_adapter, "ref.mkv", recipe="glc", steps=8)
    ex = RayExecutor("wan", tiny_path, ParallelConfig(workers=2, ulysses_degree=2))
    victim = ex.worker_pids()[1]
    killed = threading.Event()

    def killer():
        while len(ex.metrics) < 3:
            time.sleep(0.005)
        os.kill(victim, 9)
        killed.set()

    threading.Thread(target=killer, daemon=True).start()
    spec = RenderSpec(**{**KW, "steps": 8}, recipe="glc", out=str(tmp_path / "killed.mkv"))
    try:
        render(spec, executor=ex, progress=False)
    finally:
        ex.close()
    assert killed.is_set() and ex.restarts >= 1 and ex.epoch >= 2
    assert np.array_equal(read_frames(spec.out), ref)


@pytest.mark.ray
def test_a_961_frame_single_window_renders_split_in_two(tmp_path, ray_local):
    """One window of 241 latent frames (direct): the group of two shares its attention."""
    spec = RenderSpec(prompt="a red car", frames=961, height=32, width=32, steps=1, recipe="direct",
                      out=str(tmp_path / "long.mkv"), decode_chunk=16)
    render(spec, ParallelConfig(workers=2, ulysses_degree=2), progress=False)
    import json

    side = json.loads((tmp_path / "long.mkv.json").read_text())
    assert side["frames"] == 961 and side["latent_frames"] == 241
    assert all(s["windows"] == 1 for s in side["timings"]["per_step"])


def test_layout_errors_name_the_flag(tmp_path):
    import subprocess
    import sys

    cases = [(["--ulysses-degree", "2"], "--ulysses-degree"), (["--workers", "3", "--ulysses-degree", "2"], "--workers"),
             (["--workers", "2", "--ring-degree", "0"], "--ring-degree"),
             (["--workers", "4", "--ulysses-degree", "4"], "--ulysses-degree"),  # tiny-wan has 2 heads
             (["--workers", "2", "--ulysses-degree", "2", "--sp-backend", "xfuser"], "--sp-backend")]
    for args, flag in cases:
        p = subprocess.run([sys.executable, "-m", "longvid_dist.cli", "render", "--prompt", "x", "--frames", "41",
                            "--out", str(tmp_path / "x.mp4"), *args], capture_output=True, text=True, timeout=120)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and flag in lines[0], (args, p.stderr)
    assert list(tmp_path.iterdir()) == []


def test_a_patch_declares_its_modes_and_others_are_refused(tmp_path):
    from longvid_dist import SpecError
    from longvid_dist.api import check_layout
    from longvid_dist.methods import registry
    from longvid_dist.models.hooks import AttentionPatch

    registry.discover()
    registry.register("attention", "ulysses-only", lambda params, info: AttentionPatch(),
                      {"layers": registry.LAYERS}, requires=("attention_patches",), sp_modes=("ulysses",))
    try:
        recipe = tmp_path / "u.yaml"
        recipe.write_text("plan: direct\nattention: {kind: ulysses-only}\n")
        spec = RenderSpec(prompt="x", frames=41, recipe=str(recipe), out=str(tmp_path / "x.mp4"))
        check_layout(spec, ParallelConfig(workers=2, ulysses_degree=2))  # supported
        with pytest.raises(SpecError) as e:
            check_layout(spec, ParallelConfig(workers=2, ring_degree=2))
        assert e.value.field == "ring_degree" and "ulysses-only" in e.value.message
    finally:
        registry.unregister("attention", "ulysses-only")
