"""VMCR: the loss against its formula, the hand-derived gradient against autograd, the step."""

from __future__ import annotations

import math

import pytest
import torch

from longvid_dist.methods.refine import motion_loss, motion_loss_grad, motion_loss_terms, vmcr_step


def rand(*shape, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def loop_loss(x0: torch.Tensor, lam_f: float, lam_mse: float, lam_phase: float) -> float:
    """Eq. 12-14 written term by term with a loop over frames (float64)."""
    d = [x0[:, i + 1] - x0[:, i] for i in range(x0.shape[1] - 1)]
    pixel = freq = 0.0
    for a, b in zip(d[:-1], d[1:]):
        cos = float((a * b).sum() / (a.norm() * b.norm()))
        pixel += 1 - cos + lam_mse * float(((a - b) ** 2).sum())
        fa, fb = torch.fft.fft2(a), torch.fft.fft2(b)
        freq += float((fa.abs() - fb.abs()).abs().sum()) + lam_phase * float((fa.angle() - fb.angle()).abs().sum())
    return pixel + lam_f * freq


@pytest.mark.parametrize("params", [{}, {"lam_f": 1.0, "lam_mse": 0.5, "lam_phase": 0.3}])
def test_loss_matches_per_frame_formula(params):
    x0 = rand(3, 5, 6, 4)
    full = dict(lam_f=0.2, lam_mse=0.001, lam_phase=1.0) | params
    assert math.isclose(float(motion_loss(x0, **params)), loop_loss(x0, **full), rel_tol=1e-9)


@pytest.mark.parametrize("params", [
    {},  # paper defaults
    {"lam_phase": 0.0},  # pixel + amplitude
    {"lam_f": 0.0},  # pixel only (cosine + mse)
    {"lam_f": 1.0, "lam_mse": 0.0},  # cosine + amplitude + phase
    {"lam_f": 1.0, "lam_mse": 0.7, "lam_phase": 2.0},
])
@pytest.mark.parametrize("shape", [(4, 6, 8, 8), (3, 5, 7, 5)])
def test_analytic_gradient_equals_autograd(params, shape):
    x0 = rand(*shape, seed=1).requires_grad_(True)
    (expected,) = torch.autograd.grad(motion_loss(x0, **params), x0)
    got = motion_loss_grad(x0.detach(), **params)
    assert got.shape == x0.shape and got.dtype == torch.float64
    assert torch.allclose(got, expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("params", [{}, {"lam_f": 1.0, "lam_mse": 0.7, "lam_phase": 2.0}])
def test_mean_reduction_gradient_equals_autograd_and_averages(params):
    x0 = rand(3, 6, 7, 5, seed=4).requires_grad_(True)
    loss = motion_loss(x0, reduction="mean", **params)
    (expected,) = torch.autograd.grad(loss, x0)
    assert torch.allclose(motion_loss_grad(x0.detach(), reduction="mean", **params), expected, rtol=1e-6, atol=1e-12)
    # mean = the sums divided by the pair count (cosine) and the element count (the rest)
    p_sum, f_sum = motion_loss_terms(x0.detach(), reduction="sum")
    p_mean, f_mean = motion_loss_terms(x0.detach(), reduction="mean")
    pairs, elems = 4, 4 * 3 * 7 * 5
    assert math.isclose(float(f_mean), float(f_sum) / elems, rel_tol=1e-12)
    p_cos, _ = motion_loss_terms(x0.detach(), lam_mse=0.0, reduction="sum")
    assert math.isclose(float(p_mean), float(p_cos) / pairs + (float(p_sum) - float(p_cos)) / elems, rel_tol=1e-12)
    with pytest.raises(ValueError, match="reduction"):
        motion_loss_grad(x0.detach(), reduction="max")


def _term_grads(x0, reduction):
    """Gradient norm of each VMCR term at the paper's weights (lam_f 0.2, lam_mse 0.001, lam_phase 1)."""
    cos = motion_loss_grad(x0, lam_f=0.0, lam_mse=0.0, reduction=reduction)
    mse = motion_loss_grad(x0, lam_f=0.0, lam_mse=0.001, reduction=reduction) - cos
    amp = motion_loss_grad(x0, lam_f=0.2, lam_mse=0.0, lam_phase=0.0, reduction=reduction) - cos
    phase = motion_loss_grad(x0, lam_f=0.2, lam_mse=0.0, lam_phase=1.0, reduction=reduction) - cos - amp
    return {k: float(v.norm()) for k, v in dict(cos=cos, mse=mse, amp=amp, phase=phase).items()}


def test_term_gradient_magnitudes_at_wan_480p():
    """Why omega depends on resolution under ``sum``: at a Wan-480p latent (16 x 60 x 104, 5 frames,
    unit-Gaussian x0) the gradient norms measured were, under ``sum``, cos 5.5e-3, mse 8.3,
    amplitude 1.65e4, phase 5.6e2 (the amplitude term ~3e6 x the cosine term) and the frequency
    terms grow 4x when h*w does (30 x 52 -> 60 x 104); under ``mean`` cos 1.8e-3, mse 2.8e-5,
    amplitude 5.5e-2, phase 1.9e-3, the amplitude norm the same at both sizes."""
    big = torch.randn(16, 5, 60, 104, generator=torch.Generator().manual_seed(0))
    small = torch.randn(16, 5, 30, 52, generator=torch.Generator().manual_seed(0))
    s_big, s_small = _term_grads(big, "sum"), _term_grads(small, "sum")
    m_big, m_small = _term_grads(big, "mean"), _term_grads(small, "mean")
    assert all(v > 0 for v in (*s_big.values(), *m_big.values()))
    assert s_big["amp"] > 1e5 * s_big["cos"] and s_big["phase"] > 1e4 * s_big["cos"]
    assert 3.5 < s_big["amp"] / s_small["amp"] < 4.5  # ~ h*w: a fixed omega moves each element sqrt(h*w) more
    assert 0.9 < m_big["amp"] / m_small["amp"] < 1.1  # mean: resolution-independent
    assert m_big["amp"] < 1e3 * m_big["cos"]


def test_each_term_has_a_nonzero_gradient():
    """So a missing term could not pass the autograd comparison by accident."""
    x0 = rand(4, 6, 8, 8, seed=2)
    pixel_only = motion_loss_grad(x0, lam_f=0.0)
    with_amp = motion_loss_grad(x0, lam_f=1.0, lam_phase=0.0)
    with_phase = motion_loss_grad(x0, lam_f=1.0, lam_phase=1.0)
    no_mse = motion_loss_grad(x0, lam_f=0.0, lam_mse=0.0)
    for a, b in [(pixel_only, with_amp), (with_amp, with_phase), (no_mse, pixel_only)]:
        assert float((a - b).abs().max()) > 1e-3


def test_vmcr_step_descends():
    x0 = rand(4, 6, 8, 8, seed=3)
    grad = motion_loss_grad(x0)
    omega = 1e-3 / float(grad.norm())  # a step of norm 1e-3: first order dominates
    z = x0.clone()
    stepped = vmcr_step(z, x0, omega=omega)
    assert torch.equal(z, x0)  # inputs untouched
    assert torch.allclose(stepped, x0 - omega * grad)
    before, after = float(motion_loss(x0)), float(motion_loss(stepped))
    assert after < before
    assert math.isclose(before - after, omega * float(grad.norm()) ** 2, rel_tol=0.1)


@pytest.mark.parametrize("num_frames", [1, 2])
def test_fewer_than_three_frames_gives_zero(num_frames):
    x0 = rand(2, num_frames, 4, 4)
    assert float(motion_loss(x0)) == 0.0
    assert torch.equal(motion_loss_grad(x0), torch.zeros_like(x0))
    assert torch.equal(vmcr_step(x0, x0), x0)


def test_constant_velocity_has_no_motion_loss():
    gen = torch.Generator().manual_seed(4)
    a = torch.randint(-8, 8, (3, 1, 6, 6), generator=gen).double() / 4
    b = torch.randint(-8, 8, (3, 1, 6, 6), generator=gen).double() / 4
    x0 = a + torch.arange(7, dtype=torch.float64).view(1, -1, 1, 1) * b  # exact: dyadic values
    pixel, freq = motion_loss_terms(x0)
    assert float(pixel) < 1e-12  # cos = 1, mse 0
    assert float(freq) == 0.0
    assert float(motion_loss_grad(x0, lam_mse=1.0).abs().max()) < 1e-8


def test_fp32_latents_stay_fp32():
    x0 = rand(2, 4, 4, 4).float()
    assert motion_loss_grad(x0).dtype == torch.float32
    assert vmcr_step(x0, x0).dtype == torch.float32
