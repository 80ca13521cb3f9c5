"""Temporal RoPE frequency changes (applied by an adapter to its temporal rotary table)."""

from __future__ import annotations

import math

import numpy as np

from ..models.hooks import rope_frequencies
from .registry import INT_OR_NULL, NUM, Param, num_range, register


def riflex_index(dim: int, train_len: int, base: float = 10000.0) -> int:
    """RIFLEx's intrinsic frequency (Zhao et al. 2025, "RIFLEx: A Free Lunch for Length
    Extrapolation in Video Diffusion Transformers", §4, Eq. 7): the component whose period
    ``N_j = round(2*pi / theta_j) = round(2*pi * base^(2(j-1)/dim))`` (1-indexed j) is closest
    to the training length; returned 0-indexed."""
    periods = np.round(2 * math.pi / rope_frequencies(dim, base))
    return int(np.argmin(np.abs(periods - train_len)))


def riflex(theta: np.ndarray, train_len: int, test_len: int, k: int | None = None,
           base: float = 10000.0, factor: float = 0.9) -> np.ndarray:
    """RIFLEx: reduce the intrinsic frequency so one period spans the test length.

    ``theta_k = factor * 2*pi / L_test`` (factor 0.9 in the paper) when ``L_test`` exceeds
    the component's period ``N_k``; every other frequency is unchanged. ``k`` defaults to
    :func:`riflex_index`. Lengths are in latent frames.
    """
    dim = 2 * len(theta)
    k = riflex_index(dim, train_len, base) if k is None else k
    if not 0 <= k < len(theta):
        raise ValueError(f"riflex k={k} must be in [0, {len(theta)}) for a {dim}-dim temporal RoPE")
    out = np.array(theta, dtype=np.float64)
    if test_len > round(2 * math.pi / theta[k]):
        out[k] = factor * 2 * math.pi / test_len
    return out


def _riflex_check(recipe, section) -> str | None:
    if recipe.plan.kind != "direct":
        return (f"rope riflex extrapolates one window over the whole video and needs plan direct, "
                f"plan is {recipe.plan.kind}")
    return None


def _riflex_factory(params: dict, train_len: int, test_len: int):
    k, factor = params["k"], params["factor"]

    def rope(theta):
        return riflex(theta, train_len, test_len, k=k, factor=factor)

    return rope


register("rope", "riflex", _riflex_factory,
         {"k": Param(INT_OR_NULL, None, "null (the paper's rule) or a frequency index >= 0", lambda v: v >= 0),
          "factor": Param(NUM, 0.9, "a number in (0, 1]", num_range(0, 1, lo_open=True))},
         requires=("temporal_rope",), check=_riflex_check)


def flex_rope(theta: np.ndarray, train_len: int, test_len: int, alpha: float = 1.0,
              beta: float = 32.0) -> np.ndarray:
    """FLEX frequency-aware RoPE modulation (FLEX, §3; METHODS.md §3): a temporal component's
    training exposure is ``r_m = L_train theta_m / (2 pi)`` cycles. Components seen for at most
    ``alpha`` cycles are interpolated (``theta_m L_train / L_test``), those seen for at least
    ``beta`` cycles are kept (extrapolated), with the linear NTK-by-parts ramp
    ``gamma = (r - alpha) / (beta - alpha)`` between: ``theta' = (1 - gamma) theta L_train / L_test
    + gamma theta``. Unchanged when the test length is within the training length."""
    theta = np.asarray(theta, dtype=np.float64)
    if test_len <= train_len:
        return theta.copy()
    r = train_len * theta / (2 * math.pi)
    gamma = np.clip((r - alpha) / (beta - alpha), 0.0, 1.0)
    return (1 - gamma) * theta * train_len / test_len + gamma * theta


def _flex_check(recipe, section) -> str | None:
    if section.params["alpha"] >= section.params["beta"]:
        return f"rope.alpha: {section.params['alpha']} must be smaller than rope.beta {section.params['beta']}"
    return None


register("rope", "flex",
         lambda params, train_len, test_len: (lambda theta: flex_rope(theta, train_len, test_len, params["alpha"],
                                                                       params["beta"])),
         {"alpha": Param(NUM, 1, "a number >= 0 (exposure in cycles below which a component is interpolated)",
                         num_range(0)),
          "beta": Param(NUM, 32, "a number > alpha (exposure in cycles above which a component is kept)",
                        num_range(0, lo_open=True))},
         requires=("temporal_rope",), check=_flex_check)
