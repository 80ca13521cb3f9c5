"""``longvid eval``: model-free temporal metrics of rendered videos (optionally VBench).

Inputs are what ``longvid render`` writes -- ``.mp4``, ``.mkv`` or a directory of numbered
PNG frames -- or any other video ffmpeg can decode. Frames are decoded by ffmpeg and streamed
in chunks of :data:`CHUNK_FRAMES`, so the memory used does not grow with the video's length
(only the previous frame and per-frame scalars are carried from chunk to chunk).

Metrics (all computed from RGB frames on [0, 1]; "pairs" are consecutive frames t, t+1):

``flicker_mad``
    Mean absolute difference between consecutive frames, averaged over pixels, channels and
    pairs, on [0, 1]. 0 for a static video; higher means more frame-to-frame change (flicker
    *and* motion both raise it -- read it next to ``motion``).
``temporal_flickering``
    VBench's "temporal flickering" formula for reference: ``(255 - MAD_255) / 255`` where
    ``MAD_255`` is the same mean absolute difference on the 0..255 scale, i.e.
    ``1 - flicker_mad``; 1 = no change at all. (VBench reports it only on its static-scene
    prompt subset; here it is computed on the whole video as given.)
``motion``
    Mean magnitude, in pixels/frame of the original resolution, of dense optical flow between
    consecutive frames (see :func:`optical_flow`: pyramidal iterative Lucas-Kanade with
    warping on BT.601 luma). Frames whose long side exceeds :data:`FLOW_MAX_SIDE` are first
    resized (antialiased) to that long side and the flow is rescaled back per axis.
``consistency``
    Mean cosine similarity of consecutive frames' fixed, model-free features
    (:func:`frame_features`): a 16x16 standardized grayscale thumbnail (structure) and
    square-rooted per-channel 16-bin colour histograms (colour), each part unit-norm, so the
    cosine is about the average of a structural correlation and the Bhattacharyya coefficient
    of the colour distributions. 1 = consecutive frames look alike.
``consistency_first``
    Long-range consistency: mean over t >= 1 of cos(f_0, f_t), similarity of every frame to
    the first one. Drift, scene changes and colour shifts late in a long video lower it even
    when each step is small.

Metrics over pairs are ``None`` for a one-frame video.

VBench (https://github.com/Vchitect/VBench) is optional: :func:`vbench_status` says whether
it and the weights of :data:`VBENCH_DIMENSIONS` are present, and :func:`run_vbench` runs its
custom-input mode when they are.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
import tempfile
from typing import Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .io.video import VideoInputError, check_video, iter_frames, write_json_atomic

__all__ = [
    "CHUNK_FRAMES",
    "FLOW_MAX_SIDE",
    "METRIC_DEFINITIONS",
    "VBENCH_DIMENSIONS",
    "VBENCH_WEIGHTS",
    "flicker",
    "optical_flow",
    "motion_magnitude",
    "frame_features",
    "temporal_consistency",
    "evaluate",
    "format_table",
    "vbench_cache_dir",
    "vbench_status",
    "run_vbench",
    "main_eval",
]

CHUNK_FRAMES = 32
"""Frames decoded and processed at a time by :func:`evaluate`."""

FLOW_MAX_SIDE = 256
"""Frames are resized so their long side is at most this before optical flow."""

THUMB = 16
"""Side of the grayscale thumbnail in :func:`frame_features`."""

HIST_BINS = 16
"""Bins per RGB channel of the colour histogram in :func:`frame_features`."""

METRIC_DEFINITIONS: dict[str, str] = {
    "flicker_mad": "mean |frame[t+1] - frame[t]| over pixels, RGB channels and consecutive pairs, "
                   "frames on [0, 1]; 0 = static",
    "temporal_flickering": "VBench-style temporal flickering score (255 - MAD_255) / 255 = 1 - flicker_mad; "
                           "1 = no frame-to-frame change",
    "motion": "mean magnitude (pixels/frame at the original resolution) of dense optical flow between "
              "consecutive frames: pyramidal iterative Lucas-Kanade with warping on per-frame standardized "
              "BT.601 luma (global brightness flicker is not motion), "
              f"frames resized to a long side <= {FLOW_MAX_SIDE} px first and the flow rescaled back",
    "consistency": "mean cosine similarity of consecutive frames' features; features = unit-norm "
                   f"standardized {THUMB}x{THUMB} grayscale thumbnail concatenated with unit-norm "
                   f"sqrt of per-channel {HIST_BINS}-bin RGB histograms (model-free, fixed)",
    "consistency_first": "long-range consistency: mean over t >= 1 of cos(features[0], features[t])",
}

_LUMA = (0.299, 0.587, 0.114)
_FLOW_LEVEL_MIN_SIDE = 16
_FLOW_MAX_LEVELS = 5
_FLOW_ITERS = 4
_FLOW_WINDOW_SIGMA = 2.0
_FLOW_REG = 1e-4  # Tikhonov term on the structure tensor ([0, 1] intensities): no flow in flat areas
_FLOW_PAIR_BATCH = 16
_FLOW_MIN_STD = 0.05  # luma std below which a frame is not amplified by the normalization
_FLOW_NORM_STD = 0.25  # luma std after normalization (the scale _FLOW_REG is tuned for)
_THUMB_EPS = 0.02  # grayscale std below which a thumbnail counts as flat (structure part -> 0)


# ---------------------------------------------------------------------------------------------
# frame helpers

def _as_float_frames(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [n,H,W,3] (0..255) or float [n,H,W,3] (0..1) -> float32 tensor [n,3,H,W] on [0,1]."""
    t = torch.as_tensor(np.asarray(frames)) if not isinstance(frames, torch.Tensor) else frames
    if t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"frames must have shape [n, H, W, 3], got {list(t.shape)}")
    if t.dtype == torch.uint8:
        t = t.float().div_(255.0)
    else:
        t = t.float()
    return t.permute(0, 3, 1, 2).contiguous()


def _luma(x: torch.Tensor) -> torch.Tensor:
    """[n,3,H,W] RGB -> [n,1,H,W] BT.601 luma."""
    w = torch.tensor(_LUMA, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


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


# ---------------------------------------------------------------------------------------------
# flicker

def _pair_abs_diff(x: torch.Tensor) -> torch.Tensor:
    """Per consecutive pair mean |x[t+1]-x[t]|, [n-1]."""
    return (x[1:] - x[:-1]).abs().mean(dim=(1, 2, 3))


def flicker(frames: np.ndarray) -> dict:
    """Frame-to-frame change of ``frames`` (uint8 [n,H,W,3], or float on [0,1]).

    Returns ``{"flicker_mad": MAD on [0,1], "temporal_flickering": 1 - MAD}``; the second is
    VBench's ``(255 - MAD_255) / 255``. Both are ``None`` with fewer than two frames.
    """
    x = _as_float_frames(frames)
    if x.shape[0] < 2:
        return {"flicker_mad": None, "temporal_flickering": None}
    mad = float(_pair_abs_diff(x).mean())
    return {"flicker_mad": mad, "temporal_flickering": 1.0 - mad}


# ---------------------------------------------------------------------------------------------
# optical flow

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


# ---------------------------------------------------------------------------------------------
# feature consistency

def _features(x: torch.Tensor) -> torch.Tensor:
    """[n,3,H,W] on [0,1] -> unit-norm features [n, THUMB^2 + 3*HIST_BINS]."""
    n = x.shape[0]
    thumb = F.adaptive_avg_pool2d(_luma(x), THUMB).reshape(n, -1)
    thumb = thumb - thumb.mean(dim=1, keepdim=True)
    std = thumb.pow(2).mean(dim=1, keepdim=True).sqrt()
    # flat frames get a (near-)zero structure part instead of amplified noise
    structure = thumb / torch.sqrt(std ** 2 + _THUMB_EPS ** 2) / math.sqrt(thumb.shape[1])
    bins = (x * HIST_BINS).long().clamp_(0, HIST_BINS - 1)  # [n,3,H,W]
    offs = (torch.arange(n).view(n, 1, 1, 1) * 3 + torch.arange(3).view(1, 3, 1, 1)) * HIST_BINS
    hist = torch.bincount((bins + offs).reshape(-1), minlength=n * 3 * HIST_BINS).float()
    hist = hist.view(n, 3 * HIST_BINS) / (x.shape[2] * x.shape[3] * 3)
    colour = hist.sqrt()  # unit L2 norm: the cosine of two of these is the Bhattacharyya coefficient
    return F.normalize(torch.cat((structure, colour), dim=1), dim=1)


def frame_features(frames: np.ndarray) -> np.ndarray:
    """The fixed, model-free per-frame features used by :func:`temporal_consistency`.

    Per frame: a 16x16 area-averaged BT.601 grayscale thumbnail, standardized (zero mean,
    divided by ``sqrt(std^2 + 0.02^2)`` so a flat frame gives ~0 instead of amplified noise) and
    scaled to unit norm, concatenated with the square root of the normalized per-channel
    16-bin RGB histograms (unit norm). The concatenation is L2-normalized, so the cosine of two
    frames is about the mean of their structural correlation and the Bhattacharyya coefficient
    of their colour distributions. Returns float32 [n, 304].
    """
    with torch.no_grad():
        return _features(_as_float_frames(frames)).numpy()


def temporal_consistency(frames: np.ndarray) -> dict:
    """``{"consistency": mean cos(f_t, f_{t+1}), "consistency_first": mean_{t>=1} cos(f_0, f_t)}``.

    Features are :func:`frame_features`; both are ``None`` with fewer than two frames.
    """
    f = torch.from_numpy(frame_features(frames))
    if f.shape[0] < 2:
        return {"consistency": None, "consistency_first": None}
    return {"consistency": float((f[1:] * f[:-1]).sum(1).mean()),
            "consistency_first": float((f[1:] * f[:1]).sum(1).mean())}


# ---------------------------------------------------------------------------------------------
# whole videos

class _Accumulator:
    """Streaming state: metrics over consecutive pairs, carried across chunks."""

    def __init__(self) -> None:
        self.frames = 0
        self.mad_sum = 0.0
        self.motion_sum = 0.0
        self.cons_sum = 0.0
        self.first_sum = 0.0
        self.pairs = 0
        self._last_rgb: Optional[torch.Tensor] = None
        self._last_luma: Optional[torch.Tensor] = None
        self._last_feat: Optional[torch.Tensor] = None
        self._first_feat: Optional[torch.Tensor] = None
        self._scale = (1.0, 1.0)

    @torch.no_grad()
    def update(self, chunk: np.ndarray) -> None:
        x = _as_float_frames(chunk)
        g, sx, sy = _flow_input(x)
        f = _features(x)
        if self._first_feat is None:
            self._first_feat, self._scale = f[:1], (sx, sy)
        if self._last_rgb is not None:
            x = torch.cat((self._last_rgb, x))
            g = torch.cat((self._last_luma, g))
            f = torch.cat((self._last_feat, f))
        if x.shape[0] >= 2:
            self.mad_sum += float(_pair_abs_diff(x).sum())
            self.motion_sum += float(_pair_motion(g, *self._scale).sum())
            self.cons_sum += float((f[1:] * f[:-1]).sum())
            self.first_sum += float((f[1:] * self._first_feat).sum())
            self.pairs += x.shape[0] - 1
        self.frames += chunk.shape[0]
        self._last_rgb, self._last_luma, self._last_feat = x[-1:], g[-1:], f[-1:]

    def result(self) -> dict:
        p = self.pairs
        if not p:
            return {"flicker_mad": None, "temporal_flickering": None, "motion": None,
                    "consistency": None, "consistency_first": None}
        mad = self.mad_sum / p
        return {"flicker_mad": mad, "temporal_flickering": 1.0 - mad, "motion": self.motion_sum / p,
                "consistency": self.cons_sum / p, "consistency_first": self.first_sum / p}


def evaluate(path: str, info: Optional[dict] = None) -> dict:
    """All model-free metrics of one video (file or PNG-frame directory), streamed in chunks.

    Returns ``{"path", "frames", "width", "height", "fps", "flicker_mad",
    "temporal_flickering", "motion", "consistency", "consistency_first"}``. ``frames`` is the
    number of frames decoded; ``fps`` comes from the container (``None`` for a PNG directory).
    ``info`` is :func:`~longvid_dist.io.video.check_video`'s result when the caller already
    has it; bad input raises :class:`~longvid_dist.io.video.VideoInputError`.

    (``probe_video`` is not used: it decodes the whole video once more just to count frames,
    which this pass does anyway.)
    """
    info = info or check_video(path)
    acc = _Accumulator()
    for chunk in iter_frames(path, CHUNK_FRAMES):
        acc.update(chunk)
    return {"path": path, "frames": acc.frames, "width": info["width"], "height": info["height"],
            "fps": info["fps"], **acc.result()}


_COLUMNS = [  # (header, key, format)
    ("frames", "frames", "{:d}"),
    ("size", None, None),
    ("fps", "fps", "{:.3g}"),
    ("flicker", "flicker_mad", "{:.4f}"),
    ("vb_flicker", "temporal_flickering", "{:.4f}"),
    ("motion px/f", "motion", "{:.3f}"),
    ("consist", "consistency", "{:.4f}"),
    ("consist@0", "consistency_first", "{:.4f}"),
]


def format_table(results: Iterable[dict]) -> str:
    """One aligned row per video: path, frames, size, fps and the metrics (``-`` when undefined)."""
    headers = ["video"] + [h for h, _, _ in _COLUMNS]
    rows = []
    for r in results:
        row = [str(r.get("path", ""))]
        for _, key, fmt in _COLUMNS:
            if key is None:
                row.append(f"{r.get('width')}x{r.get('height')}")
            else:
                v = r.get(key)
                row.append("-" if v is None else fmt.format(v))
        rows.append(row)
    widths = [max(len(x) for x in col) for col in zip(headers, *rows)]
    lines = []
    for row in [headers] + rows:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# VBench (optional)

VBENCH_DIMENSIONS: tuple[str, ...] = (
    "subject_consistency", "background_consistency", "motion_smoothness",
    "temporal_flickering", "imaging_quality",
)
"""The VBench dimensions long-video papers report, in the order :func:`run_vbench` runs them."""

VBENCH_WEIGHTS: dict[str, list[tuple[str, str]]] = {
    # dimension -> [(path under VBench's cache dir, what it is)], as vbench.utils.init_submodules
    # expects them in local mode (local mode is what run_vbench uses: no downloads at run time)
    "subject_consistency": [
        ("dino_model/dino_vitbase16_pretrain.pth", "DINO ViT-B/16 weights"),
        ("dino_model/facebookresearch_dino_main/hubconf.py", "clone of github.com/facebookresearch/dino"),
    ],
    "background_consistency": [("clip_model/ViT-B-32.pt", "CLIP ViT-B/32 weights")],
    "motion_smoothness": [("amt_model/amt-s.pth", "AMT-S checkpoint")],
    "temporal_flickering": [],
    "imaging_quality": [("pyiqa_model/musiq_spaq_ckpt-358bb6af.pth", "MUSIQ (SPAQ) checkpoint")],
}


def vbench_cache_dir() -> str:
    """Where VBench keeps its models: ``$VBENCH_CACHE_DIR``, else ``~/.cache/vbench``."""
    return os.environ.get("VBENCH_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "vbench")


def _weights_list() -> str:
    return "; ".join(f"{d}: " + (", ".join(p for p, _ in VBENCH_WEIGHTS[d]) or "no weights")
                     for d in VBENCH_DIMENSIONS)


def vbench_status(dimensions: Sequence[str] = VBENCH_DIMENSIONS) -> tuple[bool, str]:
    """``(available, reason)``: can :func:`run_vbench` run ``dimensions`` here, and if not, why.

    Checks that the ``vbench`` package (and its torchvision / decord imports) is installed and
    that every weight file the dimensions need is in :func:`vbench_cache_dir`. Nothing is
    imported or downloaded.
    """
    unknown = [d for d in dimensions if d not in VBENCH_WEIGHTS]
    if unknown:
        return False, f"unsupported VBench dimension(s) {', '.join(unknown)}; supported: {', '.join(VBENCH_DIMENSIONS)}"
    cache = vbench_cache_dir()
    if importlib.util.find_spec("vbench") is None:
        return False, (
            "VBench is not installed: `pip install vbench` (it also pulls torchvision, decord and others); "
            "its model weights download from the internet (Hugging Face / GitHub / OpenAI) on first use, "
            f"so an offline machine needs them placed under {cache} ($VBENCH_CACHE_DIR or ~/.cache/vbench) "
            f"beforehand: {_weights_list()}"
        )
    missing_mods = [m for m in ("torchvision", "decord") if importlib.util.find_spec(m) is None]
    if missing_mods:
        return False, f"VBench is installed but its dependencies are missing: {', '.join(missing_mods)}"
    missing = [f"{d}: {os.path.join(cache, p)} ({what})"
               for d in dimensions for p, what in VBENCH_WEIGHTS[d]
               if not os.path.exists(os.path.join(cache, p))]
    if missing:
        return False, (f"VBench is installed but weights are missing from its cache dir {cache} "
                       f"($VBENCH_CACHE_DIR or ~/.cache/vbench): " + "; ".join(missing))
    return True, f"VBench installed; weights for {', '.join(dimensions)} found in {cache}"


def run_vbench(paths: Sequence[str], dimensions: Sequence[str] = VBENCH_DIMENSIONS,
               device: Optional[str] = None) -> dict:
    """Run VBench's custom-input mode (local weights only) on each video.

    Raises RuntimeError with :func:`vbench_status`'s reason when it cannot run. VBench reads
    ``.mp4`` only, so other inputs (``.mkv``, PNG directories) are re-encoded to a temporary
    H.264 ``.mp4`` first (cropped to even size). Returns ``{"available": True, "dimensions":
    [...], "results": {path: {dimension: score}}}``.
    """
    ok, reason = vbench_status(dimensions)
    if not ok:
        raise RuntimeError(reason)
    import json

    import vbench  # noqa: F401  (optional dependency, checked above)
    from vbench import VBench

    from .io.video import VideoWriter

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    full_info = os.path.join(os.path.dirname(vbench.__file__), "VBench_full_info.json")
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="longvid-vbench-") as tmp:
        for i, path in enumerate(paths):
            src = path
            if not (os.path.isfile(path) and path.lower().endswith(".mp4")):
                info = check_video(path)
                w2, h2 = info["width"] // 2 * 2, info["height"] // 2 * 2
                src = os.path.join(tmp, f"video{i}.mp4")
                with VideoWriter(src, w2, h2, info["fps"] or 16.0) as w:
                    for chunk in iter_frames(path, CHUNK_FRAMES):
                        w.write(chunk[:, :h2, :w2])
            out = os.path.join(tmp, f"out{i}")
            VBench(device, full_info, out).evaluate(videos_path=src, name=f"video{i}", dimension_list=list(dimensions),
                                                   local=True, mode="custom_input")
            with open(os.path.join(out, f"video{i}_eval_results.json"), encoding="utf-8") as f:
                raw = json.load(f)
            results[path] = {d: (v[0] if isinstance(v, (list, tuple)) else v) for d, v in raw.items()}
    return {"available": True, "dimensions": list(dimensions), "results": results}


# ---------------------------------------------------------------------------------------------
# CLI

class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``prog: error: message`` and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_eval_parser(prog: str = "longvid eval") -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="Model-free temporal metrics of videos (flicker, optical-flow motion, "
                                       "feature consistency), optionally VBench.")
    p.add_argument("videos", nargs="+", metavar="VIDEO",
                   help=".mp4, .mkv (or any ffmpeg-readable video) or a PNG-frame directory")
    p.add_argument("--json", metavar="OUT.json", default=None,
                   help="also write per-video metrics, metric definitions and VBench status/results as JSON")
    p.add_argument("--vbench", action="store_true",
                   help="also run VBench (" + ", ".join(VBENCH_DIMENSIONS) + ") when it and its weights are "
                        "installed; otherwise say what is missing on stderr (the model-free metrics are still "
                        "computed and the exit code is 0)")
    return p


def _check_json_out(path: str) -> Optional[str]:
    parent = os.path.dirname(path) or "."
    if os.path.isdir(path):
        return "is an existing directory"
    if not os.path.isdir(parent):
        return f"directory {parent!r} does not exist"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"directory {parent!r} is not writable"
    return None


def main_eval(argv: list[str] | None = None) -> int:
    """``longvid eval VIDEO... [--json OUT.json] [--vbench]``.

    Every path is checked first (exit 2 with ``longvid eval: error: <path>: <what>`` on the
    first bad one, before any metric is computed); then the metrics table is printed and the
    JSON written. With ``--vbench`` but VBench or its weights missing, the model-free table and
    JSON are still produced, the reason goes to stderr and the exit code is 0: what could be
    computed was computed, and the JSON records ``"vbench": {"available": false, "reason": ...}``.
    A VBench run that fails after starting exits 1 (the model-free results are still written).
    """
    parser = build_eval_parser()
    args = parser.parse_args(argv)
    prog = parser.prog
    if args.json is not None:
        problem = _check_json_out(args.json)
        if problem:
            print(f"{prog}: error: --json: {args.json}: {problem}", file=sys.stderr)
            return 2
    infos = []
    for path in args.videos:
        try:
            infos.append(check_video(path))
        except VideoInputError as e:  # "<path>: <what is wrong>"
            print(f"{prog}: error: {e}", file=sys.stderr)
            return 2

    results = [evaluate(p, info) for p, info in zip(args.videos, infos)]
    print(format_table(results))

    available, reason = vbench_status()
    vb: dict = {"requested": bool(args.vbench), "available": available, "reason": reason}
    code = 0
    if args.vbench:
        if not available:
            print(f"{prog}: VBench not run: {reason}", file=sys.stderr)
        else:
            try:
                vb.update(run_vbench(args.videos))
                for path, scores in vb["results"].items():
                    print(f"vbench {path}: " + ", ".join(f"{d}={s:.4f}" for d, s in scores.items()))
            except Exception as e:  # an optional third-party stack: report, keep our results
                vb["error"] = f"{type(e).__name__}: {e}"
                print(f"{prog}: VBench failed: {vb['error']}", file=sys.stderr)
                code = 1
    if args.json is not None:
        write_json_atomic(args.json, {"videos": results, "metrics": METRIC_DEFINITIONS, "vbench": vb})
    return code


if __name__ == "__main__":
    sys.exit(main_eval())
