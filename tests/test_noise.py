"""Initial-noise strategies against their defining formulas and statistical properties."""

from __future__ import annotations

import math

import pytest
import torch

from longvid_dist.methods.noise import (
    FILTERS,
    antiphase_noise,
    freenoise_noise,
    freenoise_shuffle,
    glc_noise_reinit,
    glc_reinit_noise,
    iid_noise,
    lowpass_filter,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def frame_keys(x: torch.Tensor) -> list[tuple]:
    """Each frame of ``[C, F, h, w]`` as a hashable key (its exact values)."""
    return [tuple(x[:, f].flatten().tolist()) for f in range(x.shape[1])]


def test_iid_is_randn():
    shape = (3, 5, 4, 6)
    out = iid_noise(gen(7), shape)
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    assert torch.equal(out, torch.randn(shape, generator=gen(7)))


@pytest.mark.parametrize("num_frames,window,stride", [(20, 8, 4), (19, 8, 4), (23, 6, 6), (9, 4, 1), (5, 8, 4)])
def test_freenoise_blocks_copy_shuffled_sources(num_frames, window, stride):
    noise = torch.randn(2, num_frames, 3, 3, generator=gen(0))
    out = freenoise_shuffle(noise, window, stride, gen(1))
    assert out.shape == noise.shape
    assert torch.equal(out[:, :window], noise[:, :window])
    keys = frame_keys(out)
    originals = set(frame_keys(noise[:, :window]))
    for f in range(window, num_frames, stride):
        n = min(stride, num_frames - f)
        block, sources = keys[f:f + n], keys[f - window:f - window + stride]
        if n == stride:
            assert sorted(block) == sorted(sources)
        else:  # a short last block: distinct frames among its sources
            assert len(set(block)) == n and set(block) <= set(sources)
    assert set(keys) <= originals  # every frame is a copy of one of the first W frames
    assert torch.equal(noise, torch.randn(2, num_frames, 3, 3, generator=gen(0)))  # input untouched


def test_freenoise_reproducible_and_seed_dependent():
    noise = torch.randn(2, 40, 3, 3, generator=gen(0))
    a = freenoise_shuffle(noise, 8, 4, gen(1))
    assert torch.equal(a, freenoise_shuffle(noise, 8, 4, gen(1)))
    assert not torch.equal(a, freenoise_shuffle(noise, 8, 4, gen(2)))
    g = gen(3)
    expected = freenoise_shuffle(iid_noise(g, (2, 40, 3, 3)), 8, 4, g)
    assert torch.equal(freenoise_noise(gen(3), (2, 40, 3, 3), 8, 4), expected)


@pytest.mark.parametrize("window,stride", [(8, 9), (8, 0), (0, 0)])
def test_freenoise_rejects_bad_stride(window, stride):
    with pytest.raises(ValueError, match="stride"):
        freenoise_shuffle(torch.zeros(1, 20, 2, 2), window, stride, gen(0))


@pytest.mark.parametrize("kind", FILTERS)
@pytest.mark.parametrize("fhw", [(8, 6, 10), (7, 5, 9)])
def test_lowpass_filter_properties(kind, fhw):
    filt = lowpass_filter(*fhw, kind=kind)
    assert filt.shape == fhw
    assert float(filt.min()) >= 0 and float(filt.max()) <= 1
    assert float(filt[0, 0, 0]) == 1.0
    # even: H[k] == H[-k mod n] along every axis
    neg = torch.roll(torch.flip(filt, dims=(0, 1, 2)), shifts=(1, 1, 1), dims=(0, 1, 2))
    assert torch.equal(filt, neg)
    # non-increasing in |f| along every axis (indices 0..n//2 go from DC to the Nyquist)
    for axis, n in enumerate(fhw):
        half = filt.narrow(axis, 0, n // 2 + 1)
        assert bool((half.diff(dim=axis) <= 0).all())


def test_lowpass_filter_formulas():
    f, h, w = 8, 8, 8
    d_s, d_t, order = 0.5, 0.25, 2
    fr = 2 * torch.fft.fftfreq(8, dtype=torch.float64)
    d2 = (fr[3] / d_t) ** 2 + (fr[1] / d_s) ** 2 + (fr[6] / d_s) ** 2
    gauss = lowpass_filter(f, h, w, "gaussian", d_s, d_t)
    butter = lowpass_filter(f, h, w, "butterworth", d_s, d_t, order)
    ideal = lowpass_filter(f, h, w, "ideal", d_s, d_t)
    assert math.isclose(float(gauss[3, 1, 6]), math.exp(-float(d2) / 2), rel_tol=1e-6)
    assert math.isclose(float(butter[3, 1, 6]), 1 / (1 + float(d2) ** order), rel_tol=1e-6)
    # on the cutoff (f_t = d_t = 0.25 at index 1 of 8): Gaussian exp(-1/2), Butterworth 1/2
    assert math.isclose(float(gauss[1, 0, 0]), math.exp(-0.5), rel_tol=1e-6)
    assert math.isclose(float(butter[1, 0, 0]), 0.5, rel_tol=1e-6)
    assert float(ideal[1, 0, 0]) == 1.0 and float(ideal[2, 0, 0]) == 0.0
    assert not torch.allclose(gauss, butter, atol=1e-2)
    with pytest.raises(ValueError, match="box"):
        lowpass_filter(f, h, w, "box")
    with pytest.raises(ValueError, match="d_s"):
        lowpass_filter(f, h, w, d_s=0)


def test_noise_reinit_all_pass_and_all_stop():
    shape = (3, 10, 6, 8)
    local, eta = torch.randn(shape, generator=gen(0)), torch.randn(shape, generator=gen(1))
    ones, zeros = torch.ones(shape[1:]), torch.zeros(shape[1:])
    assert torch.allclose(glc_noise_reinit(local, eta, ones), local, atol=1e-5)
    assert torch.allclose(glc_noise_reinit(local, eta, zeros), eta, atol=1e-5)


def test_noise_reinit_matches_eq11_and_is_real():
    shape = (2, 9, 6, 7)
    local, eta = torch.randn(shape, generator=gen(0)), torch.randn(shape, generator=gen(1))
    filt = lowpass_filter(*shape[1:], kind="butterworth")
    dims = (1, 2, 3)
    mixed = torch.fft.ifftn(torch.fft.fftn(local.double(), dim=dims) * filt
                            + torch.fft.fftn(eta.double(), dim=dims) * (1 - filt), dim=dims)
    assert float(mixed.imag.abs().max()) < 1e-6  # an even filter keeps the field real
    out = glc_noise_reinit(local, eta, filt, normalize=False)
    assert out.dtype == torch.float32 and not out.is_complex()
    assert torch.allclose(out.double(), mixed.real, atol=1e-5)
    scale = math.sqrt(float((filt.double() ** 2 + (1 - filt.double()) ** 2).mean()))
    assert torch.allclose(glc_noise_reinit(local, eta, filt).double(), mixed.real / scale, atol=1e-5)


@pytest.mark.parametrize("kind", ["gaussian", "butterworth"])
def test_glc_reinit_keeps_unit_variance_per_frame(kind):
    # 16*32*32 = 16384 samples per frame: the sample variance has std ~ sqrt(2/16384) = 0.011,
    # so 0.05 is > 4 sigma; the unnormalized Gaussian fusion sits at ~0.96 (see noise.py).
    shape = (16, 64, 32, 32)
    z = glc_reinit_noise(gen(0), shape, window=16, stride=4, kind=kind)
    assert z.shape == shape and z.dtype == torch.float32
    var = z.double().var(dim=(0, 2, 3), unbiased=False)
    assert float((var - 1).abs().max()) < 0.05
    assert abs(float(z.double().mean())) < 0.02


def test_antiphase_marginals_and_correlation():
    rho = -0.5
    z = antiphase_noise(gen(0), (64, 12, 32, 32), rho=rho).double()
    # 64*32*32 = 65536 samples per frame: variance / correlation estimates have std < 0.01
    var = z.var(dim=(0, 2, 3), unbiased=False)
    assert float((var - 1).abs().max()) < 0.03
    for k in (1, 2, 3):
        corr = (z[:, k:] * z[:, :-k]).mean()
        assert abs(float(corr) - rho ** k) < 0.03, k


@pytest.mark.parametrize("rho", [0.0, 0.3, -1.0, -1.5, 1.0])
def test_antiphase_rejects_rho_outside_open_interval(rho):
    with pytest.raises(ValueError, match="rho"):
        antiphase_noise(gen(0), (1, 4, 2, 2), rho=rho)


def test_noise_rejects_a_shape_that_is_not_a_latent():
    with pytest.raises(ValueError, match="shape"):
        iid_noise(gen(0), (2, 6, 4))


def _hand_gaussian(f, h, w, d_s, d_t):
    """FreeInit's Gaussian low-pass written out: exp(-((f_t/d_t)^2 + (f_h/d_s)^2 + (f_w/d_s)^2) / 2),
    normalized frequencies 2*fftfreq (Nyquist = 1)."""
    ft, fh, fw = (2 * torch.fft.fftfreq(n, dtype=torch.float64) for n in (f, h, w))
    d2 = (ft / d_t).view(-1, 1, 1) ** 2 + (fh / d_s).view(1, -1, 1) ** 2 + (fw / d_s).view(1, 1, -1) ** 2
    return torch.exp(-d2 / 2)


def test_glc_reinit_noise_against_a_hand_reference():
    """Local (shuffled) noise in the low band, eta in the high band, spatial and temporal cutoffs
    each on their own axes: swapping the two noises or the two cutoffs fails this test."""
    from longvid_dist.methods.noise import freenoise_shuffle, glc_reinit_noise

    shape, window, stride, d_s, d_t = (2, 12, 6, 8), 4, 1, 0.45, 0.1
    got = glc_reinit_noise(gen(5), shape, window, stride, d_s=d_s, d_t=d_t, normalize=False)
    g = gen(5)  # draw order: local noise, shuffle permutations, eta
    local = freenoise_shuffle(torch.randn(shape, generator=g), window, stride, g)
    eta = torch.randn(shape, generator=g)
    dims = (1, 2, 3)

    def fuse(lo, hi, ds, dt):
        filt = _hand_gaussian(*shape[1:], ds, dt)
        return torch.fft.ifftn(torch.fft.fftn(lo.double(), dim=dims) * filt
                               + torch.fft.fftn(hi.double(), dim=dims) * (1 - filt), dim=dims).real

    want = fuse(local, eta, d_s, d_t)
    assert torch.allclose(got.double(), want, atol=1e-5)
    for wrong in (fuse(eta, local, d_s, d_t), fuse(local, eta, d_t, d_s)):
        assert float((got.double() - wrong).abs().max()) > 0.1
    # normalize divides by sqrt(mean(H^2 + (1 - H)^2)) of that same filter
    filt = _hand_gaussian(*shape[1:], d_s, d_t)
    scale = math.sqrt(float((filt ** 2 + (1 - filt) ** 2).mean()))
    normed = glc_reinit_noise(gen(5), shape, window, stride, d_s=d_s, d_t=d_t)
    assert torch.allclose(normed.double(), want / scale, atol=1e-5)
