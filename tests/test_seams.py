"""The engine's seams: per-frame noise levels, the sampler state and its pickle-free
checkpoints, and the Worker shared by both executors."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from longvid_dist import RenderSpec
from longvid_dist.runtime import checkpoint
from longvid_dist.runtime.executor import LocalExecutor
from longvid_dist.sampling.state import SamplerState


def _cond(adapter):
    return adapter.encode_prompt("a red car", "blurry", 5.0)


def test_per_frame_timesteps_reach_the_transformer(tiny_adapter):
    x = torch.randn(16, 5, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = _cond(tiny_adapter)
    t = torch.tensor(700, dtype=torch.int64)
    ref = tiny_adapter.predict(x, t, cond)
    same = tiny_adapter.predict(x, t.repeat(5), cond)  # one timestep per frame, all equal
    assert torch.allclose(same, ref, atol=2e-5, rtol=1e-5)  # per-token path: float rounding only
    ramp = torch.tensor([900, 700, 500, 300, 100])
    out = tiny_adapter.predict(x, ramp, cond)
    assert not torch.allclose(out, ref, atol=1e-3)
    # frame 0 at 900 is closer to an all-900 forward than frame 4 (at 100) is
    hi = tiny_adapter.predict(x, torch.tensor(900), cond)
    d = (out - hi).abs().mean(dim=(0, 2, 3))  # per frame
    assert d[0] < d[4]


def _run(state, latent, preds, start, stop):
    for i in range(start, stop):
        latent = state.step(preds[i], i, latent)
    return latent


def test_sampler_state_round_trips_without_pickle(tiny_adapter):
    steps = 6
    g = torch.Generator().manual_seed(1)
    latent0 = torch.randn(16, 3, 4, 4, generator=g)
    preds = [torch.randn(16, 3, 4, 4, generator=g) for _ in range(steps)]
    ref = _run(SamplerState.shared(tiny_adapter.space.make_scheduler(steps)), latent0, preds, 0, steps)

    state = SamplerState.shared(tiny_adapter.space.make_scheduler(steps))
    mid = _run(state, latent0, preds, 0, 3)  # multistep history is now in the scheduler
    tensors, meta = state.state_dict()
    import json

    meta = json.loads(json.dumps(meta))  # really JSON
    restored = SamplerState.from_state_dict({k: v.clone() for k, v in tensors.items()}, meta)
    assert torch.equal(_run(restored, mid, preds, 3, steps), ref)
    # the history matters: a fresh scheduler at step 3 continues differently
    fresh = SamplerState.shared(tiny_adapter.space.make_scheduler(steps))
    fresh.scheduler._step_index = 3
    assert not torch.equal(_run(fresh, mid, preds, 3, steps), ref)


def test_per_frame_schedulers_equal_the_shared_one_at_equal_steps(tiny_adapter):
    steps = 4
    g = torch.Generator().manual_seed(2)
    latent0 = torch.randn(16, 3, 4, 4, generator=g)
    preds = [torch.randn(16, 3, 4, 4, generator=g) for _ in range(steps)]
    shared = _run(SamplerState.shared(tiny_adapter.space.make_scheduler(steps)), latent0, preds, 0, steps)
    per = SamplerState.frames(tiny_adapter.space.make_scheduler(steps), 3)
    assert per.noise_level(0).shape == (3,)
    assert torch.allclose(_run(per, latent0, preds, 0, steps), shared, atol=1e-6, rtol=0)
    # frames at different steps: only the listed frames advance
    per = SamplerState.frames(tiny_adapter.space.make_scheduler(steps), 3)
    out = per.step(preds[0], np.array([0, 0, 0]), latent0, frames=[1])
    assert torch.equal(out[:, [0, 2]], latent0[:, [0, 2]]) and not torch.equal(out[:, 1], latent0[:, 1])
    assert per.noise_level(np.array([0, 1, 3])).tolist() == [int(t) for t in per.scheduler.timesteps[[0, 1, 3]]]


def test_unknown_scheduler_attribute_is_named(tiny_adapter):
    state = SamplerState.shared(tiny_adapter.space.make_scheduler(2))
    state.scheduler.odd = object()
    with pytest.raises(TypeError, match="s0.odd"):
        state.state_dict()


class _Payload:
    """Unpickling this runs ``touch <path>``: what a tampered checkpoint could do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_tampered_checkpoint_is_refused_without_running_it(tmp_path):
    spec = RenderSpec(prompt="a red car", frames=41, steps=4, out=str(tmp_path / "v.mkv"), resume=True)
    ckpt = checkpoint.checkpoint_path(spec.out)
    marker = tmp_path / "pwned"
    with open(ckpt, "wb") as f:
        torch.save({"format": "longvid-checkpoint", "version": 2, "evil": _Payload(marker)}, f)
    with pytest.raises(checkpoint.CheckpointError, match="refused without running it"):
        checkpoint.load(ckpt, spec)
    assert not marker.exists()
    # a plain pickle (not a torch file) too, and through the CLI: one line, exit 2, nothing written
    with open(ckpt, "wb") as f:
        pickle.dump(_Payload(marker), f)
    p = subprocess.run([sys.executable, "-m", "longvid_dist.cli", "render", "--prompt", "a red car", "--frames", "41",
                        "--steps", "4", "--out", spec.out, "--resume", "--quiet"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "refused" in lines[0] and "v.mkv.ckpt" in lines[0]
    assert not marker.exists() and not os.path.exists(spec.out)


def test_checkpoint_round_trip_and_other_spec_refused(tmp_path, tiny_adapter):
    spec = RenderSpec(prompt="a red car", frames=41, steps=4, out=str(tmp_path / "v.mkv"))
    state = SamplerState.shared(tiny_adapter.space.make_scheduler(4))
    latent = torch.randn(16, 11, 8, 8)
    state.step(torch.randn_like(latent), 0, latent)
    path = checkpoint.checkpoint_path(spec.out)
    checkpoint.save(path, spec, 1, latent, state.state_dict())
    ck = checkpoint.load(path, spec)
    assert ck["next_step"] == 1 and torch.equal(ck["latent"], latent)
    back = SamplerState.from_state_dict(ck["tensors"], ck["state"])
    assert back.scheduler.step_index == 1 and torch.equal(back.scheduler.model_outputs[-1],
                                                          state.scheduler.model_outputs[-1])
    other = RenderSpec(prompt="a red car", frames=41, steps=4, seed=3, out=spec.out)
    with pytest.raises(checkpoint.CheckpointError, match="differs in: seed"):
        checkpoint.load(path, other)


def test_local_executor_runs_the_worker(tiny_adapter):
    ex = LocalExecutor(tiny_adapter)
    assert ex.worker.rank == 0 and ex.worker.group == [0]
    assert ex.worker.adapter is tiny_adapter


@pytest.mark.parametrize("recipe,missing", [("glc", "attention_patches"), ("riflex", "temporal_rope"),
                                            ("freeloc", "attention_patches; temporal_rope")])
def test_recipe_a_family_cannot_run_is_refused_at_validation(monkeypatch, recipe, missing):
    from dataclasses import replace

    from longvid_dist import SpecError
    from longvid_dist.models.registry import FAMILIES

    RenderSpec(prompt="x", recipe=recipe)  # the real Wan family can
    monkeypatch.setitem(FAMILIES, "wan", replace(FAMILIES["wan"], capabilities=frozenset()))
    with pytest.raises(SpecError) as e:
        RenderSpec(prompt="x", recipe=recipe)
    assert e.value.field == "recipe"
    assert [m.split(" (")[0] for m in e.value.message.split(": ", 1)[1].split("; ")] == missing.split("; ")
    RenderSpec(prompt="x", recipe="sliding")  # windows, merges and noise need nothing special
