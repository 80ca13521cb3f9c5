"""The model-free temporal metrics of ``longvid eval``, per frame array and streamed per video.

One concern: what each metric is and how it is computed -- :func:`flicker`,
:func:`temporal_consistency` / :func:`frame_features`, and :func:`evaluate`, which accumulates
all of them over a whole video. Inputs are what ``longvid render`` writes -- ``.mp4``, ``.mkv``
or a directory of numbered PNG frames -- or any other video ffmpeg can decode. Frames come from
:func:`longvid_dist.io.video.iter_frames` in chunks of :data:`CHUNK_FRAMES`, so the memory used
does not grow with the video's length (only the previous frame and per-frame scalars are
carried from chunk to chunk).

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
    consecutive frames (see :func:`longvid_dist.eval.flow.optical_flow`: pyramidal iterative
    Lucas-Kanade with warping on BT.601 luma). Frames whose long side exceeds
    :data:`longvid_dist.eval.flow.FLOW_MAX_SIDE` are first resized (antialiased) to that long
    side and the flow is rescaled back per axis.
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
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..io.video import check_video, iter_frames
from .flow import FLOW_MAX_SIDE, _flow_input, _pair_motion
from .frames import _as_float_frames, _luma

__all__ = [
    "CHUNK_FRAMES",
    "METRIC_DEFINITIONS",
    "flicker",
    "frame_features",
    "temporal_consistency",
    "evaluate",
]

CHUNK_FRAMES = 32
"""Frames decoded and processed at a time by :func:`evaluate`."""

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

_THUMB_EPS = 0.02  # grayscale std below which a thumbnail counts as flat (structure part -> 0)


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


class _Accumulator:
    """Streaming state: metrics over consecutive pairs, carried across chunks."""

    def __init__(self, series: bool = False) -> None:
        self.series: dict[str, list[float]] | None = (
            {"flicker": [], "motion": [], "consistency": [], "consistency_first": []} if series else None)
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
            mad, mot = _pair_abs_diff(x), _pair_motion(g, *self._scale)
            cons, first = (f[1:] * f[:-1]).sum(1), (f[1:] * self._first_feat).sum(1)
            self.mad_sum += float(mad.sum())
            self.motion_sum += float(mot.sum())
            self.cons_sum += float(cons.sum())
            self.first_sum += float(first.sum())
            self.pairs += x.shape[0] - 1
            if self.series is not None:
                for k, v in (("flicker", mad), ("motion", mot), ("consistency", cons), ("consistency_first", first)):
                    self.series[k] += [float(a) for a in v.reshape(-1)]
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


def evaluate(path: str, info: Optional[dict] = None, series: bool = False) -> dict:
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
    acc = _Accumulator(series)
    for chunk in iter_frames(path, CHUNK_FRAMES):
        acc.update(chunk)
    out = {"path": path, "frames": acc.frames, "width": info["width"], "height": info["height"],
           "fps": info["fps"], **acc.result()}
    if series:
        out["series"] = acc.series
    return out
