"""Distributed decode speed-up, measured in one run on this machine.

    .venv/bin/python benchmarks/bench_decode.py [--frames 961] [--size 64] [--workers 2] [--repeats 2]

Decodes one random latent of ``--frames`` pixel frames (``tiny-wan``'s VAE) three ways, each
to uint8 pixels consumed in order as a render consumes them: in this process (the local
executor's streaming decode), and with ``RayExecutor.decode`` on 1 and on ``--workers`` Ray
workers (one torch thread each). Each later worker span is warmed up on the VAE's temporal
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
    p.add_argument("--repeats", type=int, default=2)
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

    def timed(ex):
        times, out = [], None
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            out = np.concatenate(list(ex.decode(z, a.chunk)))
            times.append(time.perf_counter() - t0)
        return statistics.median(times), out

    local = LocalExecutor(WanAdapter.load(src))
    t_local, ref = timed(local)
    connect(None, quiet=True)
    try:
        rows = []
        for n in (1, a.workers):
            ex = RayExecutor("wan", src, ParallelConfig(workers=n))
            try:
                ctx = local.worker.decode_context()
                ex.decode(z[:, :2], 1)  # warm the actors' VAE
                t, out = timed(ex)
            finally:
                ex.close()
            rows.append((n, t, np.array_equal(out, ref), decode_spans(F, n, ctx)))
    finally:
        shutdown()
    cap = _capacity()
    print(f"bench_decode: {a.frames} frames ({F} latent) at {a.size}x{a.size}, chunk {a.chunk}, VAE receptive field "
          f"{ctx} latent frames; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    print(f"local decode {t_local:.2f}s")
    for n, t, same, spans in rows:
        print(f"ray {n} worker(s): {t:.2f}s, speed-up vs local {t_local / t:.2f}x, equal to local: {same}, spans {spans}")
    n, t = rows[-1][0], rows[-1][1]
    work = max(e - s + (ctx if s else 0) for s, e in rows[-1][3])
    print("\n== summary (ratios measured in this run only; printed, never asserted)")
    print(f"decode speed-up {n} workers / local at {a.frames} frames: {t_local / t:.2f}x  target >= 1.30  "
          f"{'PASS' if t_local / t >= 1.3 else 'MISS'}")
    print(f"    this machine runs 2 CPU-bound processes at {cap:.2f}x one; the spans' work bound is "
          f"{F / work:.2f}x (largest span {work} of {F} latent frames, warm-up included)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())
