"""Sequence-parallel forwards of the tiny Wan transformer in ``ulysses * ring`` gloo processes
(spawned, no Ray), for tests/test_sequence_parallel.py: every case's output on rank 0."""

from __future__ import annotations

import os

import torch

GRID = (16, 7, 6, 10)  # [C, F, h, w]: 7 x 3 x 5 = 105 tokens, divisible by neither 2 nor 4
CASES = {
    "plain": [],
    "abam": [{"kind": "abam", "lam": 0.3}],
    "freelong": [{"kind": "freelong", "band": 2}],
    "freespec": [{"kind": "freespec", "band": 2, "k": 3}],
    "freeloc": [{"kind": "freeloc", "W1": 2, "W2": 4, "D1": 1, "D2": 3}],
    "composite": [{"kind": "abam", "layers": [0]}, {"kind": "freeloc", "layers": [1], "W1": 2, "W2": 4}],
}


def patches(case: str) -> dict | None:
    """Plain-data patches of a case, resolved as a render resolves them."""
    from longvid_dist.methods.recipes import recipe_from_dict
    from longvid_dist.sampling.planner import Planner

    if not CASES[case]:
        return None
    plan = "direct" if case not in ("abam", "composite") else {"kind": "sliding", "window": 4, "stride": 2}
    attention = CASES[case] if len(CASES[case]) > 1 else CASES[case][0]
    r = recipe_from_dict({"name": case, "plan": plan, "attention": attention})
    return Planner(r, GRID[1], 21, lambda p, s: torch.Generator()).patches()


def run_cases(adapter) -> dict[str, torch.Tensor]:
    """Every case's guided prediction (for ABAM: the follower's, after its anchor)."""
    from longvid_dist.methods.registry import build_patches

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(*GRID, generator=g), torch.randn(*GRID, generator=g)
    x, y = x.to(adapter.device), y.to(adapter.device)  # drawn on the CPU: the same values everywhere
    cond = adapter.encode_prompt("a red car", "blurry", 5.0)
    t = torch.tensor(700)
    out = {}
    for case in CASES:
        p = patches(case)
        adapter.install(*build_patches(p, adapter.model_info()), key=repr(p))
        adapter.begin_step()
        if case in ("abam", "composite"):
            adapter.predict(x, t, cond, role="anchor", anchor_key="a")
            out[case] = adapter.predict(y, t, cond, role="follow", anchor_key="a")
        else:
            out[case] = adapter.predict(x, t, cond)
    adapter.install(None, None)
    return out


def _rank(rank: int, world: int, ulysses: int, ring: int, port: int, path: str, backend: str = "gloo") -> None:
    torch.set_num_threads(1)
    import torch.distributed as dist

    from longvid_dist.models.parallel import build_groups
    from longvid_dist.models.tiny import tiny_model_path
    from longvid_dist.models.wan import WanAdapter

    device = "cpu"
    if backend == "nccl":  # one GPU per rank
        torch.cuda.set_device(rank)
        device = f"cuda:{rank}"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        adapter = WanAdapter.load(str(tiny_model_path("tiny-wan")), device=device)
        adapter.enable_sequence_parallel(build_groups(rank, world, ulysses, ring))
        out = run_cases(adapter)
        if rank == 0:
            torch.save({k: v.cpu() for k, v in out.items()}, path)
    finally:
        dist.destroy_process_group()


def split_forward(ulysses: int, ring: int, path: str, backend: str = "gloo") -> dict[str, torch.Tensor]:
    """Run every case in ``ulysses * ring`` processes (``backend`` nccl: one GPU each); rank 0's
    outputs, on the CPU."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_rank, args=(ulysses * ring, ulysses, ring, port, path, backend), nprocs=ulysses * ring)
    return torch.load(path)
