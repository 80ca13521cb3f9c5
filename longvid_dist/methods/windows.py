"""Window plans: which latent frames each model call sees, and with what merge weights.

A :class:`Window` lists *source* frame indices into the real latent ``[C, F, h, w]``. Padding
frames (global dilated sampling reads past the end) are mapped back onto real frames by
reflection and carry weight 0, so they feed the model with a noised frame of the right noise
level and are dropped at merge time (GLC-Diffusion §3.2). All plans are pure functions; the
only randomness (local shifts) is passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

PROFILES = ("uniform", "pyramid", "triangular", "gaussian")
"""Per-frame merge weight profiles (:func:`weight_profile`)."""


@dataclass(frozen=True, eq=False)
class Window:
    """One model call of a step."""

    frames: tuple[int, ...]
    """Source latent frame index for each of the window's frames (padding already reflected)."""
    weights: tuple[float, ...]
    """WLS merge weight of each frame; 0 for padding frames."""
    path: str = "full"
    """Which path it belongs to: ``full`` (single path), ``global`` or ``local``."""
    cond: str = "main"
    """Conditioning id looked up by the executor (a prompt of a timeline, an anchor...)."""
    role: str = "plain"
    """Attention role: ``plain``, ``anchor`` (others attend to its keys/values) or ``follow``."""
    anchor: tuple[int, ...] | None = None
    """For ``follow`` windows: the frames of the anchor window whose keys/values they use."""
    timestep: np.ndarray | None = None
    """Noise level: the scheduler timestep of every frame (0-d), or one per window frame
    (``[len(frames)]``, diffusion forcing / causal rollout); set by the loop each step."""
    causal_block: int | None = None
    """Block-causal self-attention in blocks of this many latent frames (diffusion forcing);
    None: the family's plain attention (families without the mask never see it)."""
    branch: str | None = None
    """One classifier-free-guidance branch alone (``cond`` or ``uncond``): set by an executor
    that runs the two branches on separate workers and combines them itself; None: guided."""

    def __len__(self) -> int:
        return len(self.frames)


def weight_profile(length: int, profile: str = "uniform") -> np.ndarray:
    """Per-frame weights of a window of ``length`` frames.

    ``uniform`` ones; ``pyramid``/``triangular`` FreeNoise's 1, 2, .., mid, .., 2, 1;
    ``gaussian`` exp(-(j - c)^2 / (2 s^2)) with c the centre and s = length / 6 (the bell
    reaches ~1% of its peak at the edges, never 0, so every frame stays covered).
    """
    j = np.arange(length, dtype=np.float64)
    if profile == "uniform":
        return np.ones(length)
    if profile in ("pyramid", "triangular"):
        return np.minimum(j + 1, length - j)
    if profile == "gaussian":
        c, s = (length - 1) / 2, max(length / 6, 1e-6)
        return np.exp(-((j - c) ** 2) / (2 * s * s))
    raise ValueError(f"unknown weight profile {profile!r}: use one of {', '.join(PROFILES)}")


def _window(frames, profile: str, path: str) -> Window:
    frames = tuple(int(f) for f in frames)
    return Window(frames, tuple(weight_profile(len(frames), profile).tolist()), path)


def direct_windows(num_frames: int) -> list[Window]:
    """One window over the whole video (direct sampling)."""
    return [_window(range(num_frames), "uniform", "full")]


def _starts(num_frames: int, length: int, stride: int, offset: int = 0) -> list[int]:
    """Window starts ``0, offset, offset+stride, ...`` with the last window ending at the end.

    The first window always starts at 0 and the last always ends at ``num_frames``; consecutive
    starts differ by at most ``stride <= length``, so every frame is covered.
    """
    last = num_frames - length
    starts = {0, last}
    s = offset
    while s < last:
        if s > 0:
            starts.add(s)
        s += stride
    return sorted(starts)


def sliding_windows(num_frames: int, length: int, stride: int, profile: str = "uniform",
                    path: str = "full") -> list[Window]:
    """Gen-L-Video sliding windows: length ``length``, step ``stride`` (latent frames)."""
    if num_frames <= length:
        return [_window(range(num_frames), profile, path)]
    _check_stride(length, stride)
    return [_window(range(s, s + length), profile, path) for s in _starts(num_frames, length, stride)]


def shifted_windows(num_frames: int, length: int, stride: int, shift: int,
                    profile: str = "uniform") -> list[Window]:
    """GLC local random shifting (Eq. 6): overlapping windows whose starts move by ``shift``.

    Starts are ``shift + i*stride`` (``0 <= shift < stride``, drawn each step by the caller),
    plus a window at 0 and one ending at the last frame so the shift never uncovers a frame.
    """
    if num_frames <= length:
        return [_window(range(num_frames), profile, "local")]
    _check_stride(length, stride)
    if not 0 <= shift < stride:
        raise ValueError(f"shift {shift} must be in [0, {stride})")
    return [_window(range(s, s + length), profile, "local")
            for s in _starts(num_frames, length, stride, offset=shift)]


def reflect_index(i: int, n: int) -> int:
    """Map a padded index ``i >= 0`` onto ``[0, n)`` by reflection about the last frame."""
    period = 2 * (n - 1) if n > 1 else 1
    i %= period
    return i if i < n else period - i


def dilated_windows(num_frames: int, length: int) -> list[Window]:
    """GLC global dilated sampling (Eq. 4): window i takes padded frames ``i + d*j``.

    ``d = ceil(F / L)``; the latent is padded to ``d*L`` frames by reflection, so the ``d``
    windows (offsets ``s_i = i``) each span the whole video at stride ``d`` and together cover
    every frame exactly once; padding frames get weight 0.

    GLC-Diffusion ("Global-Local Collaborative Diffusion for Long Video Generation", §3.2)
    pads the latent but does not say with what; we reflect about the last frame
    (:func:`reflect_index`) so a padding slot holds a real frame at the current noise level
    (zeros or fresh noise would be off the noise schedule), and drop it at merge time.
    """
    if num_frames <= length:
        return [_window(range(num_frames), "uniform", "global")]
    d = math.ceil(num_frames / length)
    out = []
    for i in range(d):
        padded = [i + d * j for j in range(length)]  # indices into the padded latent
        frames = tuple(reflect_index(p, num_frames) for p in padded)
        weights = tuple(1.0 if p < num_frames else 0.0 for p in padded)
        out.append(Window(frames, weights, "global"))
    return out


def _check_stride(length: int, stride: int) -> None:
    if not 1 <= stride <= length:
        raise ValueError(f"stride {stride} must be between 1 and the window length {length}")


def with_anchor(windows: list[Window]) -> list[Window]:
    """Make the first window of a path the anchor of the others (GLC's ABAM, Eq. 10)."""
    if len(windows) < 2:
        return windows
    first = windows[0]
    return [replace(first, role="anchor")] + [replace(w, role="follow", anchor=first.frames) for w in windows[1:]]
