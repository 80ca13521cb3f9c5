"""RayExecutor on a real local Ray instance: determinism, faults, resume, decode, bad input.

Torch runs one thread per replica in the test process (conftest) and in each worker, so local
and Ray renders are comparable bit for bit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from longvid_dist import RenderSpec
from longvid_dist.config import ParallelConfig
from longvid_dist.api import render
from longvid_dist.io.video import read_frames
from longvid_dist.runtime import checkpoint
from longvid_dist.runtime.executor import LocalExecutor
from longvid_dist.runtime.ray_executor import ClusterError, RayExecutor, shard

pytestmark = pytest.mark.ray

SPEC = dict(prompt="a cat runs on the beach", negative_prompt="blurry", frames=121, steps=4, recipe="glc")


def _spec(tmp_path, name, **kw):
    return RenderSpec(**{**SPEC, "out": str(tmp_path / name), **kw})


def _local(tmp_path, name, tiny_adapter, **kw):
    spec = _spec(tmp_path, name, **kw)
    render(spec, executor=LocalExecutor(tiny_adapter), progress=False)
    return read_frames(spec.out)


def test_shard_balances_and_covers():
    from longvid_dist.methods.windows import dilated_windows, shifted_windows

    wins = dilated_windows(61, 21) + shifted_windows(61, 21, 10, 3)
    for n in (1, 2, 3, 8):
        shards = shard(wins, n)
        assert sorted(i for s in shards for i in s) == list(range(len(wins)))
        costs = [sum(len(wins[i]) ** 2 for i in s) for s in shards]
        assert max(costs) - min(costs) <= max(len(w) ** 2 for w in wins) + 8 * 21


@pytest.mark.parametrize("workers,shared", [(1, True), (2, True), (2, False)])
def test_ray_render_equals_local(tmp_path, tiny_adapter, tiny_path, ray_local, workers, shared):
    """Through the shared-memory arenas (the default) and through Ray's objects alone."""
    ref = _local(tmp_path, "local.mkv", tiny_adapter)
    spec = _spec(tmp_path, f"ray{workers}.mkv")
    render(spec, ParallelConfig(workers=workers, shared_memory=shared), progress=False)
    out = read_frames(spec.out)
    assert out.shape == ref.shape == (121, 64, 64, 3)
    assert np.array_equal(out, ref)
    import json

    side = json.loads(Path(spec.out + ".json").read_text())
    assert side["executor"] == "RayExecutor"
    assert len(side["workers"]) == workers and all(w["busy"] > 0 for w in side["workers"])
    assert all(s["bytes_moved"] > 0 and "transfer" in s for s in side["timings"]["per_step"])
    assert all(s["shared_memory"] == (workers if shared else 0) for s in side["timings"]["per_step"])


def test_distributed_decode_equals_local(tiny_adapter, tiny_path, ray_local):
    z = torch.randn(16, 80, 8, 8, generator=torch.Generator().manual_seed(5))
    ref = np.concatenate(list(LocalExecutor(tiny_adapter).decode(z, 4)))
    ex = RayExecutor("wan", tiny_path, ParallelConfig(workers=2))
    try:
        out = np.concatenate(list(ex.decode(z, 4)))
    finally:
        ex.close()
    assert out.dtype == np.uint8 and np.array_equal(out, ref)


def test_worker_killed_mid_render_gives_identical_output(tmp_path, tiny_adapter, tiny_path, ray_local):
    kw = dict(steps=16)
    ref = _local(tmp_path, "ref.mkv", tiny_adapter, **kw)
    ex = RayExecutor("wan", tiny_path, ParallelConfig(workers=2))
    victim = ex.worker_pids()[1]
    killed = threading.Event()

    def killer():
        while len(ex.metrics) < 3:
            time.sleep(0.005)
        os.kill(victim, signal.SIGKILL)
        killed.set()

    threading.Thread(target=killer, daemon=True).start()
    spec = _spec(tmp_path, "killed.mkv", **kw)
    try:
        render(spec, executor=ex, progress=False)
    finally:
        ex.close()
    assert killed.is_set()
    assert ex.restarts >= 1
    assert np.array_equal(read_frames(spec.out), ref)


def _kill_first(title: str, killed: threading.Event, stop: threading.Event) -> None:
    """SIGKILL the first Ray worker of this test process whose title is ``ray::Worker.<title>``."""
    import psutil

    me = psutil.Process()
    while not stop.is_set() and not killed.is_set():
        for p in me.children(recursive=True):
            try:
                if p.cmdline() and p.cmdline()[0].startswith(f"ray::Worker.{title}"):
                    p.kill()
                    killed.set()
                    return
            except psutil.Error:
                continue
        time.sleep(0.002)


def _with_killer(title: str):
    killed, stop = threading.Event(), threading.Event()
    threading.Thread(target=_kill_first, args=(title, killed, stop), daemon=True).start()
    return killed, stop


def test_worker_killed_in_model_load_gives_identical_output(tmp_path, tiny_adapter, tiny_path, ray_local):
    ref = _local(tmp_path, "ref.mkv", tiny_adapter)
    killed, stop = _with_killer("warm")
    try:
        ex = RayExecutor("wan", tiny_path, ParallelConfig(workers=2))
    finally:
        stop.set()
    try:
        assert killed.is_set() and ex.restarts >= 1
        spec = _spec(tmp_path, "load.mkv")
        render(spec, executor=ex, progress=False)
    finally:
        ex.close()
    assert np.array_equal(read_frames(spec.out), ref)


def test_worker_killed_in_decode_gives_identical_output(tmp_path, tiny_adapter, tiny_path, ray_local):
    ref = _local(tmp_path, "ref.mkv", tiny_adapter)
    ex = RayExecutor("wan", tiny_path, ParallelConfig(workers=2))
    killed, stop = _with_killer("decode")
    spec = _spec(tmp_path, "decode.mkv")
    try:
        render(spec, executor=ex, progress=False)
    finally:
        stop.set()
        ex.close()
    assert killed.is_set() and ex.restarts >= 1
    assert np.array_equal(read_frames(spec.out), ref)


def test_worker_that_keeps_dying_is_one_clear_error(tmp_path, tiny_path, ray_local):
    """Past the restart bound the render stops with a ClusterError naming worker and phase."""
    ex = RayExecutor("wan", tiny_path, ParallelConfig(workers=1), max_restarts=1)
    spec = _spec(tmp_path, "dies.mkv", frames=41, steps=2)
    stop = threading.Event()

    def keep_killing():
        import psutil

        while not stop.is_set():
            for p in psutil.Process().children(recursive=True):
                try:
                    if p.cmdline() and p.cmdline()[0].startswith("ray::Worker"):
                        p.kill()
                except psutil.Error:
                    pass
            time.sleep(0.01)

    threading.Thread(target=keep_killing, daemon=True).start()
    try:
        with pytest.raises(ClusterError, match=r"worker 0 died 2 times during (prompt encoding|predict)"):
            render(spec, executor=ex, progress=False)
    finally:
        stop.set()
        ex.close()
    assert not os.path.exists(spec.out)


def test_a_worker_restarted_between_steps_gets_the_render_again(tiny_path, ray_local):
    """Workers keep a render's conditions and patches; one restarted while idle answers
    NotPrepared and is prepared again, so the step equals the one before the restart."""
    from dataclasses import replace

    from longvid_dist.methods.windows import direct_windows

    ex = RayExecutor("wan", tiny_path, ParallelConfig(workers=1))
    try:
        ex.set_conditions({"main": ("a cat", "blurry")}, 5.0)
        ex.install(None)
        latent = torch.randn(16, 5, 8, 8, generator=torch.Generator().manual_seed(0))
        wins = [replace(direct_windows(5)[0], timestep=np.asarray(500.0, np.float32))]
        first = ex.predict(latent, wins)[0].clone()
        victim = ex.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        for _ in range(300):  # until Ray has brought the actor back, without the render
            if ex.healthy() and ex.worker_pids()[0] != victim:
                break
            time.sleep(0.1)
        again = ex.predict(latent, wins)[0]
    finally:
        ex.close()
    assert ex.restarts == 1 and torch.equal(first, again)


def test_reused_executor_renders_each_prompt(tmp_path, tiny_adapter, tiny_path, ray_local):
    """One executor, two renders with different prompts: the second is not the first again."""
    ex = RayExecutor("wan", tiny_path, ParallelConfig(workers=2))
    try:
        outs = []
        for i, prompt in enumerate(("a cat runs on the beach", "a red car at night")):
            spec = _spec(tmp_path, f"reuse{i}.mkv", prompt=prompt, frames=41, steps=2)
            render(spec, executor=ex, progress=False)
            outs.append(read_frames(spec.out))
            assert len(ex.metrics) == 2  # per-render metrics, not accumulated
    finally:
        ex.close()
    ref = _local(tmp_path, "ref1.mkv", tiny_adapter, prompt="a red car at night", frames=41, steps=2)
    assert not np.array_equal(outs[0], outs[1])
    assert np.array_equal(outs[1], ref)


def _cli(*args, **popen):
    return subprocess.Popen([sys.executable, "-m", "longvid_dist.cli", "render", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def kill_after_checkpoint(args: list[str], out: Path) -> Path:
    """Start ``longvid render *args --out out``, SIGKILL it as soon as its first checkpoint is
    on disk, check it left no video behind; returns the checkpoint's path."""
    ckpt = Path(checkpoint.checkpoint_path(str(out)))
    p = _cli(*args, "--out", str(out))
    deadline = time.time() + 240
    while not ckpt.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert p.poll() is None, "render finished before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not out.exists()
    return ckpt


def test_killed_render_resumes_to_identical_video(tmp_path):
    common = ["--prompt", "a red car", "--frames", "81", "--steps", "40", "--recipe", "glc", "--quiet"]
    ref = tmp_path / "ref.mkv"
    p = _cli(*common, "--out", str(ref), "--checkpoint-every", "0")
    assert p.wait(timeout=300) == 0, p.stderr.read()

    out = tmp_path / "run.mkv"
    ckpt = kill_after_checkpoint([*common, "--checkpoint-every", "3"], out)
    step = checkpoint.load(str(ckpt), _spec(tmp_path, "run.mkv", prompt="a red car", negative_prompt="",
                                            frames=81, steps=40))["next_step"]
    assert 0 < step < 40

    bad = _cli(*common[:-1], "--seed", "7", "--out", str(out), "--resume")
    assert bad.wait(timeout=120) == 2
    err = bad.stderr.read().strip()
    assert "different render" in err and "seed" in err and len(err.splitlines()) == 1

    p = _cli(*common, "--out", str(out), "--resume")
    assert p.wait(timeout=300) == 0, p.stderr.read()
    assert np.array_equal(read_frames(str(out)), read_frames(str(ref)))
    assert not ckpt.exists()
    import json

    assert json.loads(Path(str(out) + ".json").read_text())["resumed_from_step"] == step


def test_too_many_workers_is_a_clear_error(tiny_path, ray_local):
    t0 = time.time()
    with pytest.raises(ClusterError, match=r"--workers 9 needs 9 CPU .* the cluster has 2 CPU"):
        RayExecutor("wan", tiny_path, ParallelConfig(workers=9))
    assert time.time() - t0 < 30


def test_cli_bad_cluster_inputs(tmp_path):
    out = tmp_path / "x.mp4"
    p = _cli("--prompt", "x", "--frames", "41", "--address", "127.0.0.1:1", "--out", str(out))
    assert p.wait(timeout=60) == 1
    err = p.stderr.read()
    assert "cannot reach Ray cluster at '127.0.0.1:1'" in err
    for args, flag in ((["--workers", "0"], "--workers"), (["--workers", "-2"], "--workers"),
                       (["--resume"], "--resume")):
        p = _cli("--prompt", "x", "--out", str(out), *args)
        assert p.wait(timeout=60) == 2
        lines = p.stderr.read().strip().splitlines()
        assert len(lines) == 1 and flag in lines[0]
    assert list(tmp_path.iterdir()) == []


def render_killing(ex, spec: RenderSpec, victim: int, at: int, method: str = "predict_block") -> tuple[int, dict]:
    """Render ``spec`` on ``ex``, SIGKILLing process ``victim`` once, as the ``at``-th call of
    ``ex.<method>`` starts; closes ``ex``. Returns the number of calls and ``ex``'s report."""
    calls = [0]
    real = getattr(ex, method)

    def counting(*a, **k):
        calls[0] += 1
        if calls[0] == at:
            os.kill(victim, signal.SIGKILL)
        return real(*a, **k)

    setattr(ex, method, counting)
    try:
        render(spec, executor=ex, progress=False)
        return calls[0], ex.report()
    finally:
        ex.close()


def test_worker_killed_mid_rollout_rewrites_its_kv_cache(tmp_path, tiny_adapter, tiny_path, ray_local):
    """Causal rollout keeps its KV cache on one worker: killed mid-chunk, the restarted worker
    gets the cache re-written from the finished blocks, and the video is unchanged."""
    kw = dict(prompt="a cat", recipe="flex", frames=81, height=32, width=32, seed=3, guidance=1.0)
    ref = RenderSpec(**kw, out=str(tmp_path / "ref.mkv"))
    render(ref, executor=LocalExecutor(tiny_adapter), progress=False)
    ex = RayExecutor("wan", tiny_path, ParallelConfig(workers=1))
    spec = RenderSpec(**kw, out=str(tmp_path / "killed.mkv"))
    calls, _ = render_killing(ex, spec, ex.worker_pids()[0], 3 * 5 + 2)  # after the third block has started
    assert calls > 3 * 5 + 2 and ex.restarts >= 1
    assert np.array_equal(read_frames(spec.out), read_frames(ref.out))


def test_large_steps_go_through_shared_memory_bit_for_bit(tiny_adapter, tiny_path, ray_local):
    """A latent too large to ride in the calls goes to the workers through an arena of this node,
    their predictions come back through their reply arenas: equal to local predictions bit for
    bit; a caller that keeps a step's predictions keeps them intact (the next step writes into
    another arena); a worker that cannot map the arenas (another node) and the object store
    alone give the same predictions; a killed worker is prepared and mapped again."""
    from longvid_dist.methods.windows import Window
    from longvid_dist.runtime.ray_executor import INLINE_BYTES, INLINE_PIECES

    latent = torch.randn(16, 25, 32, 32, generator=torch.Generator().manual_seed(3))  # [C, F, h, w]
    assert latent.numpy().nbytes > INLINE_BYTES * INLINE_PIECES  # too large for the calls
    other = torch.randn(16, 25, 32, 32, generator=torch.Generator().manual_seed(4))
    t = np.asarray(500.0, np.float32)
    wins = [Window(tuple(range(s, s + 9)), (1.0,) * 9, timestep=t) for s in (0, 8, 16)]  # overlapping
    local = LocalExecutor(tiny_adapter)
    ex = RayExecutor("wan", tiny_path, ParallelConfig(workers=2))
    try:
        for e in (local, ex):
            e.set_conditions({"main": ("a cat", "blurry")}, 5.0)
            e.install(None)
        ref = [p.clone() for p in local.predict(latent, wins)]

        def same(preds):
            return all(torch.equal(p, r) for p, r in zip(preds, ref))

        kept = ex.predict(latent, wins)
        assert same(kept) and sorted(ex.mapped) == [0, 1] and len(ex.arenas["latent"]) == 1
        assert all(len(ex.arenas[k]) == 1 and not ex.arenas[k][0].free() for k in (0, 1))  # views of them
        ex.predict(other, wins)  # while `kept` lives: written elsewhere
        assert same(kept) and all(len(ex.arenas[k]) == 2 for k in (0, 1))
        del kept
        for _ in range(2):  # dropped predictions: their arenas are reused, none added
            assert same(ex.predict(latent, wins))
        assert all(len(ex.arenas[k]) == 2 for k in (0, 1))

        ex.remote.add(1)  # as if worker 1 were on another node: Ray carries its data
        assert same(ex.predict(latent, wins))
        ex.remote.clear()
        ex.shared_memory = False  # the object store alone
        assert same(ex.predict(latent, wins))
        ex.shared_memory = True

        victim = ex.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        assert same(ex.predict(latent, wins)) and ex.restarts >= 1 and 0 in ex.mapped
    finally:
        ex.close()
    assert ex.arenas == {"latent": []}
