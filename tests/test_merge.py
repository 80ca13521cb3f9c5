"""The WLS merge against an explicit least-squares solve, and GLC's gamma / path fusion."""

from __future__ import annotations

import math

import pytest
import torch

from longvid_dist.methods.merge import fuse_paths, glc_gamma, wls_merge
from longvid_dist.methods.windows import Window, dilated_windows, shifted_windows, sliding_windows

C, H, W = 3, 2, 5


def random_windows(gen: torch.Generator, num_frames: int, count: int) -> list[Window]:
    """Windows of random frame sets (sorted or not, duplicates allowed) with random positive
    weights; the first windows tile the video so every frame is covered, the rest overlap."""
    wins = []
    for start in range(0, num_frames, 4):
        frames = list(range(start, min(start + 4, num_frames)))
        wins.append(frames)
    for _ in range(count):
        n = int(torch.randint(1, num_frames + 3, (1,), generator=gen))
        wins.append(torch.randint(0, num_frames, (n,), generator=gen).tolist())
    order = torch.randperm(len(wins), generator=gen).tolist()
    out = []
    for i in order:
        frames = wins[i]
        weights = (torch.rand(len(frames), generator=gen, dtype=torch.float64) * 3 + 0.05).tolist()
        out.append(Window(tuple(frames), tuple(weights)))
    return out


def random_preds(gen: torch.Generator, windows: list[Window]) -> list[torch.Tensor]:
    return [torch.randn(C, len(w), H, W, generator=gen) for w in windows]


def lstsq_merge(preds: list[torch.Tensor], windows: list[Window], num_frames: int) -> torch.Tensor:
    """argmin_x sum_i sum_k w_ik ||x[f_ik] - p_ik||^2, solved as one weighted least-squares
    system over all frames: the normal equations A^T W A x = A^T W p with A the frame
    selection matrix of every (window, position) row."""
    rows = sum(len(w) for w in windows)
    A = torch.zeros(rows, num_frames, dtype=torch.float64)
    Wd = torch.zeros(rows, dtype=torch.float64)
    P = torch.zeros(rows, C * H * W, dtype=torch.float64)
    r = 0
    for pred, win in zip(preds, windows):
        for k, (f, wt) in enumerate(zip(win.frames, win.weights)):
            A[r, f] = 1.0
            Wd[r] = wt
            P[r] = pred[:, k].double().reshape(-1)
            r += 1
    AtW = A.T * Wd  # [F, rows]
    x = torch.linalg.solve(AtW @ A, AtW @ P)  # [F, C*H*W]
    return x.reshape(num_frames, C, H, W).permute(1, 0, 2, 3)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("num_frames", [1, 7, 31])
def test_wls_merge_equals_least_squares_solve(seed, num_frames):
    gen = torch.Generator().manual_seed(seed)
    windows = random_windows(gen, num_frames, count=5)
    preds = random_preds(gen, windows)
    merged = wls_merge(preds, windows, num_frames)
    assert merged.shape == (C, num_frames, H, W) and merged.dtype == torch.float32
    expected = lstsq_merge(preds, windows, num_frames)
    assert torch.allclose(merged.double(), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("F,L,S", [(31, 21, 10), (61, 21, 7), (17, 4, 3)])
def test_wls_merge_on_library_plans(F, L, S):
    gen = torch.Generator().manual_seed(F)
    for windows in (sliding_windows(F, L, S, "pyramid"), sliding_windows(F, L, S, "gaussian"),
                    shifted_windows(F, L, S, S - 1), dilated_windows(F, L)):
        preds = random_preds(gen, windows)
        expected = lstsq_merge(preds, windows, F)  # zero-weight padding rows drop out
        assert torch.allclose(wls_merge(preds, windows, F).double(), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("F", [1, 11, 31])
def test_single_full_window_is_unchanged(F):
    p = torch.randn(16, F, 4, 4, generator=torch.Generator().manual_seed(F))
    win = Window(tuple(range(F)), (1.0,) * F)
    assert torch.equal(wls_merge([p], [win], F), p)


@pytest.mark.parametrize("seed", range(4))
def test_zero_weight_padding_contributes_nothing(seed):
    F = 13
    gen = torch.Generator().manual_seed(seed)
    windows = random_windows(gen, F, count=4)
    preds = random_preds(gen, windows)
    merged = wls_merge(preds, windows, F)

    # 1) a whole window of padding (weight 0) with garbage predictions, anywhere in the list
    pad = Window(tuple(torch.randint(0, F, (9,), generator=gen).tolist()), (0.0,) * 9)
    garbage = torch.randn(C, 9, H, W, generator=gen) * 1e6
    for pos in (0, len(windows) // 2, len(windows)):
        w2 = windows[:pos] + [pad] + windows[pos:]
        p2 = preds[:pos] + [garbage] + preds[pos:]
        assert torch.equal(wls_merge(p2, w2, F), merged)

    # 2) padding positions appended to every window, as dilated sampling does
    w3, p3 = [], []
    for w, p in zip(windows, preds):
        extra = torch.randint(0, F, (3,), generator=gen).tolist()
        w3.append(Window(w.frames + tuple(extra), w.weights + (0.0, 0.0, 0.0)))
        p3.append(torch.cat([p, torch.randn(C, 3, H, W, generator=gen) * 1e6], dim=1))
    assert torch.equal(wls_merge(p3, w3, F), merged)


def test_uncovered_frame_raises():
    F = 10
    wins = [Window(tuple(range(0, 4)), (1.0,) * 4), Window(tuple(range(5, 10)), (1.0,) * 5)]
    preds = [torch.randn(C, len(w), H, W) for w in wins]
    with pytest.raises(ValueError, match=r"\b4\b"):
        wls_merge(preds, wins, F)
    # covered only by zero-weight padding is still uncovered
    wins.append(Window((4, 4), (0.0, 0.0)))
    preds.append(torch.randn(C, 2, H, W))
    with pytest.raises(ValueError, match=r"\b4\b"):
        wls_merge(preds, wins, F)
    # a missing last frame too
    with pytest.raises(ValueError):
        wls_merge(preds[:1], wins[:1], 5)


# -- GLC gamma and path fusion ----------------------------------------------------------------

TS = [0.0, 1.0, 60.0, 250.5, 500.0, 857.0, 999.0, 1000.0]


@pytest.mark.parametrize("t", TS)
def test_glc_gamma_formula(t):
    assert glc_gamma(t) == pytest.approx(0.005 * math.exp(0.0005 * t), rel=1e-12)
    assert glc_gamma(t, 0.1, 0.002) == pytest.approx(0.1 * math.exp(0.002 * t), rel=1e-12)


def test_glc_gamma_grows_with_t():
    """Eq. 9 as written: the global path weighs most at high noise (METHODS.md §7)."""
    values = [glc_gamma(t) for t in TS]
    assert all(a < b for a, b in zip(values, values[1:]))


def test_fuse_paths():
    gen = torch.Generator().manual_seed(0)
    g, loc = torch.randn(16, 9, 4, 4, generator=gen), torch.randn(16, 9, 4, 4, generator=gen)
    assert torch.equal(fuse_paths(g, loc, 0.0), loc)
    assert torch.equal(fuse_paths(g, loc, 1.0), g)
    for gamma in (0.005, 0.25, 0.7):
        assert torch.allclose(fuse_paths(g, loc, gamma), gamma * g + (1 - gamma) * loc, rtol=0, atol=1e-6)
