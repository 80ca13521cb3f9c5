"""longvid_dist: training-free long-video generation with diffusers models, on one machine or a Ray cluster."""

from .config import RenderSpec, SpecError

__all__ = ["RenderSpec", "SpecError", "render"]


def render(spec: RenderSpec):
    """Render ``spec``; see :func:`longvid_dist.api.render`."""
    from .api import render as _render

    return _render(spec)
