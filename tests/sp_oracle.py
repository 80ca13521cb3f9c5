"""Sequence-parallel forwards of a tiny model's transformer in ``ulysses * ring`` gloo (or NCCL) processes
(spawned, no Ray), for tests/test_sequence_parallel.py: every case's output on rank 0. Tiny Wan
by default; LTX, CogVideoX and HunyuanVideo (joint text-video attention: video tokens split,
text replicated) on their own grids."""

from __future__ import annotations

import os
import sys

import torch

PROFILE = os.path.join(os.path.dirname(__file__), "..", "longvid_dist", "profiles", "tiny-wan.json")
"""tiny-wan's FreeLOC profile (every tiny model has 2 layers; no profile ships for the others)."""
GRID = (16, 7, 6, 10)  # [C, F, h, w]: 7 x 3 x 5 = 105 tokens, divisible by neither 2 nor 4
GRIDS = {  # per tiny model: 5 x 3 x 5 = 75 video tokens, divisible by neither 2 nor 4
    "tiny-wan": GRID,
    "tiny-ltx": (8, 5, 3, 5),  # patch 1x1x1
    "tiny-cogvideox": (4, 5, 6, 10),  # patch 2x2
    "tiny-hunyuan": (4, 5, 6, 10),  # patch 1x2x2
    "tiny-skyreels-df": (16, 9, 6, 6),  # patch 1x2x2: 9 x 3 x 3 = 81 tokens, odd
}
DF_CASES = {  # diffusion forcing: a timestep per latent frame, under a block-causal mask of N frames
    "df-full": 1,  # causal_block_size 1: no mask (the stock model's full attention)
    "df-block3": 3,  # three blocks of 3 frames
    "df-block1x9": 9,  # one block: the mask is all visible, but present
}
CASES = {
    "plain": [],
    "abam": [{"kind": "abam", "lam": 0.3}],
    "freelong": [{"kind": "freelong", "band": 2}],
    "freespec": [{"kind": "freespec", "band": 2, "k": 3}],
    "freeloc": [{"kind": "freeloc", "W1": 2, "W2": 4, "D1": 1, "D2": 3, "profile": PROFILE}],
    "composite": [{"kind": "abam", "layers": [0]},
                  {"kind": "freeloc", "layers": [1], "W1": 2, "W2": 4, "profile": PROFILE}],
}


def load(model: str, device: str = "cpu"):
    """The tiny ``model`` through its family's adapter."""
    from longvid_dist.models.registry import adapter_class, resolve_model
    from longvid_dist.models.tiny import tiny_model_path

    path = str(tiny_model_path(model))
    return adapter_class(resolve_model(path).family).load(path, device=device)


def patches(case: str, frames: int = GRID[1]) -> dict | None:
    """Plain-data patches of a case, resolved as a render resolves them."""
    from longvid_dist.methods.recipes import recipe_from_dict
    from longvid_dist.sampling.planner import Planner

    if not CASES[case]:
        return None
    plan = "direct" if case not in ("abam", "composite") else {"kind": "sliding", "window": 4, "stride": 2}
    attention = CASES[case] if len(CASES[case]) > 1 else CASES[case][0]
    r = recipe_from_dict({"name": case, "plan": plan, "attention": attention})
    return Planner(r, frames, 21, lambda p, s: torch.Generator()).patches()


def run_cases(adapter, model: str = "tiny-wan") -> dict[str, torch.Tensor]:
    """Every case's guided prediction (for ABAM: the follower's, after its anchor)."""
    from longvid_dist.methods.registry import build_patches

    grid = GRIDS[model]
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(*grid, generator=g), torch.randn(*grid, generator=g)
    x, y = x.to(adapter.device), y.to(adapter.device)  # drawn on the CPU: the same values everywhere
    cond = adapter.encode_prompt("a red car", "blurry", 5.0)
    t = torch.tensor(700)
    out = {}
    if model == "tiny-skyreels-df":  # per-frame noise levels, as an asynchronous DF iteration has them
        t = torch.linspace(100, 900, grid[1]).round()
        return {case: adapter.predict(x, t, cond, causal_block=block) for case, block in DF_CASES.items()}
    for case in CASES:
        p = patches(case, grid[1])
        adapter.install(*build_patches(p, adapter.model_info()), key=repr(p))
        adapter.begin_step()
        if case in ("abam", "composite"):
            adapter.predict(x, t, cond, role="anchor", anchor_key="a")
            out[case] = adapter.predict(y, t, cond, role="follow", anchor_key="a")
        else:
            out[case] = adapter.predict(x, t, cond)
    adapter.install(None, None)
    return out


def _rank(rank: int, world: int, ulysses: int, ring: int, store: str, path: str, model: str,
          backend: str = "gloo") -> None:
    torch.set_num_threads(1)
    import torch.distributed as dist

    from longvid_dist.models.parallel import build_groups

    device = "cpu"
    if backend == "nccl":  # one GPU per rank
        torch.cuda.set_device(rank)
        device = f"cuda:{rank}"
    dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        adapter = load(model, device)
        adapter.enable_sequence_parallel(build_groups(rank, world, ulysses, ring))
        out = run_cases(adapter, model)
        if rank == 0:
            torch.save(out, path)
        dist.barrier()  # no rank tears the world down while a peer may still be sending to it
    finally:
        dist.destroy_process_group()
    # Gloo's background threads can abort the process during interpreter finalization ("terminate
    # called without an active exception", seen once in CI); the result is saved: leave without it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def split_forward(ulysses: int, ring: int, path: str, model: str = "tiny-wan",
                  backend: str = "gloo") -> dict[str, torch.Tensor]:
    """Run every case on ``model`` in ``ulysses * ring`` processes (``backend`` nccl: one GPU
    each); rank 0's outputs, on the CPU."""
    import torch.multiprocessing as mp

    # A file store, not a TCP port picked here and bound later: nothing else can take it meanwhile.
    store = f"{path}.store"
    if os.path.exists(store):
        os.unlink(store)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_rank, args=(ulysses * ring, ulysses, ring, store, path, model, backend), nprocs=ulysses * ring)
    return torch.load(path, map_location="cpu")
