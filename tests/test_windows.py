"""Window plans, weight profiles, the per-step planner and keyed seeds: checked against
their defining formulas (no snapshots of library output)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from longvid_dist.methods.merge import fuse_paths, glc_gamma, wls_merge
from longvid_dist.methods.recipes import builtin_names, get_recipe
from longvid_dist.methods.windows import (
    PROFILES,
    Window,
    dilated_windows,
    direct_windows,
    reflect_index,
    shifted_windows,
    sliding_windows,
    weight_profile,
)
from longvid_dist.sampling.planner import Planner
from longvid_dist.sampling.rng import key_seed, keyed_generator, noise_generator

def coverage(windows: list[Window], num_frames: int) -> np.ndarray:
    """Total merge weight per latent frame (0 where no window covers the frame)."""
    total = np.zeros(num_frames)
    for w in windows:
        np.add.at(total, np.asarray(w.frames), np.asarray(w.weights))
    return total


# (F latent frames, L window, S stride): F < L, F == L, F == L + 1, F a multiple of L,
# stride 1, stride == L, odd sizes, a long video.
CASES = [
    (5, 21, 10),
    (21, 21, 10),
    (22, 21, 10),
    (42, 21, 10),
    (63, 21, 7),
    (31, 21, 1),
    (31, 21, 21),
    (100, 8, 3),
    (17, 4, 3),
    (241, 21, 10),
    (241, 21, 21),
]
LONG_CASES = [c for c in CASES if c[0] > c[1]]
ids = [f"F{f}-L{l}-S{s}" for f, l, s in CASES]
long_ids = [f"F{f}-L{l}-S{s}" for f, l, s in LONG_CASES]


def reflect_direct(i: int, n: int) -> int:
    """Reflection about the last frame, written out: i < n -> i; n <= i < 2n-1 -> 2(n-1)-i."""
    assert 0 <= i < max(2 * n - 1, 1)
    return i if i < n else 2 * (n - 1) - i


def starts_of(windows: list[Window]) -> list[int]:
    return [w.frames[0] for w in windows]


def check_contiguous(windows: list[Window], length: int) -> None:
    for w in windows:
        assert len(w) == length == len(w.weights)
        assert w.frames == tuple(range(w.frames[0], w.frames[0] + length))


def check_in_range(windows: list[Window], num_frames: int) -> None:
    for w in windows:
        assert all(isinstance(f, int) and 0 <= f < num_frames for f in w.frames)


# -- direct and sliding -----------------------------------------------------------------------

@pytest.mark.parametrize("F", [1, 2, 11, 31, 241])
def test_direct_is_one_uniform_window(F):
    (w,) = direct_windows(F)
    assert w.frames == tuple(range(F))
    assert w.weights == (1.0,) * F
    assert np.array_equal(coverage([w], F), np.ones(F))


@pytest.mark.parametrize("F,L,S", CASES, ids=ids)
@pytest.mark.parametrize("profile", PROFILES)
def test_sliding_windows(F, L, S, profile):
    wins = sliding_windows(F, L, S, profile)
    n = min(F, L)
    check_contiguous(wins, n)
    check_in_range(wins, F)
    assert (coverage(wins, F) > 0).all()
    for w in wins:
        assert np.array_equal(np.asarray(w.weights), weight_profile(n, profile))
    if F <= L:
        assert starts_of(wins) == [0]
    else:
        # 0, S, 2S, ... while the window fits, then one window ending exactly at F-1
        expected = [k * S for k in range(F) if k * S < F - L] + [F - L]
        assert starts_of(wins) == expected
        assert wins[-1].frames[-1] == F - 1


@pytest.mark.parametrize("stride", [0, -1, 22, 40])
def test_sliding_rejects_bad_stride(stride):
    with pytest.raises(ValueError, match="stride"):
        sliding_windows(50, 21, stride)


# -- dilated (GLC global) ---------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 3, 7, 31, 241])
def test_reflect_index_matches_formula(n):
    for i in range(max(2 * n - 1, 1)):
        r = reflect_index(i, n)
        assert r == reflect_direct(i, n)
        assert 0 <= r < n


@pytest.mark.parametrize("F,L,S", CASES, ids=ids)
def test_dilated_windows(F, L, S):
    wins = dilated_windows(F, L)
    check_in_range(wins, F)
    assert (coverage(wins, F) > 0).all()
    if F <= L:
        assert len(wins) == 1
        assert wins[0].frames == tuple(range(F)) and wins[0].weights == (1.0,) * F
        return
    d = math.ceil(F / L)
    assert d >= 2 and len(wins) == d
    real = []
    for i, w in enumerate(wins):
        assert len(w) == L == len(w.weights)
        for j, (frame, weight) in enumerate(zip(w.frames, w.weights)):
            p = i + d * j  # index into the reflect-padded latent of d*L frames
            if p < F:
                assert weight == 1.0 and frame == p
                real.append(frame)
            else:
                assert weight == 0.0 and frame == reflect_direct(p, F)
    # the real frames of the d windows partition the video
    assert sorted(real) == list(range(F))
    assert np.array_equal(coverage(wins, F), np.ones(F))


# -- shifted (GLC local) ----------------------------------------------------------------------

@pytest.mark.parametrize("F,L,S", CASES, ids=ids)
def test_shifted_windows_every_shift(F, L, S):
    n = min(F, L)
    for shift in range(S):
        wins = shifted_windows(F, L, S, shift)
        check_contiguous(wins, n)
        check_in_range(wins, F)
        assert (coverage(wins, F) > 0).all()
        st = starts_of(wins)
        assert st[0] == 0 and wins[-1].frames[-1] == F - 1
        assert st == sorted(set(st))
        if F > L:
            # the shifted grid shift + k*S (inside the video) is kept, plus the two ends
            grid = [shift + k * S for k in range(F) if 0 < shift + k * S < F - L]
            assert st == sorted({0, F - L, *grid})
            assert all(b - a <= S for a, b in zip(st, st[1:]))


@pytest.mark.parametrize("F,L,S", LONG_CASES, ids=long_ids)
def test_shifted_rejects_bad_shift(F, L, S):
    for shift in (-1, S, S + 3):
        with pytest.raises(ValueError, match="shift"):
            shifted_windows(F, L, S, shift)


# -- weight profiles --------------------------------------------------------------------------

LENGTHS = [1, 2, 3, 4, 5, 10, 21]


@pytest.mark.parametrize("n", LENGTHS)
def test_uniform_profile(n):
    assert np.array_equal(weight_profile(n, "uniform"), np.ones(n))
    assert np.array_equal(weight_profile(n), np.ones(n))


@pytest.mark.parametrize("name", ["pyramid", "triangular"])
@pytest.mark.parametrize("n", LENGTHS)
def test_pyramid_profile(name, n):
    up = list(range(1, (n + 1) // 2 + 1))  # 1, 2, ..., mid
    expected = up + up[: n // 2][::-1]  # ..., 2, 1
    assert len(expected) == n
    w = weight_profile(n, name)
    assert w.tolist() == expected
    assert np.array_equal(w, w[::-1])


@pytest.mark.parametrize("n", LENGTHS)
def test_gaussian_profile(n):
    w = weight_profile(n, "gaussian")
    c, s = (n - 1) / 2, n / 6
    expected = [math.exp(-((j - c) ** 2) / (2 * s * s)) for j in range(n)]
    assert np.allclose(w, expected, rtol=1e-12, atol=0)
    assert np.allclose(w, w[::-1], rtol=1e-12, atol=0)
    assert (w > 0).all()
    assert w.max() == w[(n - 1) // 2] == w[n // 2]  # peak at the centre (both centres if n even)
    if n > 2:
        assert w[0] < w[(n - 1) // 2]


def test_unknown_profile_names_allowed_ones():
    with pytest.raises(ValueError) as err:
        weight_profile(5, "cosine")
    for name in ("cosine", "uniform", "pyramid", "triangular", "gaussian"):
        assert name in str(err.value)


# -- planner ----------------------------------------------------------------------------------

def keyed(seed: int):
    return lambda purpose, step: keyed_generator(seed, purpose, step)


def window_sig(windows: list[Window]) -> list[tuple]:
    return [(w.frames, w.weights, w.path, w.cond) for w in windows]


def glc_plans(seed: int, F: int = 61, native: int = 21, steps: int = 20) -> list[list[tuple]]:
    planner = Planner(get_recipe("glc"), F, native, keyed(seed))
    return [window_sig(planner.plan(i, 1000.0 - 50 * i).windows) for i in range(steps)]


def test_glc_planner_is_reproducible_and_seeded():
    a, b = glc_plans(0), glc_plans(0)
    assert a == b  # same seed: same windows at every step, across two planners
    assert len({tuple(p) for p in a}) > 1  # the local shift changes across steps
    assert glc_plans(1) != a  # and depends on the seed


def test_glc_planner_structure():
    F, native = 61, 21
    planner = Planner(get_recipe("glc"), F, native, keyed(3))
    L, S = native, native // 2
    for step in range(8):
        t = 900.0 - 100 * step
        plan = planner.plan(step, t)
        glob = [w for w in plan.windows if w.path == "global"]
        loc = [w for w in plan.windows if w.path == "local"]
        assert plan.windows == glob + loc  # global windows first, then local
        assert window_sig(glob) == window_sig(dilated_windows(F, L))
        st = starts_of(loc)
        shift = min([s for s in st if s > 0] + [S]) % S  # first start after 0, or 0 if none
        assert window_sig(loc) == window_sig(shifted_windows(F, L, S, shift))

        # merge = gamma(t) * WLS(global) + (1 - gamma(t)) * WLS(local)
        g = torch.Generator().manual_seed(step)
        preds = [torch.randn(4, len(w), 2, 3, generator=g) for w in plan.windows]
        n = len(glob)
        expected = fuse_paths(wls_merge(preds[:n], glob, F), wls_merge(preds[n:], loc, F), glc_gamma(t))
        assert torch.equal(plan.merge(preds), expected)


def test_sliding_planner_defaults_to_half_window():
    F, native = 61, 21
    plan = Planner(get_recipe("sliding"), F, native, keyed(0)).plan(0, 999.0)
    assert window_sig(plan.windows) == window_sig(sliding_windows(F, native, native // 2))


def test_freenoise_planner_strides_a_quarter_window():
    """FreeNoise (and diffusers' enable_free_noise) fuse windows at stride window/4: 5 of Wan's 21."""
    F, native = 61, 21
    plan = Planner(get_recipe("freenoise"), F, native, keyed(0)).plan(0, 999.0)
    assert window_sig(plan.windows) == window_sig(sliding_windows(F, native, 5, "pyramid"))


def _window_recipes() -> list[str]:
    """Builtin recipes whose plan merges windows (chunked plans make chunks, not windows)."""
    from longvid_dist.methods import registry

    return [n for n in builtin_names() if not registry.get("plan", get_recipe(n).plan.kind).chunked]


@pytest.mark.parametrize("name", _window_recipes())
@pytest.mark.parametrize("F,native,override", [(1, 21, None), (5, 21, None), (21, 21, None),
                                               (8, 21, 8), (6, 21, 9)])
def test_short_video_degenerates_to_direct(name, F, native, override):
    recipe = get_recipe(name)
    if "window" in recipe.plan.params:  # the direct plan has no window to override
        recipe = recipe.with_overrides(window=override)
    planner = Planner(recipe, F, native, keyed(0))
    for step in range(5):
        plan = planner.plan(step, 1000.0 - step)
        assert len(plan.windows) == 1
        (w,) = plan.windows
        assert w.frames == tuple(range(F)) and w.weights == (1.0,) * F
        p = torch.randn(3, F, 2, 2)
        assert torch.equal(plan.merge([p]), p)


# -- keyed seeds ------------------------------------------------------------------------------

def test_key_seed_differs_by_seed_purpose_and_step():
    keys = {
        (seed, purpose, step): key_seed(seed, purpose, step)
        for seed in (0, 1, 2**40)
        for purpose in ("local_shift", "noise", "other")
        for step in (None, 0, 1, 2, 49)
    }
    assert len(set(keys.values())) == len(keys)
    assert all(0 <= v < 2**63 for v in keys.values())
    assert all(key_seed(*k) == v for k, v in keys.items())  # stable within a process


def test_key_seed_is_stable_across_processes():
    args = [(0, "local_shift", 3), (7, "noise", None), (123456, "x", 0)]
    code = ("from longvid_dist.sampling.rng import key_seed\n"
            f"print([key_seed(*a) for a in {args!r}])")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str([key_seed(*a) for a in args])


def test_generators():
    a = torch.randn(50, generator=keyed_generator(5, "local_shift", 2))
    assert torch.equal(a, torch.randn(50, generator=keyed_generator(5, "local_shift", 2)))
    assert not torch.equal(a, torch.randn(50, generator=keyed_generator(5, "local_shift", 3)))
    # the initial-noise generator is diffusers' Generator("cpu").manual_seed(seed)
    assert torch.equal(torch.randn(50, generator=noise_generator(9)),
                       torch.randn(50, generator=torch.Generator("cpu").manual_seed(9)))
