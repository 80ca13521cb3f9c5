"""FreeSpec's cost at real Wan2.1-1.3B shapes on this CPU, measured in one run.

    .venv/bin/python benchmarks/bench_freespec.py [--quick] [--threads N] [--repeats N]

Shapes (default): one window of 21 latent frames x 30 x 52 tokens (480x832 pixels, 81 frames)
= 32760 tokens, 1536 channels = 12 heads x 128, float32, all CPU cores.

(1) FreeSpec fusion vs the attention it fuses: the global branch (``sdpa`` over all 32760
    tokens, 12 heads) and the local branch (``banded_attention``, band 8) are each timed ONCE
    (one full sdpa is ~6.6e12 FLOP, about a minute on a 2-core CPU; ``--attn-repeats`` for
    more), the fusion (``freespec_fuse``, Gram method, tau 0.9, on the two real branch
    outputs as ``[32760, 1536]``) as the median (and min) of ``--repeats``; also at a fixed
    k = c/4, the worst case for its thin matmuls. Target: fusion <= 15% of global + local
    attention.
(2) Gram vs randomized vs full SVD (``torch.linalg.svd(full_matrices=False)``) on the global
    branch output ``[32760, 1536]`` from (1), timed round-robin for ``--repeats`` rounds
    (medians; speed-ups are medians of per-round ratios): times and the projector distance
    ``||P - P_exact||_2`` of the tau = 0.9 subspace against the full SVD's.
(3) FreeLOC TSA sparse vs dense attention: ``tsa_attention`` (defaults D1 8, D2 24, Ds auto)
    timed like the dense sdpa of (1), and ``tsa_density`` (fraction of the dense (query, key)
    pairs kept = FLOP ratio), from ``longvid_dist.methods.freeloc`` when that module exists.

Inputs are synthetic, not Wan activations: hidden states ``X [S, 1536]`` with a power-law
channel spectrum (``s_i ~ (i + 1)^-decay``, ``--decay`` default 1, random orthonormal bases),
per-head Q/K/V = X times a random projection, Q/K normalised so the attention logits have standard deviation ~2.
Prints a table; asserts nothing (a shared, noisy box is no place for timing gates).
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

import torch  # noqa: E402

from longvid_dist.methods.lse_attention import banded_attention  # noqa: E402
from longvid_dist.models.hooks import AttnContext, sdpa  # noqa: E402
from longvid_dist.methods.spectral import (_subspace, energy_rank, freespec_fuse,  # noqa: E402
                                           subspace_distance)

TARGET = 0.15


def timed(fn, repeats: int = 1, spread: dict | None = None, key: str = ""):
    """(median seconds, last result) over ``repeats`` calls; ``spread[key]`` gets the min."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    if spread is not None:
        spread[key] = min(times)
    return statistics.median(times), out


def make_qkv(frames: int, h: int, w: int, heads: int, dim: int, decay: float = 1.0, seed: int = 0):
    """Synthetic Q, K, V ``[1, S, heads, dim]`` from hidden states with a power-law spectrum."""
    g = torch.Generator().manual_seed(seed)
    s_tok, c = frames * h * w, heads * dim
    spec = torch.arange(1, c + 1, dtype=torch.float32) ** -decay  # power-law channel spectrum
    basis = torch.linalg.qr(torch.randn(c, c, generator=g)).Q
    x = torch.randn(s_tok, c, generator=g) @ (spec.view(-1, 1) * basis.mT)  # [S, c]
    out = []
    for name in ("q", "k", "v"):
        proj = torch.randn(c, c, generator=g) / c ** 0.5
        t = (x @ proj).view(1, s_tok, heads, dim)  # [S, c] -> [1, S, H, D]
        t = t / t.pow(2).mean(dim=(1, 3), keepdim=True).sqrt()  # unit RMS per head
        if name == "q":
            t = 2.0 * t  # logits q.k/sqrt(D) with std ~2: attention neither uniform nor one-hot
        out.append(t.contiguous())
        del proj
    return out


def band_fraction(frames: int, band: int) -> float:
    """Fraction of the dense (query, key) pairs the banded local branch computes."""
    pairs = sum(min(frames, i + band + 1) - max(0, i - band) for i in range(frames))
    return pairs / frames ** 2


def call_tsa(fn, q, k, v, grid):
    """Call ``fn`` with the arguments its signature names (the module is written elsewhere)."""
    frames, h, w = grid
    known = {"q": q, "k": k, "v": v, "query": q, "key": k, "value": v, "grid": grid,
             "tokens_per_frame": h * w, "frames": frames, "num_frames": frames, "height": h, "width": w,
             "h": h, "w": w, "ctx": AttnContext(grid=grid)}
    args, kwargs = [], {}
    for p in inspect.signature(fn).parameters.values():
        if p.name in known:
            if p.kind == p.POSITIONAL_ONLY:
                args.append(known[p.name])
            else:
                kwargs[p.name] = known[p.name]
        elif p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"don't know what to pass for {p.name!r} of {fn.__name__}{inspect.signature(fn)}")
    return fn(*args, **kwargs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 21 x 10 x 13 tokens (< 1 min)")
    ap.add_argument("--frames", type=int, default=21, help="latent frames, default 21")
    ap.add_argument("--height", type=int, default=30, help="token rows per frame, default 30")
    ap.add_argument("--width", type=int, default=52, help="token columns per frame, default 52")
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--band", type=int, default=8, help="local branch band in frames, default 8")
    ap.add_argument("--tau", type=float, default=0.9)
    ap.add_argument("--decay", type=float, default=1.0,
                    help="synthetic hidden-state spectrum s_i ~ (i+1)^-decay, default 1")
    ap.add_argument("--repeats", type=int, default=None,
                    help="runs of the fusion / Gram / randomized (default 3, --quick 2)")
    ap.add_argument("--attn-repeats", type=int, default=None,
                    help="runs of each attention branch and of TSA (default 1, --quick 2)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads, default all cores")
    a = ap.parse_args()
    if a.quick:
        a.height, a.width = 10, 13
    attn_rep = a.attn_repeats or (2 if a.quick else 1)
    a.repeats = a.repeats or (2 if a.quick else 3)
    start = time.perf_counter()
    torch.set_num_threads(a.threads)
    f, h, w, nh, d = a.frames, a.height, a.width, a.heads, a.head_dim
    s_tok, c = f * h * w, nh * d
    grid = (f, h, w)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32; window {f} x {h} x {w} = "
          f"{s_tok} tokens, {nh} heads x {d} = {c} channels, band {a.band}, tau {a.tau}"
          f"{' (--quick)' if a.quick else ''}")
    rows: list[tuple[str, str]] = []

    # warm-up: lazy init of the kernels (the first c x c eigh alone costs seconds)
    wq = torch.randn(1, 3 * 16, 2, 8)
    banded_attention(wq, wq, wq, 16, 1)
    for method in ("gram", "randomized"):
        freespec_fuse(torch.randn(2 * c, c), torch.randn(2 * c, c), a.tau, method=method)
    torch.linalg.svd(torch.randn(2 * c, c), full_matrices=False)

    t0 = time.perf_counter()
    q, k, v = make_qkv(f, h, w, nh, d, a.decay)
    print(f"inputs built in {time.perf_counter() - t0:.1f} s")

    # (1) attention branches and the fusion
    flops_dense = 4 * s_tok ** 2 * d * nh
    t_glob, g = timed(lambda: sdpa(q, k, v), attn_rep)
    print(f"global sdpa: {t_glob:.2f} s ({flops_dense / t_glob / 1e9:.0f} GFLOP/s, {attn_rep} run(s))")
    t_loc, loc = timed(lambda: banded_attention(q, k, v, h * w, a.band), attn_rep)
    print(f"local banded (band {a.band}, {band_fraction(f, a.band):.3f} of dense pairs): {t_loc:.2f} s")
    gm = g[0].reshape(s_tok, c)  # [1, S, H, D] -> [S, H*D]
    lm = loc[0].reshape(s_tok, c)
    mins: dict[str, float] = {}
    t_fuse, fused = timed(lambda: freespec_fuse(gm, lm, a.tau, method="gram"), a.repeats, mins, "fuse")
    k_big = c // 4  # worst case for the two thin matmuls: a rank far above what tau picks here
    t_fuse_big, _ = timed(lambda: freespec_fuse(gm, lm, k=k_big, method="gram"), a.repeats, mins, "fuse_big")
    v_g, s_g = _subspace(gm, tau=a.tau, method="gram")
    k_g = v_g.shape[1]
    k_l = energy_rank(_subspace(lm, tau=a.tau, method="gram")[1], a.tau)
    ratio = t_fuse / (t_glob + t_loc)
    verdict = "PASS" if ratio <= TARGET else "MISS"
    note = " (--quick: the c x c eigh is a fixed cost, so this ratio says nothing at full size)" if a.quick else ""
    print(f"fusion (gram, k={k_g}): {t_fuse:.3f} s = {100 * ratio:.1f}% of attention -> {verdict}{note}")
    big_pct = 100 * t_fuse_big / (t_glob + t_loc)
    print(f"fusion (gram, fixed k={k_big}): {t_fuse_big:.3f} s = {big_pct:.1f}% of attention")
    rows += [("global sdpa [s]", f"{t_glob:.2f} ({attn_rep} run(s))"),
             ("local banded [s]", f"{t_loc:.2f} ({attn_rep} run(s))"),
             ("fusion gram, tau [s]", f"{t_fuse:.3f} (min {mins['fuse']:.3f})"),
             ("fusion / attention", f"{100 * ratio:.1f}% (target <= {100 * TARGET:.0f}%) {verdict}"),
             (f"fusion gram, k={k_big} [s]", f"{t_fuse_big:.3f} (min {mins['fuse_big']:.3f}) = "
                                          f"{big_pct:.1f}% of attention"),
             (f"k(tau={a.tau}) global / local", f"{k_g} / {k_l} of {c}")]

    # (2) Gram vs randomized vs full SVD on the global branch output, interleaved round-robin
    #     (SVD, gram, randomized tau, randomized k) so drift on this shared box hits all alike
    k_ex = energy_rank(torch.linalg.svdvals(gm), a.tau)
    contenders = {
        "svd": lambda: torch.linalg.svd(gm, full_matrices=False),
        "gram": lambda: _subspace(gm, tau=a.tau, method="gram")[0],
        "rand": lambda: _subspace(gm, tau=a.tau, method="randomized")[0],
        "randk": lambda: _subspace(gm, k=k_ex, method="randomized")[0],
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    res = {}
    for _ in range(a.repeats):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            res[name] = fn()
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    speedup = {name: statistics.median(tsv / tx for tsv, tx in zip(times["svd"], times[name])) for name in times}
    _, s_ex, vh = res["svd"]
    v_ex = vh[:k_ex].mT
    v_gram, v_rand, v_randk = res["gram"], res["rand"], res["randk"]
    gap = float(s_ex[k_ex - 1] / s_ex[k_ex]) if 0 < k_ex < len(s_ex) else float("nan")
    e_gram = subspace_distance(v_gram, v_ex)
    e_rand = subspace_distance(v_rand, v_ex)
    e_randk = subspace_distance(v_randk, v_ex)
    e_gram_fixed = subspace_distance(_subspace(gm, k=k_ex, method="gram")[0], v_ex)
    print(f"full SVD {med['svd']:.2f} s (k={k_ex}, s_k/s_k+1 = {gap:.4f}); gram {med['gram']:.3f} s "
          f"(k={v_gram.shape[1]}, err {e_gram:.2e}); randomized tau {med['rand']:.3f} s (k={v_rand.shape[1]}, "
          f"err {e_rand:.2e}); randomized k={k_ex} {med['randk']:.3f} s (err {e_randk:.2e}); {a.repeats} rounds")
    rows += [("full SVD [s]", f"{med['svd']:.2f} (min {min(times['svd']):.2f}; k={k_ex}, s_k/s_k+1={gap:.4f})"),
             ("gram subspace [s]", f"{med['gram']:.3f} (min {min(times['gram']):.3f}), SVD/gram "
                                   f"{speedup['gram']:.1f}x, k={v_gram.shape[1]}, ||P-P_svd||={e_gram:.1e} "
                                   f"(at k_svd: {e_gram_fixed:.1e})"),
             ("randomized, tau [s]", f"{med['rand']:.3f} (min {min(times['rand']):.3f}), SVD/rand "
                                     f"{speedup['rand']:.1f}x, k={v_rand.shape[1]}, ||P-P_svd||={e_rand:.1e}"),
             (f"randomized, k={k_ex} [s]", f"{med['randk']:.3f} (min {min(times['randk']):.3f}), SVD/rand "
                                          f"{speedup['randk']:.1f}x, ||P-P_svd||={e_randk:.1e}")]
    del fused, vh, res

    # (3) FreeLOC TSA sparse vs dense
    try:
        from longvid_dist.methods.freeloc import tsa_attention, tsa_density
    except ImportError:
        print("TSA: longvid_dist.methods.freeloc not available")
        rows.append(("TSA sparse / dense", "longvid_dist.methods.freeloc not available"))
    else:
        try:
            t_tsa, tsa_out = timed(lambda: call_tsa(tsa_attention, q, k, v, grid), attn_rep)
            dens = call_tsa(tsa_density, q, k, v, grid)
            if isinstance(dens, dict):  # per tier: dense / striped / sink / total
                dens_txt = ", ".join(f"{key} {float(val):.3f}" for key, val in dens.items())
            else:
                dens_txt = f"{float(dens):.3f}"
            print(f"TSA: {t_tsa:.2f} s vs dense {t_glob:.2f} s (time ratio {t_tsa / t_glob:.3f}); density "
                  f"(FLOP ratio) {dens_txt}")
            rows += [("TSA attention [s]", f"{t_tsa:.2f}"),
                     ("TSA / dense time", f"{t_tsa / t_glob:.3f}"),
                     ("TSA FLOP ratio (density)", dens_txt)]
            del tsa_out
        except Exception as e:  # the module is new; report instead of failing the benchmark
            print(f"TSA: call failed: {type(e).__name__}: {e}")
            rows.append(("TSA sparse / dense", f"call failed: {type(e).__name__}"))

    width = max(len(r[0]) for r in rows)
    print()
    print(f"{'metric'.ljust(width)} | value")
    print(f"{'-' * width}-+-{'-' * 60}")
    for name, val in rows:
        print(f"{name.ljust(width)} | {val}")
    print(f"(benchmark wall time {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
