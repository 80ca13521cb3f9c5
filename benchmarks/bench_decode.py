"""Distributed decode speed-up, measured in one run on this machine.

    .venv/bin/python benchmarks/bench_decode.py [--frames 961] [--size 64] [--workers 2] [--repeats 2]

Decodes one random latent of ``--frames`` pixel frames (``tiny-wan``'s VAE) three ways, each
to uint8 pixels consumed in order as a render consumes them: in this process (the local
executor's streaming decode), and with ``RayExecutor.decode`` on 1 and on ``--workers`` Ray
workers (one torch thread each), interleaved over ``--repeats`` rounds (who goes first
rotates), medians compared. Each later worker span is warmed up on the VAE's temporal
receptive field and spans are sized so every worker's work is equal (``decode_spans``); the
outputs are checked equal to the local decode. Target: >= 1.3x at 961 frames with 2 workers,
stated next to the machine's capacity for two CPU-bound processes (two matmul loops at once
vs one), which bounds what 2 workers can reach here. Prints ratios only; never asserts.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=961)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds (local, 1 worker, N workers)")
    p.add_argument("--chunk", type=int, default=4, help="decode chunk (latent frames)")
    a = p.parse_args(argv)
    os.environ.setdefault("LONGVID_CACHE", os.path.join(tempfile.gettempdir(), "longvid-test-cache"))
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from bench_sp import _capacity  # noqa: E402  (same directory)

    from longvid_dist.config import ParallelConfig
    from longvid_dist.models.tiny import tiny_model_path
    from longvid_dist.models.wan import WanAdapter
    from longvid_dist.runtime.executor import LocalExecutor
    from longvid_dist.runtime.ray_executor import RayExecutor, connect, decode_spans, shutdown

    src = str(tiny_model_path("tiny-wan"))
    F = (a.frames - 1) // 4 + 1
    z = torch.randn(16, F, a.size // 8, a.size // 8, generator=torch.Generator().manual_seed(0))

    def once(ex):
        t0 = time.perf_counter()
        out = np.concatenate(list(ex.decode(z, a.chunk)))
        return time.perf_counter() - t0, out

    local = LocalExecutor(WanAdapter.load(src))
    ref = once(local)[1]  # warm
    connect(None, quiet=True, num_cpus=1 + a.workers)  # logical CPUs: one per actor of both executors
    exs = {"local": local}
    try:
        for n in (1, a.workers):
            exs[f"ray{n}"] = ex = RayExecutor("wan", src, ParallelConfig(workers=n))
            ex.decode(z[:, :2], 1)  # warm the actors' VAE
        ctx = local.worker.decode_context()
        names = list(exs)
        times = {k: [] for k in names}
        same = {k: True for k in names}
        for r in range(a.repeats):  # interleaved, rotating who goes first
            line = []
            for k in names[r % len(names):] + names[:r % len(names)]:
                t, out = once(exs[k])
                times[k].append(t)
                same[k] = same[k] and np.array_equal(out, ref)
                line.append(f"{k} {t:.2f}s")
            print(f"  round {r + 1}/{a.repeats}: " + "  ".join(line), flush=True)
    finally:
        for k, ex in exs.items():
            if k != "local":
                ex.close()
        shutdown()
    cap = _capacity()
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"bench_decode: {a.frames} frames ({F} latent) at {a.size}x{a.size}, chunk {a.chunk}, VAE receptive field "
          f"{ctx} latent frames; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; medians of {a.repeats} "
          f"interleaved rounds")
    print(f"local decode {med['local']:.2f}s")
    for n in (1, a.workers):
        k = f"ray{n}"
        pair = statistics.median([x / y for x, y in zip(times["local"], times[k])])
        print(f"ray {n} worker(s): {med[k]:.2f}s, speed-up vs local {med['local'] / med[k]:.2f}x (median of per-round "
              f"ratios {pair:.2f}x), equal to local: {same[k]}, spans {decode_spans(F, n, ctx)}")
    n = a.workers
    speed = med["local"] / med[f"ray{n}"]
    work = max(e - s + (ctx if s else 0) for s, e in decode_spans(F, n, ctx))
    print("\n== summary (ratios measured in this run only; printed, never asserted)")
    print(f"decode speed-up {n} workers / local at {a.frames} frames: {speed:.2f}x  target >= 1.30  "
          f"{'PASS' if speed >= 1.3 else 'MISS'}")
    print(f"    this machine runs 2 CPU-bound processes at {cap:.2f}x one; the spans' work bound is "
          f"{F / work:.2f}x (largest span {work} of {F} latent frames, warm-up included)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())
