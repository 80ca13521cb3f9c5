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
