"""Sequence parallelism inside one long window, measured in one run on this machine.

    .venv/bin/python benchmarks/bench_sp.py [--frames 121] [--size 64] [--dim 128] [--repeats 3]

One long single window (a ``direct`` forward over every latent frame) of a random-weight Wan
transformer wider than ``tiny-wan`` (``--dim`` = heads x head dim, 2 layers; text encoder and
VAE are tiny-wan's, unused here) runs unsplit in one process and split in two gloo processes
(``--ulysses-degree 2``), each process with one torch thread:

(a) per-rank peak memory of the forward: the highest resident set size during the forward (sampled
    every millisecond) over the size before it, split rank over unsplit process. Target <= 0.6x.
(b) all-to-all bytes per step: bytes each rank sends to the others through the collectives
    (counted by wrapping ``torch.distributed``'s all_to_all_single / all_gather in this script),
    over the analytic minimum for Ulysses: per self-attention layer q, k, v and the output
    (4 tensors of ``S/U x H x D``) exchanged with the U-1 peers, plus the final gather of the
    output tokens. Padding to a multiple of the group counts against us. Target <= 1.1x.
(c) forward time U=2 over U=1, next to the machine's measured capacity for two CPU-bound
    processes (two matmul loops at once vs one), which bounds what 2 ranks can gain here.

The split forward is checked against the unsplit one (max abs difference). Prints ratios only;
never asserts on time or memory (shared, noisy 2-core machine) and exits 0. With a CUDA GPU the
same script runs NCCL when ``--device cuda`` is given (one process per GPU).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402


def _args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=121, help="pixel frames of the window (4k+1)")
    p.add_argument("--size", type=int, default=64, help="square frame size in pixels (multiple of 16)")
    p.add_argument("--dim", type=int, default=128, help="transformer width = heads x head dim (heads = dim / 32)")
    p.add_argument("--repeats", type=int, default=3, help="timed forwards per configuration (median)")
    p.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, one GPU per rank)")
    return p.parse_args(argv)


def _adapter(dim: int, device: str):
    """A WanAdapter over tiny-wan's pipeline with a wider random transformer (same seed everywhere)."""
    import torch
    from diffusers import WanTransformer3DModel

    from longvid_dist.models.tiny import build_tiny_wan
    from longvid_dist.models.wan import WanAdapter

    pipe = build_tiny_wan(0)
    torch.manual_seed(1)
    pipe.transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=dim // 32, attention_head_dim=32, in_channels=16,
        out_channels=16, text_dim=32, freq_dim=32, ffn_dim=2 * dim, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=1024).eval()
    pipe.to(device)
    return WanAdapter(pipe, device)


def _inputs(a):
    import torch

    latent_frames = (a.frames - 1) // 4 + 1
    x = torch.randn(16, latent_frames, a.size // 8, a.size // 8, generator=torch.Generator().manual_seed(0))
    return x, torch.tensor(500)


class _PeakRSS:
    """Highest resident set size of this process while the ``with`` block runs, sampled every
    millisecond by a thread, over the size when it started."""

    def __enter__(self):
        import psutil

        self.proc = psutil.Process()
        self.base = self.peak = self.proc.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.001)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.base


def _forward(adapter, x, t, repeats):
    """(median seconds, median peak RSS growth in bytes, output) of ``repeats`` guided forwards."""
    import gc

    import torch

    cond = adapter.encode_prompt("a red car drives through a city at night", "blurry", 5.0)
    times, growth, out = [], [], None
    for _ in range(repeats):
        out = None
        gc.collect()
        with _PeakRSS() as mem:
            t0 = time.perf_counter()
            with torch.no_grad():
                out = adapter.predict(x, t, cond)
            times.append(time.perf_counter() - t0)
        growth.append(mem.growth)
    return statistics.median(times), statistics.median(growth), out


class _Bytes:
    """Counts bytes this rank sends to other ranks through all_to_all_single and all_gather."""

    def __init__(self):
        import torch.distributed as dist

        self.sent = 0
        self.dist = dist
        self._a2a, self._ag = dist.all_to_all_single, dist.all_gather

        def a2a(out, inp, *args, group=None, **kw):
            n = dist.get_world_size(group)
            self.sent += inp.numel() * inp.element_size() * (n - 1) // n
            return self._a2a(out, inp, *args, group=group, **kw)

        def ag(outs, inp, *args, group=None, **kw):
            self.sent += inp.numel() * inp.element_size() * (dist.get_world_size(group) - 1)
            return self._ag(outs, inp, *args, group=group, **kw)

        dist.all_to_all_single, dist.all_gather = a2a, ag


def _rank(rank, world, port, a, path):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    from longvid_dist.models.parallel import build_groups

    backend = "nccl" if a.device == "cuda" else "gloo"
    device = f"cuda:{rank}" if a.device == "cuda" else "cpu"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    adapter = _adapter(a.dim, device)
    adapter.enable_sequence_parallel(build_groups(rank, world, world, 1))
    counter = _Bytes()
    x, t = _inputs(a)
    _forward(adapter, x, t, 1)  # warm-up: allocator and collectives
    counter.sent = 0
    secs, mem, out = _forward(adapter, x, t, a.repeats)
    torch.save({"secs": secs, "mem": mem, "sent": counter.sent // a.repeats, "out": out.cpu()}, f"{path}.{rank}")
    dist.destroy_process_group()


def _capacity(seconds: float = 1.5) -> float:
    """Throughput of two CPU-bound processes at once over one (matmul loops, one thread each)."""
    import subprocess

    code = ("import time,torch;torch.set_num_threads(1);a=torch.randn(256,256);n=0;t=time.time()\n"
            f"while time.time()-t<{seconds}: a@a; n+=1\nprint(n)")

    def run(k):
        ps = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(k)]
        return sum(int(p.communicate()[0]) for p in ps)

    return run(2) / run(1)


def main(argv=None) -> int:
    a = _args(argv)
    os.environ.setdefault("LONGVID_CACHE", os.path.join(tempfile.gettempdir(), "longvid-test-cache"))
    import torch
    import torch.multiprocessing as mp

    torch.set_num_threads(1)
    x, t = _inputs(a)
    heads = a.dim // 32
    F, hw = x.shape[1], (a.size // 16) ** 2
    S = F * hw
    print(f"bench_sp: window of {a.frames} frames at {a.size}x{a.size} = {F} latent frames x {hw} tokens = {S} "
          f"tokens; transformer dim {a.dim} ({heads} heads x 32), 2 layers; device {a.device}; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    adapter = _adapter(a.dim, "cuda:0" if a.device == "cuda" else "cpu")
    _forward(adapter, x, t, 1)
    secs1, mem1, ref = _forward(adapter, x, t, a.repeats)
    del adapter

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = os.path.join(tempfile.mkdtemp(prefix="bench-sp-"), "r")
    mp.spawn(_rank, args=(2, port, a, path), nprocs=2)
    ranks = [torch.load(f"{path}.{r}") for r in range(2)]
    err = (ranks[0]["out"] - ref.cpu()).abs().max().item()
    cap = _capacity()

    u, cfg, layers, out_ch = 2, 2, 2, 16 * 4  # CFG: two forwards; proj_out channels = C x patch 1x2x2
    s_pad = -(-S // u) * u
    per_layer = 4 * (s_pad // u) * a.dim * 4 * (u - 1) // u  # q, k, v in; output back (fp32)
    gather = (s_pad // u) * out_ch * 4 * (u - 1)  # final all-gather of the output tokens
    analytic = cfg * (layers * per_layer + gather)
    sent = max(r["sent"] for r in ranks)
    mem2 = max(r["mem"] for r in ranks)
    secs2 = max(r["secs"] for r in ranks)
    print(f"split forward vs unsplit: max abs difference {err:.2e}")
    rows = [("(a) per-rank peak memory U=2 / U=1", mem2 / max(mem1, 1), "<= 0.60", mem2 / max(mem1, 1) <= 0.6,
             f"{mem2 / 2**20:.1f} MiB vs {mem1 / 2**20:.1f} MiB of peak RSS growth during the forward"),
            ("(b) all-to-all bytes / analytic minimum", sent / analytic, "<= 1.10", sent / analytic <= 1.1,
             f"{sent / 2**20:.2f} MiB sent per rank per guided forward; minimum {analytic / 2**20:.2f} MiB"),
            ("(c) forward time U=2 / U=1", secs2 / secs1, "(info)", None,
             f"{secs2:.2f}s vs {secs1:.2f}s; this machine runs 2 CPU-bound processes at {cap:.2f}x one, so the "
             f"best U=2 can do here is {1 / cap:.2f}x")]
    print("\n== summary (ratios measured in this run only; printed, never asserted)")
    for name, val, target, ok, note in rows:
        verdict = "" if ok is None else ("PASS" if ok else "MISS")
        print(f"{name:<42} {val:6.2f}x  target {target:<8} {verdict}")
        print(f"    {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
