"""Wiring: what the planner and the loop pass to each method, against hand-built references on
tiny tensors (noise parameters, refinement inputs, ABAM roles, SpectralBlend's layout, gamma(t))."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from longvid_dist.methods.attention import ABAM, SpectralBlend
from longvid_dist.methods.noise import antiphase_noise, freenoise_noise, glc_reinit_noise
from longvid_dist.methods.recipes import get_recipe, recipe_from_dict
from longvid_dist.methods.refine import vmcr_step
from longvid_dist.models.hooks import AttnContext, sdpa
from longvid_dist.sampling.planner import Planner
from longvid_dist.sampling.rng import keyed_generator

SHAPE = (2, 13, 4, 6)  # [C, F, h, w]; 13 latent frames <- 49 pixel frames
NATIVE = 7


def keyed(seed=0):
    return lambda purpose, step: keyed_generator(seed, purpose, step)


class Space:
    """A latent space with Wan's flow x0 estimate and a fixed latent shape."""

    def latent_shape(self, frames, height, width):
        return SHAPE

    def init_noise(self, generator, frames, height, width):
        return torch.randn(SHAPE, generator=generator)

    def predict_x0(self, latent, pred, scheduler, step):
        return latent - scheduler.sigmas[step] * pred


def _noise(recipe):
    return Planner(recipe, SHAPE[1], NATIVE, keyed(3)).init_noise(Space(), torch.Generator().manual_seed(9), 49, 32, 48)


def test_init_noise_maps_each_recipes_parameters():
    g = lambda: keyed_generator(3, "noise", None)  # noqa: E731
    # freenoise: window/stride as given; null -> native clip and a quarter of it
    r = recipe_from_dict({"name": "n", "noise": {"kind": "freenoise", "window": 5, "stride": 2}})
    assert torch.equal(_noise(r), freenoise_noise(g(), SHAPE, 5, 2))
    assert torch.equal(_noise(get_recipe("freenoise")), freenoise_noise(g(), SHAPE, NATIVE, NATIVE // 4))
    # glc_reinit: every knob reaches the function, none swapped
    r = recipe_from_dict({"name": "n", "noise": {"kind": "glc_reinit", "window": 6, "stride": 3, "filter": "butterworth",
                                                 "d_s": 0.4, "d_t": 0.15, "order": 2, "normalize": False}})
    want = glc_reinit_noise(g(), SHAPE, 6, 3, kind="butterworth", d_s=0.4, d_t=0.15, order=2, normalize=False)
    assert torch.equal(_noise(r), want)
    assert not torch.equal(want, glc_reinit_noise(g(), SHAPE, 6, 3, kind="butterworth", d_s=0.15, d_t=0.4, order=2,
                                                  normalize=False))
    assert torch.equal(_noise(get_recipe("glc")), glc_reinit_noise(g(), SHAPE, NATIVE, NATIVE // 4))
    # antiphase rho; iid draws from the pipeline's generator
    r = recipe_from_dict({"name": "n", "noise": {"kind": "antiphase", "rho": -0.7}})
    assert torch.equal(_noise(r), antiphase_noise(g(), SHAPE, rho=-0.7))
    assert torch.equal(_noise(get_recipe("direct")), torch.randn(SHAPE, generator=torch.Generator().manual_seed(9)))


class Sched:
    """Stand-in scheduler: 0..1000 timesteps, distinct sigmas, Euler step on the flow."""

    def __init__(self, steps=4):
        self.sigmas = torch.linspace(1.0, 0.0, steps + 1) ** 2 + 0.01 * torch.arange(steps + 1)
        self.timesteps = self.sigmas[:-1] * 1000


def test_refine_uses_the_step_sigma_and_acts_on_z_next():
    recipe = recipe_from_dict({"name": "r", "refine": {"kind": "vmcr", "omega": 0.3, "lam_f": 0.5}})
    planner = Planner(recipe, SHAPE[1], NATIVE, keyed())
    sched = Sched()
    gen = torch.Generator().manual_seed(1)
    z_t, merged, z_next = (torch.randn(SHAPE, generator=gen) for _ in range(3))
    for step in range(4):
        got = planner.refine(Space(), z_next, z_t, merged, sched, step)
        x0 = z_t - sched.sigmas[step] * merged  # x0 at *this* step's sigma, from z_t and the merged prediction
        want = vmcr_step(z_next, x0, omega=0.3, lam_f=0.5)  # the update lands on z_{t-1}
        assert torch.equal(got, want)
        assert not torch.allclose(got, vmcr_step(z_next, z_t - sched.sigmas[step + 1] * merged, omega=0.3, lam_f=0.5))
        assert not torch.allclose(got, vmcr_step(z_t, x0, omega=0.3, lam_f=0.5))


class Executor:
    """Predicts a constant per path: ``g`` for global windows, ``l`` for the others."""

    def __init__(self, g=2.0, l=-1.0):
        self.space, self.g, self.l, self.calls = Space(), g, l, []

    def install(self, patches):
        self.patches = patches

    def predict(self, latent, windows):
        self.calls.append(windows)
        return [torch.full((SHAPE[0], len(w), *SHAPE[2:]), self.g if w.path == "global" else self.l) for w in windows]


class State:
    """Records what the loop hands the scheduler; the step itself is the identity."""

    def __init__(self, sched):
        self.scheduler, self.num_steps, self.merged = sched, len(sched.timesteps), []

    def noise_level(self, i):
        return self.scheduler.timesteps[i].numpy()

    def step(self, merged, i, latent):
        self.merged.append(merged.clone())
        return latent + 0.0

    def holds(self, t):
        return False


def test_loop_feeds_the_scheduler_timestep_into_gamma_and_refines_every_step(monkeypatch):
    from longvid_dist.sampling.loop import denoise

    recipe = recipe_from_dict({"name": "g", "plan": {"kind": "glc", "gamma0": 0.01, "beta": 0.002},
                               "refine": {"kind": "vmcr"}})
    planner = Planner(recipe, SHAPE[1], NATIVE, keyed())
    refined = []
    monkeypatch.setattr(planner, "refine", lambda space, nxt, lat, merged, sched, step: refined.append(step) or nxt)
    sched = Sched()
    state = State(sched)
    denoise(torch.zeros(SHAPE), state, planner, Executor())
    assert refined == [0, 1, 2, 3]
    for i, merged in enumerate(state.merged):
        t = float(sched.timesteps[i])  # 0..1000 scale
        gamma = 0.01 * math.exp(0.002 * t)  # GLC Eq. 9, gamma0 e^(beta t)
        assert torch.allclose(merged, torch.full_like(merged, gamma * 2.0 + (1 - gamma) * -1.0), atol=1e-6)
    assert len({round(float(m.mean()), 6) for m in state.merged}) == 4  # gamma moves with t


class Echo(Executor):
    """Predicts from the latent itself, so a multistep solver's history matters."""

    def predict(self, latent, windows):
        return [latent[:, list(w.frames)] * 0.9 + 0.1 for w in windows]


@pytest.mark.parametrize("scheduler", ["FlowMatchEulerDiscreteScheduler", "DPMSolverMultistepScheduler"])
def test_the_merge_buffer_is_reused_unless_a_scheduler_keeps_it(scheduler):
    """The loop merges into one buffer every step; a solver that keeps the raw model output in
    its history (DPM-Solver, epsilon) gets a new one, so the render equals fresh merges."""
    import diffusers

    from longvid_dist.sampling.loop import denoise
    from longvid_dist.sampling.state import SamplerState

    dpm = scheduler.startswith("DPM")
    kw = {"algorithm_type": "dpmsolver", "solver_order": 3, "final_sigmas_type": "sigma_min"} if dpm else {}

    def render(reuse: bool):
        planner = Planner(get_recipe("sliding"), SHAPE[1], NATIVE, keyed())
        plan, merged = planner.plan, []

        def recording(step, t):
            p = plan(step, t)

            def merge(preds, out=None):
                merged.append(p.merge(preds, out=out if reuse else None))
                return merged[-1]
            return replace(p, merge=merge)

        planner.plan = recording
        sched = getattr(diffusers, scheduler)(**kw)
        sched.set_timesteps(5)
        latent = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
        out = denoise(latent, SamplerState.shared(sched), planner, Echo()).latent
        return out, len({m.data_ptr() for m in merged})

    (reused, buffers), (fresh, _) = render(True), render(False)
    assert torch.equal(reused, fresh)
    assert buffers == (5 if dpm else 1)


def test_abam_roles_per_path():
    """Each path's first window anchors that path's followers (GLC Eq. 10); roles per path."""
    planner = Planner(get_recipe("glc"), SHAPE[1], NATIVE, keyed())
    wins = planner.plan(0, 999.0).windows
    for path in ("global", "local"):
        ws = [w for w in wins if w.path == path]
        assert len(ws) >= 2 and ws[0].role == "anchor" and ws[0].anchor is None
        assert all(w.role == "follow" and w.anchor == ws[0].frames for w in ws[1:])
    assert {w.anchor for w in wins if w.role == "follow"} == {w.frames for w in wins if w.role == "anchor"}
    # the patch: a follower mixes its keys/values with its own anchor's, frame-aligned
    gen = torch.Generator().manual_seed(0)
    q, k, v, ka, va = (torch.randn(1, 6, 2, 4, generator=gen) for _ in range(5))
    patch, store = ABAM(lam=0.3), {}
    ctx = AttnContext(layer=1, branch="cond", grid=(3, 1, 2), role="anchor", anchor_key="A", store=store)
    assert torch.equal(patch.attend(q, ka, va, ctx), sdpa(q, ka, va))
    ctx.role = "follow"
    want = sdpa(q, 0.3 * k + 0.7 * ka, 0.3 * v + 0.7 * va)
    assert torch.allclose(patch.attend(q, k, v, ctx), want, atol=1e-6)
    ctx.anchor_key = "B"  # another path's anchor is not this one's
    with pytest.raises(KeyError):
        patch.attend(q, k, v, ctx)


def test_spectral_blend_layout_and_filter_against_a_dense_reference():
    """Tokens are frame-major (f, y, x); per head channel the branches are 3D fields [F, h, w]
    blended by FreeInit's Gaussian (cutoffs d_t on frames, d_s on space)."""
    f, h, w, nh, d, band, d_s, d_t = 9, 3, 4, 2, 3, 2, 0.5, 0.2
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, f * h * w, nh, d, generator=gen, dtype=torch.float64) for _ in range(3))
    ctx = AttnContext(grid=(f, h, w))
    got = SpectralBlend(band=band, d_s=d_s, d_t=d_t).attend(q, k, v, ctx)
    # dense reference, token s = (fi * h + y) * w + x
    fr = torch.arange(f * h * w) // (h * w)
    mask = (fr.view(-1, 1) - fr.view(1, -1)).abs() <= band
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
    glob = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)
    loc = torch.einsum("bhqk,bkhd->bqhd", scores.masked_fill(~mask, float("-inf")).softmax(-1), v)
    ft, fy, fx = (2 * torch.fft.fftfreq(n, dtype=torch.float64) for n in (f, h, w))
    filt = torch.exp(-((ft / d_t).view(-1, 1, 1) ** 2 + (fy / d_s).view(1, -1, 1) ** 2
                       + (fx / d_s).view(1, 1, -1) ** 2) / 2)
    want = torch.empty_like(glob)
    for hd in range(nh):
        for c in range(d):
            g3 = torch.stack([glob[0, (fi * h) * w:(fi + 1) * h * w, hd, c].view(h, w) for fi in range(f)])
            l3 = torch.stack([loc[0, (fi * h) * w:(fi + 1) * h * w, hd, c].view(h, w) for fi in range(f)])
            out = torch.fft.ifftn(torch.fft.fftn(g3) * filt + torch.fft.fftn(l3) * (1 - filt)).real
            want[0, :, hd, c] = out.reshape(-1)
    assert torch.allclose(got.double(), want, atol=1e-5)
    # swapping the cutoffs, or the branches, is a different blend
    swapped = SpectralBlend(band=band, d_s=d_t, d_t=d_s).attend(q, k, v, ctx)
    assert float((swapped.double() - want).abs().max()) > 1e-3


def test_resolved_recipe_and_band_follow_the_model():
    p = Planner(get_recipe("freelong"), 31, 21, keyed())
    assert p.resolved()["attention"]["band"] == 10 and p.patches()["attention"][0]["band"] == 10
    assert Planner(get_recipe("freespec-attn"), 31, 13, keyed()).patches()["attention"][0]["band"] == 6
    plan = Planner(get_recipe("freenoise"), 31, 21, keyed()).resolved()
    assert (plan["plan"]["window"], plan["plan"]["stride"]) == (21, 5)
    assert (plan["noise"]["window"], plan["noise"]["stride"]) == (21, 5)
    fl = Planner(get_recipe("freeloc"), 31, 21, keyed(), tokens_per_frame=1560).resolved()["attention"]
    from longvid_dist.methods.freeloc import tsa_default_ds, vrpr_params

    vp = vrpr_params(31)
    assert (fl["W1"], fl["W2"], fl["G1"], fl["G2"], fl["clip"]) == (vp.W1, vp.W2, vp.G1, vp.G2, vp.clip)
    assert fl["Ds"] == tsa_default_ds(1560) == 194
    short = Planner(get_recipe("sliding"), 10, 21, keyed()).resolved()["plan"]
    assert short["runs_as"] == "direct" and short["window"] == 10
