"""Chunked generation over workers: time per generated second of video, measured in one run.

    .venv/bin/python benchmarks/bench_chunks.py [--frames 121] [--size 128] [--dim 256] [--steps 4] [--repeats 2]

A diffusion-forcing render (SkyReels-V2 DF architecture, random weights wider than
``tiny-skyreels-df``: ``--dim`` = heads x 32, 2 layers; long and asynchronous mode: segments of
``base_num_frames`` 37 with ``overlap_history`` 17, ``ar_step`` 1, ``causal_block_size`` 2, guidance
on) is denoised -- decode excluded, see ``bench_decode.py`` -- by:

- ``local``: one process (LocalExecutor);
- ``ray 1``: one Ray worker;
- ``ray 2 cfg``: two Ray workers, each segment's two guidance branches on separate workers;
- ``ray 2 U2``: two Ray workers as one Ulysses group, each forward's tokens split over the pair.

All four are set up and warmed first, then timed in interleaved rounds (medians). Prints
seconds of compute per generated second of video (SkyReels' 24 fps) for each, and the
speed-up over ``ray 1`` next to the machine's measured capacity for two CPU-bound processes
(two matmul loops at once vs one), which bounds what 2 workers can gain on this box. Each
configuration's latent is checked against the local one (max abs difference; the guidance
split is exact, the sequence-parallel split within float rounding). Never asserts on time.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

FPS = 24
PLAN = dict(base_num_frames=37, overlap_history=17, addnoise_condition=20, ar_step=1, causal_block_size=2)


def _args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=121, help="pixel frames of the video (4k+1)")
    p.add_argument("--size", type=int, default=128, help="square frame size in pixels (multiple of 16)")
    p.add_argument("--dim", type=int, default=256, help="transformer width = heads x 32")
    p.add_argument("--steps", type=int, default=4, help="denoising steps per segment")
    p.add_argument("--repeats", type=int, default=2, help="timed renders per configuration (median)")
    return p.parse_args(argv)


def _model(dim: int, folder: str) -> str:
    """tiny-skyreels-df's pipeline with a wider random transformer, saved to ``folder``."""
    import torch
    from diffusers import SkyReelsV2Transformer3DModel

    from longvid_dist.models.tiny import build_tiny_skyreels_df

    pipe = build_tiny_skyreels_df(0)
    torch.manual_seed(1)
    pipe.transformer = SkyReelsV2Transformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=dim // 32, attention_head_dim=32, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=32, ffn_dim=2 * dim, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=1024, inject_sample_info=False, num_frame_per_block=1,
    ).eval()
    pipe.save_pretrained(folder)
    return folder


def _denoise(executor, a):
    from longvid_dist.methods.forcing import forcing_plan
    from longvid_dist.sampling.chunks import denoise_forcing

    plan = forcing_plan(dict(PLAN), (a.frames - 1) // 4 + 1, 4)
    executor.set_conditions({"main": ("a red car drives in the city at night", "blurry")}, 5.0)
    t0 = time.perf_counter()
    latent = denoise_forcing(plan, executor.space, executor, a.steps, a.size, a.size, 7).latent
    return time.perf_counter() - t0, latent


def main(argv=None) -> int:
    a = _args(argv)
    sys.path.insert(0, os.path.dirname(__file__))
    from bench_sp import _capacity  # noqa: E402  (same directory)

    from longvid_dist.config import ParallelConfig
    from longvid_dist.models.skyreels import SkyReelsDFAdapter
    from longvid_dist.runtime.executor import LocalExecutor
    from longvid_dist.runtime.ray_executor import RayExecutor, connect, shutdown

    seconds = a.frames / FPS
    print(f"diffusion forcing {a.frames} frames ({seconds:.1f} s at {FPS} fps) {a.size}x{a.size}, dim {a.dim}, "
          f"{a.steps} steps, plan {PLAN}; cpu_count {os.cpu_count()}")
    with tempfile.TemporaryDirectory() as tmp:
        path = _model(a.dim, os.path.join(tmp, "df"))
        connect(None, quiet=True, num_cpus=5)  # logical CPUs: the 5 workers below idle between their turns
        configs = {"local": None, "ray 1": ParallelConfig(workers=1), "ray 2 cfg": ParallelConfig(workers=2),
                   "ray 2 U2": ParallelConfig(workers=2, ulysses_degree=2)}
        executors = {}
        try:
            for name, par in configs.items():
                executors[name] = (LocalExecutor(SkyReelsDFAdapter.load(path)) if par is None
                                   else RayExecutor("skyreels-df", path, par))
                _denoise(executors[name], a)  # warm-up: model load, first-call costs
            times: dict[str, list[float]] = {name: [] for name in configs}
            latents = {}
            for _ in range(a.repeats):  # interleaved: every configuration once per round
                for name, ex in executors.items():
                    t, latents[name] = _denoise(ex, a)
                    times[name].append(t)
        finally:
            for name, ex in executors.items():
                if configs[name] is not None:
                    ex.close()
            shutdown()
    results = {name: statistics.median(ts) for name, ts in times.items()}
    for name, t in results.items():
        err = float((latents[name] - latents["local"]).abs().max())
        print(f"  {name:10s} {t:7.2f} s  = {t / seconds:6.2f} s per generated second  "
              f"(max |latent - local| {err:.1e})")
    cap = _capacity()
    base = results["ray 1"]
    print(f"\nspeed-up over ray 1: ray 2 cfg {base / results['ray 2 cfg']:.2f}x, "
          f"ray 2 U2 {base / results['ray 2 U2']:.2f}x; this box's 2-process capacity {cap:.2f}x; "
          f"ray 1 / local {base / results['local']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
