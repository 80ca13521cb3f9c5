"""Per-step cost of every built-in recipe relative to ``direct``, measured in one run.

    .venv/bin/python benchmarks/bench_recipes.py [--frames 241] [--steps 6] [--repeats 3]

Same tiny model, frames, size and seed for every recipe; the denoise loop only (model load,
prompt encoding and decode excluded), torch threads fixed. Recipes are timed round-robin
(direct, A, direct, B, ...) so drift on this shared machine hits all alike; each ratio is the
median over repeats of recipe / the neighbouring direct run. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from longvid_dist.methods.recipes import builtin_names, get_recipe  # noqa: E402
from longvid_dist.models.registry import FAMILIES  # noqa: E402
from longvid_dist.models.tiny import tiny_model_path  # noqa: E402
from longvid_dist.models.wan import WanAdapter  # noqa: E402
from longvid_dist.runtime.executor import LocalExecutor  # noqa: E402
from longvid_dist.sampling.loop import denoise  # noqa: E402
from longvid_dist.sampling.state import SamplerState  # noqa: E402
from longvid_dist.sampling.planner import Planner  # noqa: E402
from longvid_dist.sampling.rng import keyed_generator, noise_generator  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=241, help="pixel frames (4k+1), default 241")
    ap.add_argument("--size", type=int, default=64, help="height = width in pixels, default 64")
    ap.add_argument("--steps", type=int, default=6, help="denoising steps per timed run, default 6")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per recipe, default 3")
    ap.add_argument("--threads", type=int, default=1, help="torch threads, default 1")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    adapter = WanAdapter.load(str(tiny_model_path("tiny-wan")))
    ex = LocalExecutor(adapter)
    ex.set_conditions({"main": ("a red car drives through a city at night", "blurry")}, 5.0)
    fam = FAMILIES["wan"]
    native, latent_frames = fam.latent_frames(fam.native_frames), fam.latent_frames(a.frames)

    def run(name: str) -> tuple[float, float]:
        planner = Planner(get_recipe(name), latent_frames, native, lambda p, s: keyed_generator(0, p, s))
        state = SamplerState.shared(adapter.space.make_scheduler(a.steps))
        z = planner.init_noise(adapter.space, noise_generator(0), a.frames, a.size, a.size)
        t0 = time.perf_counter()
        res = denoise(z, state, planner, ex)
        wall = (time.perf_counter() - t0) / a.steps
        return wall, statistics.fmean(s.windows for s in res.steps)

    names = builtin_names()
    for n in names:  # warm-up: first-call allocations, lazy imports
        run(n)
    ratios: dict[str, list[float]] = {n: [] for n in names}
    per_step: dict[str, list[float]] = {n: [] for n in names}
    windows: dict[str, float] = {}
    for _ in range(a.repeats):
        for n in names:
            base, _ = run("direct")
            t, windows[n] = run(n)
            ratios[n].append(t / base)
            per_step[n].append(t)

    print(f"torch {torch.__version__}, threads {a.threads}, {os.cpu_count()} CPUs; tiny-wan {a.size}x{a.size}, "
          f"{a.frames} frames ({latent_frames} latent, native window {native}), {a.steps} steps x {a.repeats} repeats")
    print(f"{'recipe':<15}{'ms/step':>9}{'windows':>9}{'x direct':>10}")
    for n in names:
        print(f"{n:<15}{1e3 * statistics.median(per_step[n]):>9.1f}{windows[n]:>9.1f}"
              f"{statistics.median(ratios[n]):>10.2f}")
    print("(ratio = median over repeats of recipe / the direct run just before it; printed, never asserted)")


if __name__ == "__main__":
    main()
