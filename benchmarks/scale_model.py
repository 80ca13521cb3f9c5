"""A first-order scaling model of a render: step time and parallel efficiency for 1-64 GPUs.

    .venv/bin/python benchmarks/scale_model.py [--window-s S] [--link-gbps G] [--decode-s S] ...
    .venv/bin/python benchmarks/scale_model.py --validate     # against 1 and 2 Ray workers here

For every built-in recipe (recipes with the same windows share a row) and a 1-, 5- and 20-minute
Wan2.1 video at 480x832 (16 fps, 50 steps), it predicts from

- the windows of a step (the recipe's own planner) and the executor's ``shard()`` over G groups
  of one GPU, each window costing ``window_s * c(n) / c(21)`` with the executor's cost model
  ``c(n) = n^2 + 8n``; recomputed ABAM anchors count on the worker that needs them;
- the coordinator's data path per step: a fixed ``overhead_s`` (task round trips), the latent put
  once and pulled once per remote node over the coordinator's link (``link_gbps``), predictions
  back (remote ones over the link, same-node ones at ``mem_gbps``), and the merge at
  ``merge_ns_per_byte`` of returned predictions (measured here: see below);
- the decode: ``ceil(F / G) + R`` latent frames per worker at ``decode_s`` each (R = 2 frames of
  warm-up), pipelined with the mp4 encode at the coordinator (``encode_fps``), which does not
  scale;

the time of a render ``T(G) = steps * (compute + coordinator) + max(decode, encode)`` and the
efficiency ``T(1) / (G T(G))``, and names what dominates at each G (compute, coordinator or
decode/encode) -- where the bottleneck moves. ``direct`` (one window over the whole video) is
modelled as that window split over every GPU (sequence parallelism), communication not counted,
so its row is an upper bound. Chunked recipes (diffusion forcing, causal rollout) run their
forwards one after another; their rows count forwards per render instead of windows per step
(:func:`chunked_time` says how they use G GPUs).

Defaults: ``window_s`` and ``decode_s`` from ``plan_cost``'s table for Wan2.1-1.3B on an
H100-class GPU (both CFG passes); the coordinator's per-byte costs measured on this machine at
start (a memcpy and a WLS merge of a 1-minute latent); ``overhead_s`` 5 ms (Ray(1) - local per
step at small windows, bench_ray (b): 4-7 ms since steps use the shared-memory arenas, 10 ms
before). All are flags.

``--validate`` measures the same inputs with the tiny model on this machine (per-window cost on
a LocalExecutor, Ray round trip, memcpy, merge), predicts the per-step time of 1 and 2 Ray
workers on a ``glc`` 241-frame 64x64 render and compares with the measured one. Prints only.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

GPUS = [1, 2, 4, 8, 16, 32, 64]
MINUTES = [1, 5, 20]
FPS = 16
NATIVE = 21  # latent frames of Wan's 81-frame clip


def _cost(n: int) -> float:
    return n * n + 8 * n  # runtime.ray_executor._window_cost


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--window-s", type=float, default=None, help="seconds of one native window (both CFG passes) "
                   "on one GPU (default: plan_cost table, Wan2.1-1.3B 480x832 on an H100-class GPU)")
    p.add_argument("--decode-s", type=float, default=None, help="seconds to decode one latent frame on one GPU")
    p.add_argument("--link-gbps", type=float, default=12.5, help="coordinator network link, GB/s (100 Gb/s)")
    p.add_argument("--mem-gbps", type=float, default=None, help="coordinator memcpy GB/s (default: measured)")
    p.add_argument("--merge-ns", type=float, default=None, help="merge ns per returned byte (default: measured)")
    p.add_argument("--overhead-s", type=float, default=0.005, help="fixed coordinator cost per step, seconds")
    p.add_argument("--encode-fps", type=float, default=120.0, help="mp4 encode at the coordinator, frames/s")
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--validate", action="store_true", help="validate against 1 and 2 Ray workers on this machine")
    return p.parse_args(argv)


# -- measurements of the coordinator's per-byte costs -------------------------------------------
def measure_memcpy(nbytes: int = 96 * 2**20) -> float:
    import numpy as np

    a = np.ones(nbytes, np.uint8)
    b = np.empty_like(a)
    np.copyto(b, a)
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        np.copyto(b, a)
        ts.append(time.perf_counter() - t0)
    return nbytes / statistics.median(ts) / 1e9


def measure_merge(F: int = 241, hw=(60, 104)) -> float:
    """ns per returned byte of a glc step's merge at a 1-minute Wan latent (fresh predictions)."""
    import torch

    from longvid_dist.methods.recipes import get_recipe
    from longvid_dist.sampling.planner import Planner
    from longvid_dist.sampling.rng import keyed_generator

    pl = Planner(get_recipe("glc"), F, NATIVE, lambda purpose, step: keyed_generator(0, purpose, step))
    lat = torch.randn(16, F, *hw)
    ts, nb = [], 0
    for i in range(3):
        plan = pl.plan(i, 900.0)
        preds = [lat[:, list(w.frames)].clone() for w in plan.windows]
        nb = sum(p.nbytes for p in preds)
        t0 = time.perf_counter()
        plan.merge(preds)
        ts.append(time.perf_counter() - t0)
        del preds
    return statistics.median(ts[1:]) / nb * 1e9


# -- the model ---------------------------------------------------------------------------------
def plan_windows(recipe: str, F: int):
    from longvid_dist.methods.recipes import get_recipe
    from longvid_dist.sampling.planner import Planner
    from longvid_dist.sampling.rng import keyed_generator

    pl = Planner(get_recipe(recipe), F, NATIVE, lambda purpose, step: keyed_generator(0, purpose, step))
    return pl.plan(1, 900.0).windows


def chunk_forwards(recipe: str, F: int, steps: int) -> list[tuple[int, int]] | None:
    """``(query frames, key frames)`` of every forward of a chunked recipe over ``F`` latent
    frames (None for a window plan). Diffusion forcing: each segment (attention sink included)
    once per iteration of its per-frame schedule; causal rollout: each block once per timestep
    plus its cache-writing re-run, its queries against the cache (sink + local window) and itself."""
    from longvid_dist.methods.causal import CausalPlan
    from longvid_dist.methods.forcing import schedule
    from longvid_dist.methods.recipes import get_recipe
    from longvid_dist.sampling.planner import Planner
    from longvid_dist.sampling.rng import keyed_generator

    plan = Planner(get_recipe(recipe), F, NATIVE, lambda purpose, step: keyed_generator(0, purpose, step)).chunks
    if plan is None:
        return None
    out: list[tuple[int, int]] = []
    for seg in plan.segments():
        if isinstance(plan, CausalPlan):
            cache = min(seg.index * plan.block_frames, plan.sink_frames + plan.local_window)
            out += [(seg.frames, seg.frames + cache)] * (len(plan.sigmas()) + 1)
        else:
            rows, _ = schedule(seg.frames, steps, plan.ar_step, seg.prefix, plan.causal_block)
            n = seg.sink + seg.frames
            out += [(n, n)] * len(rows)
    return out


def chunked_time(forwards, G: int, window_s: float, causal: bool, p) -> tuple[float, float]:
    """(compute, coordinator) seconds of a chunked render on G GPUs: forwards run one after
    another; both guidance branches on their own GPUs (2x at most), and under diffusion forcing
    each branch's forward split over G/2 GPUs (sequence parallelism; communication not counted:
    an upper bound, as for ``direct``). Causal rollout keeps its KV cache on one GPU per branch."""
    unit = window_s / _cost(NATIVE)
    work = sum(q * k + 8 * q for q, k in forwards) * unit  # _cost(n) for q = k = n
    return work / (min(G, 2) if causal else G), len(forwards) * p.overhead_s


def compute_time(windows, G: int, window_s: float, native: int = NATIVE) -> float:
    """Slowest group's seconds: shard() over G, recomputed ABAM anchors included."""
    from longvid_dist.runtime.ray_executor import shard

    unit = window_s / _cost(native)
    if len(windows) == 1:  # one window: split over every GPU (sequence parallelism)
        return _cost(len(windows[0].frames)) * unit / G
    by_frames = {w.frames: w for w in windows if w.role == "anchor"}
    worst = 0.0
    for idxs in shard(windows, G):
        wins = [windows[i] for i in idxs]
        have = {w.frames for w in wins if w.role == "anchor"}
        extra = [by_frames[a] for a in dict.fromkeys(w.anchor for w in wins if w.role == "follow") if a not in have]
        worst = max(worst, sum(_cost(len(w.frames)) for w in wins + extra) * unit)
    return worst


def coordinator_time(windows, G: int, frame_bytes: int, F: int, p) -> tuple[float, int]:
    """(seconds, bytes) of the coordinator's part of a step on G GPUs."""
    nodes = math.ceil(G / p.gpus_per_node)
    local_share = min(G, p.gpus_per_node) / G
    latent = F * frame_bytes
    returned = sum(len(w.frames) for w in windows) * frame_bytes
    net = latent * (nodes - 1) + returned * (1 - local_share)
    mem = latent + returned * local_share
    t = p.overhead_s + net / (p.link_gbps * 1e9) + mem / (p.mem_gbps * 1e9) + returned * p.merge_ns * 1e-9
    return t, latent * nodes + returned


def decode_time(F: int, G: int, frames: int, p) -> tuple[float, float]:
    return (math.ceil(F / G) + 2) * p.decode_s, frames / p.encode_fps


def defaults_from_table(p) -> None:
    from longvid_dist.plan_cost import COST_TABLE, KNOWN_CONFIGS, ModelDims, forward_seconds  # noqa: F401

    if p.window_s is None or p.decode_s is None:
        cfg = KNOWN_CONFIGS["Wan-AI/Wan2.1-T2V-1.3B-Diffusers"]["transformer"]
        d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
        tokens = NATIVE * (p.height // 16) * (p.width // 16)
        L, f = cfg["num_layers"], cfg["ffn_dim"]
        flops = L * (2 * tokens * (8 * d * d + 2 * d * f) + 4 * tokens * tokens * d + 4 * tokens * 512 * d)
        t = COST_TABLE["wan"]
        if p.window_s is None:
            p.window_s = 2 * (flops / t["flops"]["cuda"] + L * t["layer_overhead_s"]["cuda"])
        if p.decode_s is None:
            p.decode_s = 4 * p.height * p.width * t["decode_flops_per_pixel"] / t["flops"]["cuda"]


def table(p) -> None:
    from longvid_dist.methods.recipes import builtin_names, get_recipe

    frame_bytes = 16 * (p.height // 8) * (p.width // 8) * 4
    print(f"inputs: window {p.window_s * 1e3:.0f} ms (native {NATIVE} latent frames, both CFG passes), decode "
          f"{p.decode_s * 1e3:.1f} ms/latent frame, encode {p.encode_fps:.0f} frames/s, link {p.link_gbps:g} GB/s, "
          f"memcpy {p.mem_gbps:.1f} GB/s, merge {p.merge_ns:.2f} ns/B, overhead {p.overhead_s * 1e3:.0f} ms/step, "
          f"{p.gpus_per_node} GPUs/node, {p.steps} steps, {p.height}x{p.width}")
    print("cells: render time T(G), efficiency T(1)/(G*T(G)) and, below 90%, the biggest loss against a perfect "
          "1/G: I = compute granularity (too few windows per step, uneven shards, recomputed anchors), "
          "K = coordinator (link, merge, round trips), D = decode, E = mp4 encode at the coordinator\n")
    for minutes in MINUTES:
        frames = FPS * 60 * minutes + 1
        F = (frames - 1) // 4 + 1
        rows: dict = {}
        chunked = {}
        for name in builtin_names():
            fw = chunk_forwards(name, F, p.steps)
            if fw is not None:
                chunked[name] = fw
                continue
            wins = plan_windows(name, F)
            key = tuple((w.frames, w.role) for w in wins)
            rows.setdefault(key, (wins, []))[1].append(name)
        print(f"== {minutes} min ({frames} frames, {F} latent frames, latent {F * frame_bytes / 1e6:.0f} MB)")
        print(f"{'recipes':<40} {'win/step':>8} " + " ".join(f"{'G=' + str(g):>13}" for g in GPUS) + "  bottleneck moves")
        for wins, names in rows.values():
            T1 = base = None
            cells, bn = [], []
            for G in GPUS:
                c = compute_time(wins, G, p.window_s)
                k, _ = coordinator_time(wins, G, frame_bytes, F, p)
                d, e = decode_time(F, G, frames, p)
                T = p.steps * (c + k) + max(d, e)
                T1 = T1 or T
                parts = {"I": p.steps * c, "K": p.steps * k, "D": d, "E": e if e > d else 0.0}
                base = base or parts
                # what is lost against a perfect 1/G of each part: I = windows per step / imbalance
                loss = {x: parts[x] - base[x] / G for x in parts}
                b = max(loss, key=loss.get) if G > 1 and 100 * T1 / (G * T) < 90 else "-"
                bn.append(b)
                cells.append(f"{_dur(T)} {100 * T1 / (G * T):3.0f}%{b}")
            moves = " -> ".join(f"{b}@{g}" for i, (g, b) in enumerate(zip(GPUS, bn)) if b != "-" and (i == 0 or bn[i - 1] != b)) or "-"
            label = ",".join(names)
            label = label if len(label) <= 40 else label[:37] + "..."
            print(f"{label:<40} {len(wins):>8} " + " ".join(f"{c:>13}" for c in cells) + f"  {moves}")
        for name, fw in chunked.items():  # forwards one after another: the column is forwards per render
            causal = get_recipe(name).plan.kind == "causal"
            T1, cells = None, []
            for G in GPUS:
                c, k = chunked_time(fw, G, p.window_s, causal, p)
                d, e = decode_time(F, G, frames, p)
                T = c + k + max(d, e)
                T1 = T1 or T
                cells.append(f"{_dur(T)} {100 * T1 / (G * T):3.0f}%")
            print(f"{name:<40} {len(fw):>8} " + " ".join(f"{c:>13}" for c in cells)
                  + ("  guidance split only (KV cache per branch)" if causal else "  guidance split x SP (upper bound)"))
        print()


def _dur(s: float) -> str:
    return f"{s / 3600:.1f}h" if s >= 3600 else f"{s / 60:.1f}m" if s >= 60 else f"{s:.1f}s"


# -- validation against 1 and 2 Ray workers here ------------------------------------------------
def validate(p) -> None:
    import torch

    torch.set_num_threads(1)
    from dataclasses import replace

    from longvid_dist.config import ParallelConfig
    from longvid_dist.methods.recipes import get_recipe
    from longvid_dist.models.tiny import tiny_model_path
    from longvid_dist.models.wan import WanAdapter
    from longvid_dist.runtime import ray_executor as rx
    from longvid_dist.runtime.executor import LocalExecutor
    from longvid_dist.sampling.planner import Planner
    from longvid_dist.sampling.rng import keyed_generator, noise_generator

    frames, hw, steps = 241, 64, 6
    src = str(tiny_model_path("tiny-wan"))
    adapter = WanAdapter.load(src, device="cpu", dtype=torch.float32)
    space = adapter.space
    F = space.latent_shape(frames, hw, hw)[1]
    rx.connect(None, quiet=True, num_cpus=3)
    exs = {"local": LocalExecutor(adapter)}
    exs["ray1"] = rx.RayExecutor("wan", src, ParallelConfig(workers=1), device="cpu", dtype="float32")
    exs["ray2"] = rx.RayExecutor("wan", src, ParallelConfig(workers=2), device="cpu", dtype="float32")
    try:
        for ex in exs.values():
            ex.set_conditions({"main": ("a red car", "blurry")}, 5.0)
        pl = Planner(get_recipe("glc"), F, NATIVE, lambda purpose, step: keyed_generator(0, purpose, step))
        ex0 = exs["local"]
        ex0.install(pl.patches())
        lat = pl.init_noise(space, noise_generator(0), frames, hw, hw)
        sched = space.make_scheduler(steps)
        plans = [pl.plan(i, float(t)) for i, t in enumerate(sched.timesteps)]
        # inputs measured here: one native window on the local executor, a Ray round trip
        win = [replace(w, timestep=torch.tensor(900.0)) for w in plans[0].windows if len(w.frames) == NATIVE][:1]
        for ex in exs.values():
            ex.install(pl.patches())
            ex.predict(lat, win)  # warm
        ts = []
        for _ in range(5):
            t0 = time.perf_counter()
            ex0.predict(lat, win)
            ts.append(time.perf_counter() - t0)
        p.window_s = statistics.median(ts)
        w1 = exs["ray1"].workers[0]
        rt = []
        for _ in range(20):
            t0 = time.perf_counter()
            rx.ray.get(w1.pid.remote())
            rt.append(time.perf_counter() - t0)
        p.overhead_s = statistics.median(rt)
        p.gpus_per_node = 8
        frame_bytes = lat[:, 0].numel() * 4
        measured: dict = {n: [] for n in exs}
        for rnd in range(3):
            for n in (list(exs)[rnd % 3:] + list(exs)[:rnd % 3]):
                for i, plan in enumerate(plans):
                    wins = [replace(w, timestep=sched.timesteps[i]) for w in plan.windows]
                    t0 = time.perf_counter()
                    plan.merge(exs[n].predict(lat, wins))
                    measured[n].append(time.perf_counter() - t0)
        print(f"measured inputs (tiny-wan, {frames}f {hw}x{hw}, latent {list(lat.shape)}): window "
              f"{p.window_s * 1e3:.2f} ms, Ray round trip {p.overhead_s * 1e3:.2f} ms, memcpy {p.mem_gbps:.1f} GB/s, "
              f"merge {p.merge_ns:.2f} ns/B")
        print(f"{'':8}{'predicted ms/step':>19}{'measured (median)':>19}{'error':>8}   (compute + coordinator)")
        for n, G in (("local", 1), ("ray1", 1), ("ray2", 2)):
            pred = []
            for plan in plans:
                c = compute_time(plan.windows, G, p.window_s)
                k = 0.0 if n == "local" else coordinator_time(plan.windows, G, frame_bytes, F, p)[0]
                k += sum(len(w.frames) for w in plan.windows) * frame_bytes * p.merge_ns * 1e-9 if n == "local" else 0
                pred.append(c + k)
            pm, mm = statistics.fmean(pred), statistics.median(measured[n])
            print(f"{n:<8}{pm * 1e3:>19.1f}{mm * 1e3:>19.1f}{100 * (pm - mm) / mm:>7.0f}%")
        print("(2 workers share this box's 2 shared cores with the driver and Ray; the model assumes a device each)")
    finally:
        for ex in exs.values():
            ex.close()
        rx.shutdown()


def main(argv=None) -> int:
    p = _args(argv)
    p.mem_gbps = p.mem_gbps or measure_memcpy()
    p.merge_ns = p.merge_ns if p.merge_ns is not None else measure_merge()
    if p.validate:
        validate(p)
        return 0
    defaults_from_table(p)
    table(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
