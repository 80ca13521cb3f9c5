"""Chunked plans over Ray actors (diffusion forcing on tiny SkyReels-V2 DF): the two guidance
branches of a segment on separate workers, a segment's tokens split over a sequence-parallel
group, a worker killed mid-chunk, and ``--resume`` from the last finished chunk -- each the
same video as one local process."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from longvid_dist import RenderSpec
from longvid_dist.api import render
from longvid_dist.config import ParallelConfig
from longvid_dist.io.video import read_frames
from longvid_dist.methods.forcing import forcing_plan
from longvid_dist.runtime import checkpoint
from longvid_dist.runtime.executor import LocalExecutor
from longvid_dist.runtime.ray_executor import RayExecutor
from longvid_dist.sampling.chunks import denoise_forcing

from .test_ray import _cli, kill_after_checkpoint, render_killing

pytestmark = pytest.mark.ray

PROMPT, NEGATIVE, SEED, GUIDANCE = "a red car drives in the city at night", "blurry low quality", 1234, 5.0
ASYNC_LONG = dict(base_num_frames=29, overlap_history=13, addnoise_condition=20, ar_step=1, causal_block_size=2)
"""Long and asynchronous at once: segments with a history prefix, blocks at several noise levels."""
RECIPE = "plan: {kind: diffusion_forcing, base_num_frames: 29, overlap_history: 13, addnoise_condition: 20, " \
         "ar_step: 1, causal_block_size: 2}\n"


def _forcing(executor, frames: int = 61, steps: int = 4) -> torch.Tensor:
    plan = forcing_plan({"base_num_frames": 97, "overlap_history": None, "ar_step": 0, "causal_block_size": 1,
                         "addnoise_condition": 0, **ASYNC_LONG}, (frames - 1) // 4 + 1, 4)
    executor.set_conditions({"main": (PROMPT, NEGATIVE)}, GUIDANCE)
    return denoise_forcing(plan, executor.space, executor, steps, 32, 32, SEED).latent


def _spec(tmp_path, name: str, **kw) -> RenderSpec:
    recipe = tmp_path / "df.yaml"
    recipe.write_text(RECIPE)
    base = dict(prompt=PROMPT, negative_prompt=NEGATIVE, model="tiny-skyreels-df", recipe=str(recipe), frames=61,
                height=32, width=32, steps=4, guidance=GUIDANCE, seed=SEED)
    return RenderSpec(**{**base, **kw}, out=str(tmp_path / name))


def test_guidance_branches_on_two_workers_equal_local(df_adapter, df_path, ray_local):
    """With two workers and one segment at a time, each worker runs one guidance branch and
    the coordinator combines them: the latent equals the local one bit for bit, and both
    workers ran in every iteration."""
    ref = _forcing(LocalExecutor(df_adapter))
    ex = RayExecutor("skyreels-df", df_path, ParallelConfig(workers=2))
    try:
        got = _forcing(ex)
        steps = ex.report()["per_step"]
    finally:
        ex.close()
    assert torch.equal(got, ref), (got - ref).abs().max()
    assert steps and all(min(s["worker_busy"]) > 0 for s in steps)  # both branches ran, one per worker


def test_guidance_branches_stay_together_without_guidance(df_adapter, df_path, ray_local):
    """guidance <= 1 has one branch: the segment runs on one worker, and still equals local."""
    plan = forcing_plan({"base_num_frames": 17, "overlap_history": None, "ar_step": 0, "causal_block_size": 1,
                         "addnoise_condition": 0}, 5, 4)
    local = LocalExecutor(df_adapter)
    local.set_conditions({"main": (PROMPT, "")}, 1.0)
    ref = denoise_forcing(plan, local.space, local, 2, 32, 32, SEED).latent
    ex = RayExecutor("skyreels-df", df_path, ParallelConfig(workers=2))
    try:
        ex.set_conditions({"main": (PROMPT, "")}, 1.0)
        got = denoise_forcing(plan, ex.space, ex, 2, 32, 32, SEED).latent
        steps = ex.report()["per_step"]
    finally:
        ex.close()
    assert torch.equal(got, ref)
    assert steps and all(sorted(b > 0 for b in s["worker_busy"]) == [False, True] for s in steps)


@pytest.mark.parametrize("ulysses,ring", [(2, 1), (1, 2)], ids=["U2", "R2"])
def test_segment_split_over_a_sequence_parallel_group_equals_local(tmp_path, df_adapter, ray_local, ulysses, ring):
    """--workers 2 --ulysses-degree 2 / --ring-degree 2: each forward of a segment (block-causal, a
    timestep per frame) split over the pair -- under ring each rank owns whole causal blocks and
    sends its keys/values forward only; the video equals the local render."""
    ref = _spec(tmp_path, "ref.mkv")
    render(ref, executor=LocalExecutor(df_adapter), progress=False)
    spec = _spec(tmp_path, "sp.mkv")
    render(spec, ParallelConfig(workers=2, ulysses_degree=ulysses, ring_degree=ring), progress=False)
    assert np.array_equal(read_frames(spec.out), read_frames(ref.out))
    side = json.loads(Path(spec.out + ".json").read_text())
    assert all(w["busy"] > 0 for w in side["workers"])


def test_worker_killed_mid_chunk_gives_identical_video(tmp_path, df_adapter, df_path, ray_local):
    """SIGKILL of the worker running the uncond branch in the second segment: the call is re-run
    on the restarted actor and the latent is unchanged."""
    ref = _forcing(LocalExecutor(df_adapter))
    ex = RayExecutor("skyreels-df", df_path, ParallelConfig(workers=2))
    victim = ex.worker_pids()[1]
    calls = [0]
    real = ex._predict

    def counting(latent, windows):
        calls[0] += 1
        if calls[0] == 12:  # past the first segment (4 steps x (1 + ar_step * blocks) iterations)
            os.kill(victim, signal.SIGKILL)
        return real(latent, windows)

    ex._predict = counting
    try:
        got = _forcing(ex)
    finally:
        ex.close()
    assert calls[0] > 12 and ex.restarts >= 1
    assert torch.equal(got, ref)


def test_killed_forcing_render_resumes_from_its_last_chunk(tmp_path):
    """A DF render killed (SIGKILL) after its first finished segment resumes from that segment's
    checkpoint (``--resume``) and writes the same video as an uninterrupted render."""
    recipe = tmp_path / "df.yaml"
    recipe.write_text("plan: {kind: diffusion_forcing, base_num_frames: 17, overlap_history: 9, "
                      "addnoise_condition: 20}\n")  # long mode: many short segments
    common = ["--prompt", PROMPT, "--negative-prompt", NEGATIVE, "--model", "tiny-skyreels-df", "--recipe",
              str(recipe), "--frames", "121", "--height", "32", "--width", "32", "--steps", "12", "--seed", "5",
              "--quiet"]
    ref = tmp_path / "ref.mkv"
    p = _cli(*common, "--out", str(ref), "--checkpoint-every", "0")
    assert p.wait(timeout=300) == 0, p.stderr.read()

    out = tmp_path / "run.mkv"
    ckpt = kill_after_checkpoint([*common, "--checkpoint-every", "1"], out)
    spec = RenderSpec(prompt=PROMPT, negative_prompt=NEGATIVE, model="tiny-skyreels-df", recipe=str(recipe),
                      frames=121, height=32, width=32, steps=12, seed=5, out=str(out))
    chunk = checkpoint.load(str(ckpt), spec)["next_step"]
    assert chunk >= 1

    p = _cli(*common, "--out", str(out), "--resume")
    assert p.wait(timeout=300) == 0, p.stderr.read()
    assert np.array_equal(read_frames(str(out)), read_frames(str(ref)))
    assert not ckpt.exists()
    assert json.loads(Path(str(out) + ".json").read_text())["resumed_from_step"] == chunk


def test_causal_rollout_under_sequence_parallelism_is_refused(tmp_path):
    """Causal rollout runs its blocks one at a time against one replica's KV cache: a
    sequence-parallel layout is refused in one line naming the flag, nothing written."""
    p = _cli("--prompt", "a cat", "--recipe", "flex", "--frames", "49", "--workers", "2", "--ulysses-degree", "2",
             "--out", str(tmp_path / "x.mkv"))
    assert p.wait(timeout=120) == 2
    lines = p.stderr.read().strip().splitlines()
    assert len(lines) == 1 and "--ulysses-degree" in lines[0] and "causal" in lines[0], lines
    assert list(tmp_path.iterdir()) == []


def test_causal_rollout_branches_on_two_workers_survive_a_kill(tmp_path, tiny_adapter, tiny_path, ray_local):
    """Causal rollout with guidance on two workers: each keeps the KV cache of its guidance
    branch. The video equals the local one, also when the uncond worker is SIGKILLed mid-rollout
    (its cache is re-written on both workers from the finished blocks)."""
    kw = dict(prompt="a cat", negative_prompt="blurry", recipe="flex", frames=49, height=32, width=32, seed=3,
              guidance=4.0)
    ref = RenderSpec(**kw, out=str(tmp_path / "ref.mkv"))
    render(ref, executor=LocalExecutor(tiny_adapter), progress=False)
    ex = RayExecutor("wan", tiny_path, ParallelConfig(workers=2))
    spec = RenderSpec(**kw, out=str(tmp_path / "killed.mkv"))
    calls, report = render_killing(ex, spec, ex.worker_pids()[1], 2 * 5 + 3)  # the uncond worker, third block
    assert calls > 2 * 5 + 3 and ex.restarts >= 1 and min(w["busy"] for w in report["workers"]) > 0
    assert np.array_equal(read_frames(spec.out), read_frames(ref.out))
