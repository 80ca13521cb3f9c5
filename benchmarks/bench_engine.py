"""Engine overhead and per-step split, measured in one run on this machine.

    .venv/bin/python benchmarks/bench_engine.py [--frames N] [--steps N] [--repeats N] [--threads N]

(1) ``direct`` engine vs the stock ``diffusers.WanPipeline`` on the same tiny model (one loaded
    replica shared by both, so weights and caches are identical):

    * denoise only: stock ``pipe(..., output_type="latent")`` vs our
      ``LocalExecutor.set_conditions`` + ``SamplerState.shared(space.make_scheduler(steps))`` +
      ``space.init_noise`` + ``Planner(direct)`` + ``denoise``. Both include prompt encoding, scheduler set-up and the
      noise draw; neither includes model load.
    * end to end: stock ``output_type="np"`` vs the above plus draining
      ``executor.decode(latent, chunk)`` into one array.

    Contenders run A/B/A/B (stock first in each pair) after one untimed warm-up of each, for
    ``--repeats`` pairs or until ``--budget`` seconds are spent (at least ``--min-repeats``);
    the verdict uses the median of the per-pair ratios ours/stock. Target <= 1.02x, printed as PASS/MISS only.

(2) Recipe ``glc`` on a long video (default 241 frames = 61 latent frames): per-step mean
    predict / merge / scheduler-step time and share, from ``LoopResult.steps``.

Prints only; never asserts on time (this is a shared, noisy CPU box) and exits 0.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time

TARGET = 1.02
PROMPT = "a red car drives through a city at night"
NEGATIVE = "blurry low quality"


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=81, help="pixel frames for the direct-vs-stock part")
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="denoising steps (both parts)")
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--repeats", type=int, default=11, help="timed A/B pairs per comparison (at most)")
    p.add_argument("--budget", type=float, default=60.0,
                   help="seconds for the timed pairs of part (1): stop early once spent, after at least "
                        "--min-repeats pairs (keeps the run short when the shared box is contended)")
    p.add_argument("--min-repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--glc-frames", type=int, default=241, help="pixel frames for the glc split")
    p.add_argument("--decode-chunk", type=int, default=4, help="latent frames per decode chunk")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"


def _timed(fn):
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out
    finally:
        gc.enable()


def main(argv=None) -> int:
    a = _args(argv)
    import numpy as np
    import torch

    torch.set_num_threads(a.threads)
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    from longvid_dist.methods.recipes import get_recipe
    from longvid_dist.models.registry import FAMILIES
    from longvid_dist.models.tiny import tiny_model_path
    from longvid_dist.models.wan import WanAdapter
    from longvid_dist.runtime.executor import LocalExecutor
    from longvid_dist.sampling.loop import denoise
    from longvid_dist.sampling.state import SamplerState
    from longvid_dist.sampling.planner import Planner
    from longvid_dist.sampling.rng import keyed_generator, noise_generator

    t_all = time.perf_counter()
    print("== machine")
    print(f"python {platform.python_version()}  torch {torch.__version__}  diffusers {diffusers.__version__}  "
          f"threads {torch.get_num_threads()} (--threads {a.threads})  cpu_count {os.cpu_count()}  "
          f"affinity {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'}  "
          f"{platform.machine()}  loadavg(1m) {_load()}")

    t0 = time.perf_counter()
    adapter = WanAdapter.load(str(tiny_model_path("tiny-wan")), device="cpu", dtype=torch.float32)
    pipe = adapter.pipe
    print(f"model tiny-wan loaded in {time.perf_counter() - t0:.2f}s (not timed below)")
    native = FAMILIES["wan"].latent_frames(FAMILIES["wan"].native_frames)

    # ---- contenders ------------------------------------------------------------------
    def stock(output_type):
        def run():
            return pipe(prompt=PROMPT, negative_prompt=NEGATIVE, height=a.height, width=a.width,
                        num_frames=a.frames, num_inference_steps=a.steps, guidance_scale=a.guidance,
                        generator=noise_generator(a.seed), output_type=output_type).frames
        return run

    def ours_denoise(recipe="direct", frames=None):
        ex = LocalExecutor(adapter)
        ex.set_conditions({"main": (PROMPT, NEGATIVE)}, a.guidance)
        state = SamplerState.shared(adapter.space.make_scheduler(a.steps))
        latent = adapter.space.init_noise(noise_generator(a.seed), frames or a.frames, a.height, a.width)
        planner = Planner(get_recipe(recipe), latent.shape[1], native,
                          lambda purpose, step: keyed_generator(a.seed, purpose, step))
        return ex, denoise(latent, state, planner, ex)

    def ours(decode):
        def run():
            ex, res = ours_denoise()
            if not decode:
                return res.latent
            return np.concatenate(list(ex.decode(res.latent, a.decode_chunk)), axis=0)
        return run

    pairs = {
        "denoise": (stock("latent"), ours(False)),
        "end-to-end": (stock("np"), ours(True)),
    }

    # ---- (1) direct vs stock -----------------------------------------------------------
    print(f"\n== (1) direct engine vs stock WanPipeline: {a.frames} frames {a.height}x{a.width}, "
          f"{a.steps} steps, guidance {a.guidance}, decode chunk {a.decode_chunk}, "
          f"up to {a.repeats} A/B pairs (budget {a.budget:.0f}s, at least {a.min_repeats})")
    t0 = time.perf_counter()
    warm = {}
    for name, (fa, fb) in pairs.items():  # one untimed warm-up of each contender
        warm[name] = (fa(), fb())
    print(f"warm-up {time.perf_counter() - t0:.1f}s")
    sl, ol = warm["denoise"]
    se, oe = warm["end-to-end"]
    ref = se[0]
    if oe.dtype == np.uint8:  # executor.decode yields uint8: quantize the stock float video the same way
        ref = np.clip(np.rint(ref * 255.0), 0, 255).astype(np.uint8)
    vdiff = float(np.abs(ref.astype(np.float64) - oe.astype(np.float64)).max())
    print(f"sanity: latent max|ours-stock| = {(sl[0].float() - ol).abs().max().item():.3g}, "
          f"video max|ours-stock| = {vdiff:.3g}  (ours {oe.dtype} {tuple(oe.shape)}, stock {se.dtype})")
    del warm, sl, ol, se, oe

    times = {name: ([], []) for name in pairs}
    t_pairs = time.perf_counter()
    for r in range(a.repeats):
        if r >= a.min_repeats and time.perf_counter() - t_pairs > a.budget:
            print(f"  budget {a.budget:.0f}s spent: stopping after {r} pairs")
            break
        for name, (fa, fb) in pairs.items():
            ta, _ = _timed(fa)
            tb, _ = _timed(fb)
            times[name][0].append(ta)
            times[name][1].append(tb)
            print(f"  pair {r + 1}/{a.repeats} {name:<10}  stock {ta:7.3f}s  ours {tb:7.3f}s  ratio {tb / ta:.3f}")

    rows = []
    for name, (ts, to) in times.items():
        ms, mo = statistics.median(ts), statistics.median(to)
        ratio = mo / ms
        pair_ratio = statistics.median(b / x for x, b in zip(ts, to))
        min_ratio = min(to) / min(ts)
        rows.append((name, ms, mo, ratio, pair_ratio, min_ratio, min(ts), max(ts), min(to), max(to)))
        print(f"{name}: ours/stock = {ratio:.3f}x (median of pair ratios {pair_ratio:.3f}x, min/min {min_ratio:.3f}x), "
              f"target <= {TARGET:.2f}x -> {'PASS' if pair_ratio <= TARGET else 'MISS'}")

    # ---- (2) glc per-step split --------------------------------------------------------
    lat_frames = FAMILIES["wan"].latent_frames(a.glc_frames)
    print(f"\n== (2) recipe glc per-step split: {a.glc_frames} frames ({lat_frames} latent) {a.height}x{a.width}, "
          f"{a.steps} steps, guidance {a.guidance}, native window {native}")
    t_glc, (_, res) = _timed(lambda: ours_denoise("glc", a.glc_frames))
    steps = res.steps
    wins = [s.windows for s in steps]
    mean = {k: statistics.fmean(getattr(s, k) for s in steps) for k in ("predict", "merge", "sched")}
    step_total = sum(mean.values())
    print(f"denoise wall {t_glc:.2f}s over {len(steps)} steps; windows/step min {min(wins)} max {max(wins)} "
          f"mean {statistics.fmean(wins):.2f}; predict per window {1e3 * mean['predict'] / statistics.fmean(wins):.1f} ms")

    # ---- table ------------------------------------------------------------------------
    print("\n== summary")
    print(f"{'comparison':<12}{'stock med s':>12}{'ours med s':>12}{'ratio':>8}{'pair med':>10}{'min/min':>9}"
          f"{'target':>8}{'verdict':>9}   {'stock min..max':>16}  {'ours min..max':>16}")
    for name, ms, mo, ratio, pr, mr, smin, smax, omin, omax in rows:
        print(f"{name:<12}{ms:>12.3f}{mo:>12.3f}{ratio:>8.3f}{pr:>10.3f}{mr:>9.3f}{TARGET:>8.2f}"
              f"{'PASS' if pr <= TARGET else 'MISS':>9}   {smin:>7.3f}..{smax:<7.3f}  {omin:>7.3f}..{omax:<7.3f}")
    print("(verdict on the median of A/B pair ratios, which cancels load drift between pairs; "
          "ratio of medians and min/min are cross-checks)")
    print(f"\n{'glc phase':<12}{'mean ms/step':>14}{'share':>8}")
    for k, label in (("predict", "predict"), ("merge", "merge"), ("sched", "sched step")):
        print(f"{label:<12}{1e3 * mean[k]:>14.2f}{100 * mean[k] / step_total:>7.1f}%")
    print(f"{'total':<12}{1e3 * step_total:>14.2f}{100.0:>7.1f}%   windows/step {statistics.fmean(wins):.2f} "
          f"({min(wins)}..{max(wins)})")
    print(f"\n(ratios measured in this run only; timing is printed, never asserted)  "
          f"total {time.perf_counter() - t_all:.0f}s  loadavg(1m) at end {_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
