"""longvid_dist: training-free long-video generation with diffusers models, on one machine or a Ray cluster."""

from __future__ import annotations

import os

# Bit-for-bit results on CPU whatever the memory alignment of a tensor: Intel MKL (torch's CPU
# BLAS) otherwise picks kernels by alignment on some CPUs (measured on an AMD EPYC: the same
# Wan forward differed by 5e-7 between two copies of the same weights), so a window read from
# a shared-memory arena, an object-store object or a fresh tensor could differ in the last bit.
# MKL reads this at its first call; no cost measured on the tiny models or a 2048^2 GEMM.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

from .config import ParallelConfig, RenderSpec, SpecError

__all__ = ["ParallelConfig", "RenderSpec", "SpecError", "render"]


def render(spec: RenderSpec, parallel: ParallelConfig | None = None, **kw):
    """Render ``spec`` (on ``parallel``'s Ray workers when given); see :func:`longvid_dist.api.render`."""
    from .api import render as _render

    return _render(spec, parallel, **kw)
