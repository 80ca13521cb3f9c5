"""Latent refinement: GLC-Diffusion's Video Motion Consistency Refinement (VMCR).

VMCR (Ma et al., "GLC-Diffusion: Global-Local Collaborative Diffusion for Long Video
Generation", §3.4, Eq. 12-15; METHODS.md §4) aligns consecutive motion vectors of the
predicted clean latent ``x0`` ``[C, F, h, w]`` with a pixel loss (cosine + MSE) and a
frequency loss (2D-FFT amplitude + phase), and takes one gradient step on ``z_{t-1}``. The
gradient is derived by hand (:func:`motion_loss_grad`), so no autograd graph is built and
nothing flows through the model; tests check it against ``torch.autograd``.

Reductions (``reduction``): ``sum`` (default) follows the paper's norms literally -- sums over
frame pairs and over every element / frequency (``||.||_2^2`` and ``||.||_1``). The paper does
not say whether its norms are means; read as sums, the frequency term dominates the cosine term
by ~10^5 at Wan-480p latent sizes and the step grows with ``h*w``, so ``omega`` tuned at one
resolution does not transfer (METHODS.md §7; ``tests/test_refine.py`` measures it). ``mean``
(ours) averages each term: the cosine term over frame pairs, the MSE, amplitude and phase
terms over every element of every pair. The phase loss uses raw ``angle`` differences in
``(-2 pi, 2 pi)``, not wrapped, as written in Eq. 14.
"""

from __future__ import annotations

import torch

from .registry import NUM, Param, num_range, register

REDUCTIONS = ("sum", "mean")
"""How each VMCR term is reduced (see the module docstring)."""

_EPS = 1e-12
"""Smoothing of norms and of ``|X|^2`` (see :func:`motion_loss_terms`, :func:`motion_loss_grad`)."""


def _motion_pairs(x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Motion vectors ``d`` ``[C, F-1, h, w]`` (Eq. 12) and the pairs ``(d_i, d_{i+1})``."""
    d = x0[:, 1:] - x0[:, :-1]
    return d, d[:, :-1], d[:, 1:]


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(0, 1).reshape(t.shape[1], -1)  # [C, P, h, w] -> [P, C*h*w]


def _unflat(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    c, p, h, w = like.shape
    return t.reshape(p, c, h, w).transpose(0, 1)  # [P, C*h*w] -> [C, P, h, w]


def _scales(x0: torch.Tensor, reduction: str) -> tuple[float, float]:
    """``(cosine scale, element scale)``: 1 and 1 for ``sum``; ``1/P`` and ``1/(P C h w)`` for
    ``mean`` (``P = F - 2`` frame pairs)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; use one of {', '.join(REDUCTIONS)}")
    if reduction == "sum":
        return 1.0, 1.0
    c, f, h, w = x0.shape
    pairs = f - 2
    return 1.0 / pairs, 1.0 / (pairs * c * h * w)


def motion_loss_terms(x0: torch.Tensor, lam_mse: float = 0.001, lam_phase: float = 1.0,
                      reduction: str = "sum") -> tuple[torch.Tensor, torch.Tensor]:
    """VMCR pixel and frequency losses ``(l_pixel, l_freq)`` of ``x0`` (GLC Eq. 12-14).

    ``d_i = x0[:, i+1] - x0[:, i]`` (Eq. 12); over pairs ``(d_i, d_{i+1})``, ``i = 0..F-3``:
    ``l_pixel = sum_i (1 - cos(d_i, d_{i+1})) + lam_mse * ||d_i - d_{i+1}||_2^2`` (Eq. 13, cosine
    over each frame's flattened ``C*h*w`` vector) and
    ``l_freq = sum_i || |F(d_i)| - |F(d_{i+1})| ||_1 + lam_phase * || angle F(d_i) - angle F(d_{i+1}) ||_1``
    (Eq. 14, ``F`` the 2D FFT over (h, w) per channel). ``F < 3`` frames -> both 0.

    The cosine uses smoothed norms ``sqrt(||d||^2 + eps)``, eps = 1e-12, so a still frame pair
    (``d = 0``) has cosine 0 rather than NaN.
    """
    if x0.dim() != 4:
        raise ValueError(f"x0 must be [C, F, h, w], got shape {list(x0.shape)}")
    if x0.shape[1] < 3:
        zero = x0.new_zeros(())
        return zero, zero.clone()
    sc, se = _scales(x0, reduction)
    d, a, b = _motion_pairs(x0)
    fa, fb = _flat(a), _flat(b)
    cos = (fa * fb).sum(1) / torch.sqrt(((fa * fa).sum(1) + _EPS) * ((fb * fb).sum(1) + _EPS))
    pixel = sc * (1 - cos).sum() + se * lam_mse * ((a - b) ** 2).sum()
    spec = torch.fft.fft2(d)  # [C, F-1, h, w] complex, over (h, w)
    amp, phase = spec.abs(), spec.angle()
    freq = se * ((amp[:, :-1] - amp[:, 1:]).abs().sum() + lam_phase * (phase[:, :-1] - phase[:, 1:]).abs().sum())
    return pixel, freq


def motion_loss(x0: torch.Tensor, lam_f: float = 0.2, lam_mse: float = 0.001,
                lam_phase: float = 1.0, reduction: str = "sum") -> torch.Tensor:
    """VMCR motion alignment loss (GLC §3.4): ``l = l_pixel + lam_f * l_freq``, terms as in
    :func:`motion_loss_terms`. A 0-d tensor of ``x0``'s dtype."""
    pixel, freq = motion_loss_terms(x0, lam_mse=lam_mse, lam_phase=lam_phase, reduction=reduction)
    return pixel + lam_f * freq


def _pair_grad(ga: torch.Tensor, gb: torch.Tensor) -> torch.Tensor:
    """Gradient on ``d`` ``[C, F-1, ...]`` from gradients on ``d[:, :-1]`` and ``d[:, 1:]``."""
    g = torch.zeros(ga.shape[0], ga.shape[1] + 1, *ga.shape[2:], dtype=ga.dtype, device=ga.device)
    g[:, :-1] += ga
    g[:, 1:] += gb
    return g


def motion_loss_grad(x0: torch.Tensor, lam_f: float = 0.2, lam_mse: float = 0.001,
                     lam_phase: float = 1.0, reduction: str = "sum") -> torch.Tensor:
    """Analytic gradient ``dl/dx0`` of :func:`motion_loss` (GLC Eq. 13-14), ``[C, F, h, w]``.

    With ``a = d_i``, ``b = d_{i+1}`` (flattened), ``n_a = sqrt(||a||^2 + eps)``:
    ``d cos/da = (b/n_b - cos a/n_a) / n_a`` (symmetric in b) and ``d||a-b||^2/da = 2 (a - b)``.
    For ``X = FFT2(d)`` of real ``d`` over ``N = h*w`` pixels and real weights ``s``:
    ``d/dd sum s |X| = N Re(IFFT2(s X/|X|))`` and ``d/dd sum s angle(X) = -N Im(IFFT2(s X/|X|^2))``,
    with ``s`` the signs of the L1 differences spread back on both frames of each pair.
    ``X/|X|`` is taken as 0 at ``X = 0`` and ``|X|^2`` is smoothed by eps = 1e-12 (the angle's
    gradient is undefined at 0 and ~1/|X| near it; the smoothing bounds it and matches
    autograd, whose ``angle`` gradient is 0 at 0, wherever ``|X|^2 >> eps``). The sign of a
    zero L1 difference is 0, as in autograd. Finally ``d = x0[:, 1:] - x0[:, :-1]`` is chained.
    """
    if x0.dim() != 4:
        raise ValueError(f"x0 must be [C, F, h, w], got shape {list(x0.shape)}")
    if x0.shape[1] < 3:
        return torch.zeros_like(x0)
    sc, se = _scales(x0, reduction)
    d, a, b = _motion_pairs(x0)
    # pixel term: -cos(a, b) + lam_mse ||a - b||^2 per pair
    fa, fb = _flat(a), _flat(b)  # [P, C*h*w]
    na = torch.sqrt((fa * fa).sum(1, keepdim=True) + _EPS)
    nb = torch.sqrt((fb * fb).sum(1, keepdim=True) + _EPS)
    cos = (fa * fb).sum(1, keepdim=True) / (na * nb)
    ga = -sc * (fb / nb - cos * fa / na) / na + se * 2 * lam_mse * (fa - fb)
    gb = -sc * (fa / na - cos * fb / nb) / nb - se * 2 * lam_mse * (fa - fb)
    grad_d = _pair_grad(_unflat(ga, a), _unflat(gb, b))
    # frequency term: lam_f * (sum |amp_i - amp_{i+1}| + lam_phase sum |phase_i - phase_{i+1}|)
    if lam_f:
        spec = torch.fft.fft2(d)  # [C, F-1, h, w] complex
        amp, phase = spec.abs(), spec.angle()
        s_amp = torch.sign(amp[:, :-1] - amp[:, 1:])
        s_phase = torch.sign(phase[:, :-1] - phase[:, 1:])
        w_amp = _pair_grad(s_amp, -s_amp)  # dl_amp / d|X|, [C, F-1, h, w]
        w_phase = _pair_grad(s_phase, -s_phase)  # dl_phase / d angle(X)
        n = d.shape[-2] * d.shape[-1]
        g_amp = n * torch.fft.ifft2(w_amp * torch.sgn(spec)).real
        g_phase = -n * torch.fft.ifft2(w_phase * spec / (amp * amp + _EPS)).imag
        grad_d = grad_d + se * lam_f * (g_amp + lam_phase * g_phase)
    grad = torch.zeros_like(x0)
    grad[:, 1:] += grad_d  # d = x0[:, 1:] - x0[:, :-1]
    grad[:, :-1] -= grad_d
    return grad


def vmcr_step(z_prev: torch.Tensor, x0: torch.Tensor, omega: float = 2e-5, lam_f: float = 0.2,
              lam_mse: float = 0.001, lam_phase: float = 1.0, reduction: str = "sum") -> torch.Tensor:
    """One VMCR update (GLC Eq. 15, Algorithm 1 line 23): ``z_{t-1} - omega * grad_{x0} l``.

    The loss is evaluated on the predicted clean latent ``x0`` (no gradient through the model)
    and its gradient is applied to ``z_{t-1}`` (METHODS.md §4). Returns a new tensor of
    ``z_prev``'s dtype; the inputs are not modified.
    """
    if z_prev.shape != x0.shape:
        raise ValueError(f"z_prev {list(z_prev.shape)} and x0 {list(x0.shape)} must have the same shape")
    grad = motion_loss_grad(x0, lam_f=lam_f, lam_mse=lam_mse, lam_phase=lam_phase, reduction=reduction)
    return z_prev - omega * grad.to(z_prev.dtype)


def _vmcr(params: dict, ctx) -> torch.Tensor:
    x0 = ctx.space.predict_x0(ctx.latent, ctx.merged, ctx.scheduler, ctx.step)
    return vmcr_step(ctx.latent_next, x0, **params)


register("refine", "vmcr", _vmcr, {
    "lam_f": Param(NUM, 0.2, "a number >= 0", num_range(0)),
    "lam_mse": Param(NUM, 0.001, "a number >= 0", num_range(0)),
    "lam_phase": Param(NUM, 1.0, "a number >= 0", num_range(0)),
    "omega": Param(NUM, 2e-5, "a number > 0 (the step size; under reduction: sum the gradient grows with the "
                   "latent's h*w, so omega depends on the resolution)", num_range(0, lo_open=True)),
    "reduction": Param((str,), "sum", "sum (the paper's norms, literally) or mean (each term averaged; "
                       "omega then transfers across resolutions)", lambda v: v in REDUCTIONS),
})
