"""Initial-noise strategies: pure functions of a CPU ``torch.Generator`` and a latent shape.

Every strategy returns fp32 ``[C, F, h, w]`` noise on the CPU (METHODS.md §2). The caller keys
the generator by (seed, purpose), so the same seed gives the same noise on any machine.

Frequency convention (low-pass filters): per axis the normalized frequency is
``f = 2 * torch.fft.fftfreq(n)`` in unshifted DFT order, so ``f`` lies in ``[-1, 1)`` and the
Nyquist frequency is 1 -- FreeInit's convention (its ``2 t / T - 1`` after ``fftshift``). The
filters depend on ``d = sqrt((f_t / d_t)^2 + (f_h / d_s)^2 + (f_w / d_s)^2)``, the distance to
DC in units of the cutoffs, so ``d = 1`` on the cutoff ellipsoid.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .registry import CUTOFF, INT_OR_NULL, NUM, Param, num_range, register

FILTERS = ("gaussian", "butterworth", "ideal")

_DIMS = (1, 2, 3)  # F, h, w of a [C, F, h, w] latent


def _shape(shape: Sequence[int]) -> tuple[int, int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"noise shape must be [C, F, h, w] with positive sizes, got {list(shape)}")
    return shape


def iid_noise(generator: torch.Generator, shape: Sequence[int]) -> torch.Tensor:
    """i.i.d. standard Gaussian noise (direct sampling): ``torch.randn`` from ``generator``."""
    return torch.randn(_shape(shape), generator=generator, dtype=torch.float32)


def freenoise_shuffle(noise: torch.Tensor, window: int, stride: int,
                      generator: torch.Generator) -> torch.Tensor:
    """FreeNoise noise rescheduling (Qiu et al. 2024, "FreeNoise: Tuning-Free Longer Video
    Diffusion via Noise Rescheduling", §3.2; METHODS.md §2).

    For ``f = W, W+S, ...``: ``eps[:, f:f+S] = eps[:, perm(f-W .. f-W+S-1)]``, blocks filled
    in order (a block may copy frames that an earlier block wrote), ``perm`` a fresh random
    permutation from ``generator``. A last block shorter than ``S`` takes the first frames of
    its permutation. Frames ``0..W-1`` are left as they are. Returns a new tensor.
    """
    if noise.dim() != 4:
        raise ValueError(f"noise must be [C, F, h, w], got shape {list(noise.shape)}")
    if window < 1 or not 1 <= stride <= window:
        raise ValueError(f"need window >= 1 and 1 <= stride <= window, got window={window}, stride={stride}")
    out = noise.clone()
    num_frames = out.shape[1]
    for f in range(window, num_frames, stride):
        src = f - window + torch.randperm(stride, generator=generator)  # shuffled f-W .. f-W+S-1
        n = min(stride, num_frames - f)
        out[:, f:f + n] = out[:, src[:n]]  # source frames all lie before f
    return out


def freenoise_noise(generator: torch.Generator, shape: Sequence[int], window: int,
                    stride: int) -> torch.Tensor:
    """FreeNoise initial noise: i.i.d. noise, then :func:`freenoise_shuffle`."""
    return freenoise_shuffle(iid_noise(generator, shape), window, stride, generator)


def lowpass_filter(f: int, h: int, w: int, kind: str = "gaussian", d_s: float = 0.25,
                   d_t: float = 0.25, order: int = 4, dtype: torch.dtype = torch.float64,
                   device=None) -> torch.Tensor:
    """Spatio-temporal low-pass filter ``H`` ``[F, h, w]`` in unshifted DFT order (FreeInit's
    filters, Wu et al. 2023, "FreeInit: Bridging Initialization Gap in Video Diffusion Models",
    §4; used by GLC Eq. 11 and FreeLong's SpectralBlend).

    With ``d`` the distance to DC in units of the cutoffs (see the module docstring):
    ``gaussian`` ``H = exp(-d^2 / 2)`` (0.61 at the cutoff), ``butterworth``
    ``H = 1 / (1 + d^(2 * order))`` (0.5 at the cutoff), ``ideal`` ``H = 1[d <= 1]``.
    ``H`` is in [0, 1], 1 at DC, non-increasing in ``|f|`` along every axis, and even
    (``H(f) = H(-f)``), so it maps the FFT of a real field to the FFT of a real field.
    Computed in ``dtype`` on ``device`` (the noise uses float64 on the CPU; SpectralBlend float32
    next to its features), returned as float32.
    """
    if kind not in FILTERS:
        raise ValueError(f"unknown filter kind {kind!r}: use one of {', '.join(FILTERS)}")
    if not (d_s > 0 and d_t > 0):
        raise ValueError(f"cutoffs d_s and d_t must be > 0, got d_s={d_s}, d_t={d_t}")
    if int(order) != order or order < 1:
        raise ValueError(f"butterworth order must be a positive integer, got {order}")
    ft, fh, fw = (2 * torch.fft.fftfreq(n, dtype=dtype, device=device) for n in (f, h, w))  # in [-1, 1)
    # d^2 * d_s^2, the temporal axis rescaled to the spatial cut-off: [F, 1, 1] + [1, h, 1] + [1, 1, w]
    d2s = ((ft * d_s / d_t) ** 2).view(-1, 1, 1) + (fh ** 2).view(1, -1, 1) + (fw ** 2).view(1, 1, -1)
    if kind == "gaussian":
        filt = torch.exp(-d2s / (2 * d_s ** 2))
    elif kind == "butterworth":
        filt = 1 / (1 + (d2s / d_s ** 2) ** int(order))
    else:
        filt = (d2s / d_s ** 2 <= 1).to(dtype)
    return filt.float()


def glc_noise_reinit(local_noise: torch.Tensor, global_noise: torch.Tensor, filter: torch.Tensor,
                     normalize: bool = True) -> torch.Tensor:
    """GLC noise reinitialization, frequency fusion (Ma et al., "GLC-Diffusion: Global-Local
    Collaborative Diffusion for Long Video Generation", §3.3 Eq. 11; the paper says only
    "low-pass": the filter and its cutoffs are FreeInit's, METHODS.md §7):
    ``z' = IFFT3D(FFT3D(z_local) * H + FFT3D(eta) * (1 - H))``, 3D over (F, h, w) per channel.

    ``filter`` is ``H`` ``[F, h, w]`` from :func:`lowpass_filter` (even, so the result is real
    up to round-off; the real part is returned). Computed in float64, returned fp32.

    ``normalize`` (ours; the paper gives none): for independent white inputs the fused noise
    has variance ``v = mean(H^2 + (1 - H)^2) < 1`` at every position (Parseval), ~0.96 for the
    default Gaussian filter; with ``normalize`` the result is divided by ``sqrt(v)`` so it stays
    unit-variance like the noise the model was trained on. ``v = 1`` when ``H`` is all 1 or all
    0, so those cases return ``z_local`` / ``eta`` unchanged (up to FFT round-off).
    """
    if local_noise.shape != global_noise.shape or local_noise.dim() != 4:
        raise ValueError(f"local and global noise must both be [C, F, h, w], got "
                         f"{list(local_noise.shape)} and {list(global_noise.shape)}")
    if tuple(filter.shape) != tuple(local_noise.shape[1:]):
        raise ValueError(f"filter must be [F, h, w] = {list(local_noise.shape[1:])}, got {list(filter.shape)}")
    filt = filter.double()
    mixed = (torch.fft.fftn(local_noise.double(), dim=_DIMS) * filt
             + torch.fft.fftn(global_noise.double(), dim=_DIMS) * (1 - filt))
    out = torch.fft.ifftn(mixed, dim=_DIMS).real
    if normalize:
        out = out / torch.sqrt((filt ** 2 + (1 - filt) ** 2).mean())
    return out.float()


def glc_reinit_noise(generator: torch.Generator, shape: Sequence[int], window: int, stride: int,
                     kind: str = "gaussian", d_s: float = 0.25, d_t: float = 0.25, order: int = 4,
                     normalize: bool = True) -> torch.Tensor:
    """The full GLC noise reinitialization (GLC-Diffusion, §3.3 and Algorithm 1, step 1): FreeNoise
    local shuffle of i.i.d. noise, then :func:`glc_noise_reinit` with a fresh global Gaussian
    ``eta`` and :func:`lowpass_filter` ``(kind, d_s, d_t, order)``. Draw order: local noise,
    shuffle permutations, ``eta``."""
    shape = _shape(shape)
    local = freenoise_shuffle(iid_noise(generator, shape), window, stride, generator)
    eta = iid_noise(generator, shape)
    filt = lowpass_filter(*shape[1:], kind=kind, d_s=d_s, d_t=d_t, order=order)
    return glc_noise_reinit(local, eta, filt, normalize=normalize)


def antiphase_noise(generator: torch.Generator, shape: Sequence[int], rho: float = -0.3) -> torch.Tensor:
    """FLEX antiphase noise sampling (Li et al., "Train Short, Inference Long: Training-free Horizon
    Extension for Autoregressive Video Generation", Prop. 3.1): along the frame axis
    ``z_0 = e_0``, ``z_u = rho * z_{u-1} + sqrt(1 - rho^2) * e_u`` with ``e`` i.i.d. N(0, I).

    Each frame is N(0, I) and ``Cov(z_u, z_v) = rho^|u-v| I``. The AR(1) recursion is valid
    for any ``|rho| < 1``; the method is the antiphase regime, so ``-1 < rho < 0`` is enforced.
    The paper's default rho is not public; -0.3 is the project's (METHODS.md §2).
    """
    if not -1 < rho < 0:
        raise ValueError(f"antiphase noise needs -1 < rho < 0, got rho={rho}")
    e = iid_noise(generator, shape)
    z = torch.empty_like(e)
    z[:, 0] = e[:, 0]
    scale = math.sqrt(1 - rho * rho)
    for u in range(1, z.shape[1]):
        z[:, u] = rho * z[:, u - 1] + scale * e[:, u]
    return z


def _window_stride(params: dict, num_frames: int, native_window: int) -> tuple[int, int]:
    """A noise section's ``window`` (null: the native clip, at most the video) and ``stride``
    (null: a quarter window, FreeNoise's 16/4)."""
    window = min(params["window"] or native_window, num_frames)
    return window, params["stride"] or max(window // 4, 1)


def _resolve_window_stride(params: dict, geometry) -> dict:
    window, stride = _window_stride(params, geometry.num_frames, geometry.native_window)
    return {**params, "window": window, "stride": stride}


def _ws(params: dict, ctx) -> tuple[int, int]:
    return _window_stride(params, ctx.num_frames, ctx.native_window)


def _shape_of(ctx) -> tuple[int, ...]:
    return ctx.space.latent_shape(ctx.frames, ctx.height, ctx.width)


_QUARTER_STRIDE = Param(INT_OR_NULL, None, "a positive integer or null for a quarter window", lambda v: v >= 1)
_WINDOW = Param(INT_OR_NULL, None, "a positive integer (latent frames) or null for the model's native clip",
                lambda v: v >= 1)

register("noise", "iid", lambda params, ctx: ctx.space.init_noise(ctx.generator, ctx.frames, ctx.height, ctx.width))
register("noise", "freenoise",
         lambda params, ctx: freenoise_noise(ctx.keyed("noise", None), _shape_of(ctx), *_ws(params, ctx)),
         {"window": _WINDOW, "stride": _QUARTER_STRIDE}, resolve=_resolve_window_stride)
register("noise", "glc_reinit",
         lambda params, ctx: glc_reinit_noise(ctx.keyed("noise", None), _shape_of(ctx), *_ws(params, ctx),
                                              kind=params["filter"], d_s=params["d_s"], d_t=params["d_t"],
                                              order=params["order"], normalize=params["normalize"]),
         {"window": _WINDOW, "stride": _QUARTER_STRIDE,
          "filter": Param((str,), "gaussian", "gaussian or butterworth", lambda v: v in ("gaussian", "butterworth")),
          "d_s": CUTOFF, "d_t": CUTOFF,
          "order": Param((int,), 4, "a positive integer (Butterworth order)", lambda v: v >= 1),
          "normalize": Param((bool,), True, "true (rescale the fused noise to unit variance; ours, the paper "
                             "gives none) or false (the literal Eq. 11)")},
         resolve=_resolve_window_stride)
register("noise", "antiphase",
         lambda params, ctx: antiphase_noise(ctx.keyed("noise", None), _shape_of(ctx), rho=params["rho"]),
         {"rho": Param(NUM, -0.3, "a number in (-1, 0)", num_range(-1, 0, True, True))})
