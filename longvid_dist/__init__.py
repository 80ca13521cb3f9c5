"""longvid_dist: training-free long-video generation with diffusers models, on one machine or a Ray cluster."""

from __future__ import annotations

from .config import ParallelConfig, RenderSpec, SpecError

__all__ = ["ParallelConfig", "RenderSpec", "SpecError", "render"]


def render(spec: RenderSpec, parallel: ParallelConfig | None = None, **kw):
    """Render ``spec`` (on ``parallel``'s Ray workers when given); see :func:`longvid_dist.api.render`."""
    from .api import render as _render

    return _render(spec, parallel, **kw)
