"""Memory for real checkpoints: text encoders freed once conditions are encoded (and reloaded,
bit for bit, for a new prompt), ``--offload`` refused on a CPU and its hooks' code path exact,
and the distributed decode returning ``decode_chunk``-sized pieces. Figures are measured by
``benchmarks/bench_memory.py``, never asserted here."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from longvid_dist.config import ParallelConfig, RenderSpec, SpecError

GEO = dict(prompt="a red car drives in the city", negative_prompt="blurry", frames=81, height=32, width=48,
           steps=2, seed=5, checkpoint_every=0)


def test_text_encoder_is_freed_after_encoding_and_reloaded_exactly(tiny_path):
    from longvid_dist.models.wan import WanAdapter
    from longvid_dist.runtime.worker import Worker

    adapter = WanAdapter.load(tiny_path)
    w = Worker.from_adapter(adapter, keep_text_encoders=False)
    ref = weakref.ref(adapter.pipe.text_encoder)
    first = w.encode({"main": ("a cat", "blurry")}, 5.0)
    gc.collect()
    assert adapter.pipe.text_encoder is None and ref() is None and not adapter.text_encoders_loaded()
    again = w.encode({"main": ("a cat", "blurry")}, 5.0)  # a new prompt reloads it from the folder
    assert all(np.array_equal(first["main"][k], again["main"][k]) for k in ("pos", "neg"))
    keep = Worker.from_adapter(adapter)  # a caller's adapter keeps its encoders by default
    keep.encode({"main": ("a dog", "")}, 5.0)
    assert adapter.pipe.text_encoder is not None


def test_a_worker_that_did_not_encode_frees_its_text_encoder(tiny_path, tiny_adapter):
    """Ray workers other than the encoding one drop theirs with their first prediction."""
    from longvid_dist.methods.windows import direct_windows
    from dataclasses import replace
    from longvid_dist.models.wan import WanAdapter
    from longvid_dist.runtime.worker import Worker

    conds = Worker.from_adapter(tiny_adapter).encode({"main": ("a cat", "blurry")}, 5.0)
    other = Worker.from_adapter(WanAdapter.load(tiny_path), keep_text_encoders=False)
    assert other.adapter.text_encoders_loaded()
    win = replace(direct_windows(3)[0], timestep=np.asarray(500.0))
    other.predict("v1", conds, None, np.zeros((16, 3, 4, 6), np.float32), [([0, 1, 2], win, True)])
    assert not other.adapter.text_encoders_loaded()


def test_offload_is_refused_on_a_cpu():
    with pytest.raises(SpecError) as e:
        RenderSpec(prompt="a cat", offload="model", device="cpu", out="/tmp/x.mp4")
    assert e.value.field == "offload" and "CUDA" in e.value.message
    with pytest.raises(SpecError) as e:
        RenderSpec(prompt="a cat", offload="layers", out="/tmp/x.mp4")
    assert e.value.field == "offload"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for a machine without CUDA")
def test_cli_offload_without_cuda_is_one_line_and_writes_nothing(tmp_path):
    r = subprocess.run([sys.executable, "-m", "longvid_dist.cli", "render", "--prompt", "a cat", "--offload",
                        "model", "--out", str(tmp_path / "v.mp4")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("longvid render: error: --offload:")
    assert os.listdir(tmp_path) == []


OFFLOAD_RENDER = r"""
import json, sys
import numpy as np, torch
torch.set_num_threads(1)
from longvid_dist.api import render
from longvid_dist.config import RenderSpec
from longvid_dist.io.video import read_frames
from longvid_dist.models.wan import WanAdapter
from longvid_dist.runtime.executor import LocalExecutor
path, mode, out, geo = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
outs = []
for name in ("plain", mode):
    adapter = WanAdapter.load(path)
    if name != "plain":
        adapter.enable_offload(mode, "cpu")
    spec = RenderSpec(out=f"{out}/{name}.mkv", recipe="riflex", **geo)
    render(spec, executor=LocalExecutor(adapter), progress=False)
    outs.append(read_frames(spec.out))
print("equal" if np.array_equal(*outs) else "differ")
"""


@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_offload_hooks_render_the_same_video(tmp_path, tiny_path, mode):
    """The offload code path (accelerate's hooks, the VAE moved before its submodules are
    called, RoPE tables patched in place) with the CPU as execution device: the same video.
    Run under MKL's strict reproducibility mode (in a process of its own: MKL reads it once):
    the hooks keep the weights in other memory, and on some CPUs (an AMD EPYC here) MKL's
    default kernels give other last bits for other alignments of the same numbers."""
    env = {**os.environ, "MKL_CBWR": "AUTO,STRICT", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", OFFLOAD_RENDER, tiny_path, mode, str(tmp_path), json.dumps(GEO)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[-1] == "equal"


# -- the distributed decode streams pieces ---------------------------------------------------------

@pytest.mark.ray
def test_ray_decode_pieces_and_storyboard_render(tmp_path, tiny_path, tiny_adapter, ray_local):
    """Each decoded piece holds at most ``decode_chunk`` latent frames of pixels, bit for bit the
    sequential decode; a storyboard render (blends computed on the workers) equals the local one."""
    from longvid_dist.api import render
    from longvid_dist.io.video import read_frames
    from longvid_dist.runtime.executor import LocalExecutor
    from longvid_dist.runtime.ray_executor import RayExecutor

    z = torch.randn(16, 80, 4, 4, generator=torch.Generator().manual_seed(5))
    ref = np.concatenate(list(LocalExecutor(tiny_adapter).decode(z, 4)))
    ex = RayExecutor("wan", tiny_path, ParallelConfig(workers=2))
    try:
        pieces = list(ex.decode(z, 4))
        assert max(len(p) for p in pieces) <= 4 * 4 and np.array_equal(np.concatenate(pieces), ref)
        board = {"segments": [{"prompt": "a red car drives in the city", "frames": 41},
                              {"prompt": "a blue bird flies in the sky", "frames": 40}]}
        geo = {**GEO, "prompt": ""}
        spec = RenderSpec(out=str(tmp_path / "ray.mkv"), recipe="glc", window=8, storyboard=board, **geo)
        render(spec, executor=ex, progress=False)
    finally:
        ex.close()
    local = RenderSpec(out=str(tmp_path / "local.mkv"), recipe="glc", window=8, storyboard=board, **geo)
    render(local, executor=LocalExecutor(tiny_adapter), progress=False)
    tiny_adapter.install(None, None)
    assert np.array_equal(read_frames(spec.out), read_frames(local.out))
    side = json.loads(Path(spec.out + ".json").read_text())
    assert [s["prompt"] for s in side["storyboard"]["segments"]] == [s["prompt"] for s in board["segments"]]
