"""Dense optical flow for ``longvid eval``'s ``motion`` metric: pyramidal iterative Lucas-Kanade.

One concern: how far things move between consecutive frames. :func:`optical_flow` is a
pyramidal, iterative Lucas-Kanade solver with warping, vectorized over pixels and frame pairs
in torch; :func:`motion_magnitude` (and the streaming ``_pair_motion`` that
:mod:`longvid_dist.eval.metrics` uses) run it on per-frame standardized BT.601 luma, resized to
a long side of at most :data:`FLOW_MAX_SIDE`, and report magnitudes in pixels/frame of the
original resolution.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .frames import _as_float_frames, _luma

__all__ = ["FLOW_MAX_SIDE", "optical_flow", "motion_magnitude"]

FLOW_MAX_SIDE = 256
"""Frames are resized so their long side is at most this before optical flow."""

_FLOW_LEVEL_MIN_SIDE = 16
_FLOW_MAX_LEVELS = 5
_FLOW_ITERS = 4
_FLOW_WINDOW_SIGMA = 2.0
_FLOW_REG = 1e-4  # Tikhonov term on the structure tensor ([0, 1] intensities): no flow in flat areas
_FLOW_PAIR_BATCH = 16
_FLOW_MIN_STD = 0.05  # luma std below which a frame is not amplified by the normalization
_FLOW_NORM_STD = 0.25  # luma std after normalization (the scale _FLOW_REG is tuned for)


def _flow_input(x: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """Flow input: photometrically normalized luma at the flow resolution, and the (sx, sy)
    factors that map flow back to the original pixel grid.

    Each frame's luma is standardized (zero mean, divided by ``max(std, 0.05)``, times 0.25),
    so global brightness/contrast changes between frames -- flicker -- are not mistaken
    for motion (flicker is measured separately).
    """
    g = _luma(x)
    h, w = g.shape[-2:]
    sx = sy = 1.0
    if max(h, w) > FLOW_MAX_SIDE:
        s = FLOW_MAX_SIDE / max(h, w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        g = F.interpolate(g, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        sx, sy = w / nw, h / nh
    mean = g.mean(dim=(1, 2, 3), keepdim=True)
    std = g.std(dim=(1, 2, 3), keepdim=True).clamp_min(_FLOW_MIN_STD)
    return (g - mean) * (_FLOW_NORM_STD / std), sx, sy


def _gauss_1d(sigma: float) -> torch.Tensor:
    r = max(1, int(math.ceil(2.5 * sigma)))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / sigma) ** 2)
    return k / k.sum()


def _blur(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Separable blur of [N,C,H,W] with odd 1-D kernel ``k``, replicate borders (shifted adds)."""
    r = (k.numel() - 1) // 2
    h, w = x.shape[-2:]
    p = F.pad(x, (r, r, 0, 0), mode="replicate")
    y = p[..., :, 0:w] * k[0]
    for i in range(1, k.numel()):
        y = y.add_(p[..., :, i:i + w], alpha=float(k[i]))
    p = F.pad(y, (0, 0, r, r), mode="replicate")
    y = p[..., 0:h, :] * k[0]
    for i in range(1, k.numel()):
        y = y.add_(p[..., i:i + h, :], alpha=float(k[i]))
    return y


def _gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences of [N,1,H,W] (replicate borders)."""
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    gx = (p[..., 1:-1, 2:] - p[..., 1:-1, :-2]) * 0.5
    gy = (p[..., 2:, 1:-1] - p[..., :-2, 1:-1]) * 0.5
    return gx, gy


def _warp(img: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``img`` [N,1,H,W] at x + flow (flow [N,2,H,W], pixels), bilinear, border clamp.

    Also returns the mask [N,1,H,W] of pixels whose sample point lies inside the frame.
    """
    n, _, h, w = img.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=img.dtype), torch.arange(w, dtype=img.dtype), indexing="ij")
    px, py = xs + flow[:, 0], ys + flow[:, 1]
    inside = ((px >= 0) & (px <= w - 1) & (py >= 0) & (py <= h - 1)).unsqueeze(1).to(img.dtype)
    grid = torch.stack((px * (2.0 / max(w - 1, 1)) - 1.0, py * (2.0 / max(h - 1, 1)) - 1.0), dim=-1)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=True), inside


def _pyramid(x: torch.Tensor) -> list[torch.Tensor]:
    levels = [x]
    while len(levels) < _FLOW_MAX_LEVELS and min(levels[-1].shape[-2:]) >= 2 * _FLOW_LEVEL_MIN_SIDE:
        h, w = levels[-1].shape[-2:]
        levels.append(F.interpolate(levels[-1], size=((h + 1) // 2, (w + 1) // 2), mode="bilinear",
                                    align_corners=False, antialias=True))
    return levels


def optical_flow(prev: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
    """Dense optical flow from ``prev`` to ``nxt`` (grayscale [N,1,H,W] float tensors).

    Returns [N,2,H,W] (dx, dy) in pixels such that ``nxt(x + flow(x)) ~= prev(x)``.

    Method: pyramidal iterative Lucas-Kanade. A Gaussian pyramid (factor 2, up to
    5 levels, coarsest side >= 16 px) is processed coarse to fine; at each level the flow from
    the coarser level is upsampled and doubled, ``nxt`` is warped by it (bilinear), and
    4 Gauss-Newton updates solve the 2x2 Lucas-Kanade system per pixel with a Gaussian window
    (sigma 2 px) and a small Tikhonov term (no motion where there is no texture), each update
    clamped to 1 px. Pixels whose warped position falls outside the frame (content leaving the
    view) carry no data term; their flow comes from the window's in-frame neighbours.
    Gradients are central differences of the average of ``prev`` and the warped ``nxt``.
    Everything is vectorized over pixels and pairs (Python loops only over levels/iterations).
    """
    if prev.shape != nxt.shape or prev.ndim != 4 or prev.shape[1] != 1:
        raise ValueError(
            f"optical_flow needs two [N,1,H,W] tensors, got {list(prev.shape)}, {list(nxt.shape)}"
        )
    win = _gauss_1d(_FLOW_WINDOW_SIGMA)
    pyr0, pyr1 = _pyramid(prev.float()), _pyramid(nxt.float())
    flow = None
    for i0, i1 in zip(reversed(pyr0), reversed(pyr1)):
        n, _, h, w = i0.shape
        if flow is None:
            flow = i0.new_zeros(n, 2, h, w)
        else:
            ph, pw = flow.shape[-2:]
            flow = F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=False)
            flow = flow * torch.tensor([w / pw, h / ph], dtype=flow.dtype).view(1, 2, 1, 1)
        for _ in range(_FLOW_ITERS):
            i1w, inside = _warp(i1, flow)
            ix, iy = _gradients(0.5 * (i0 + i1w))
            it = i1w - i0
            prods = torch.cat((ix * ix, ix * iy, iy * iy, ix * it, iy * it), dim=1) * inside
            s = _blur(prods, win)
            sxx, sxy, syy, sxt, syt = (s[:, k] for k in range(5))
            sxx, syy = sxx + _FLOW_REG, syy + _FLOW_REG
            det = sxx * syy - sxy * sxy
            du = (-syy * sxt + sxy * syt) / det
            dv = (sxy * sxt - sxx * syt) / det
            flow = flow + torch.stack((du, dv), dim=1).clamp_(-1.0, 1.0)
    return flow


def _pair_motion(g: torch.Tensor, sx: float, sy: float) -> torch.Tensor:
    """Per consecutive pair mean flow magnitude (original pixels/frame) of luma frames [n,1,h,w]."""
    out = []
    for a in range(0, g.shape[0] - 1, _FLOW_PAIR_BATCH):
        b = min(a + _FLOW_PAIR_BATCH, g.shape[0] - 1)
        flow = optical_flow(g[a:b], g[a + 1:b + 1])
        mag = torch.sqrt((flow[:, 0] * sx) ** 2 + (flow[:, 1] * sy) ** 2)
        out.append(mag.mean(dim=(1, 2)))
    return torch.cat(out) if out else g.new_zeros(0)


def motion_magnitude(frames: np.ndarray) -> Optional[float]:
    """Mean dense-optical-flow magnitude (pixels/frame) between consecutive frames.

    ``frames``: uint8 [n,H,W,3] or float on [0,1]. Frames are converted to BT.601 luma and,
    when the long side exceeds :data:`FLOW_MAX_SIDE`, resized to that long side; the flow is
    scaled back to the original pixel grid per axis before taking magnitudes. Each frame's
    luma is standardized first, so global brightness/contrast flicker does not count as motion.
    ``None`` with fewer than two frames. See :func:`optical_flow` for the method.
    """
    x = _as_float_frames(frames)
    if x.shape[0] < 2:
        return None
    with torch.no_grad():
        g, sx, sy = _flow_input(x)
        return float(_pair_motion(g, sx, sy).mean())
