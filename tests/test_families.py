"""Model families beyond Wan2.1: CogVideoX, LTX-Video, HunyuanVideo, Wan2.2 two-expert and
Wan2.2 TI2V-5B, each on its built-in tiny model (real classes, random weights, saved and
loaded with ``from_pretrained``).

The oracle per family: recipe ``direct`` equals the stock diffusers pipeline bit for bit --
the final latent (in the pipeline's own layout, converted) and the decoded float frames -- for
the same prompt, negative prompt, steps, guidance, seed, frames and size on CPU fp32.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

import longvid_dist
from longvid_dist import RenderSpec
from longvid_dist.config import SpecError
from longvid_dist.io.video import read_frames
from longvid_dist.methods.recipes import get_recipe
from longvid_dist.models.hooks import AttentionPatch
from longvid_dist.models.registry import adapter_class, resolve_model
from longvid_dist.runtime.executor import LocalExecutor
from longvid_dist.sampling.loop import denoise
from longvid_dist.sampling.planner import Planner
from longvid_dist.sampling.rng import keyed_generator, noise_generator
from longvid_dist.sampling.state import SamplerState

PROMPT, NEGATIVE, STEPS, SEED = "a red car drives in the city at night", "blurry low quality", 4, 1234

# tiny model -> (frames, size, extra stock-pipeline kwargs the adapter applies on its own)
CASES = {
    "tiny-cogvideox": (17, 32, {"max_sequence_length": 16}),  # the transformer's max_text_seq_length
    "tiny-ltx": (17, 64, {}),
    "tiny-hunyuan": (17, 32, {"prompt_template": {"template": "{}", "crop_start": 0}}),  # its longvid.json
    "tiny-wan22": (17, 64, {}),
    "tiny-wan22-ti2v": (17, 64, {}),
}
FAMILY = {"tiny-cogvideox": "cogvideox", "tiny-ltx": "ltx", "tiny-hunyuan": "hunyuan", "tiny-wan22": "wan22",
          "tiny-wan22-ti2v": "wan22-ti2v"}


@pytest.fixture(scope="session")
def family_path():
    """Folder of a built-in tiny model (built on first use, shared by the session)."""
    from longvid_dist.models.tiny import tiny_model_path

    return lambda name: str(tiny_model_path(name))


@pytest.fixture(scope="session")
def family_adapter(family_path):
    """The tiny model loaded through its family's adapter, once per session."""
    cache: dict = {}

    def get(name):
        if name not in cache:
            path = family_path(name)
            cache[name] = adapter_class(resolve_model(path).family).load(path)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def stock(family_path):
    """(pipeline latent, float frames [n, H, W, 3]) of the stock pipeline for a tiny model."""
    import diffusers

    cache: dict = {}

    def run(name, guidance):
        if (name, guidance) not in cache:
            path = family_path(name)
            cls = getattr(diffusers, json.loads(open(f"{path}/model_index.json").read())["_class_name"])
            pipe = cls.from_pretrained(path)
            pipe.set_progress_bar_config(disable=True)
            frames, size, extra = CASES[name]
            kw = dict(prompt=PROMPT, negative_prompt=NEGATIVE, num_frames=frames, height=size, width=size,
                      num_inference_steps=STEPS, guidance_scale=guidance, **extra)
            latent = pipe(**kw, generator=torch.Generator().manual_seed(SEED), output_type="latent").frames
            video = pipe(**kw, generator=torch.Generator().manual_seed(SEED), output_type="np").frames
            cache[name, guidance] = (latent, video[0])
        return cache[name, guidance]

    return run


def library_direct(adapter, name, guidance):
    """The ``direct`` recipe through the library's pieces as ``api.render`` wires them."""
    frames, size, _ = CASES[name]
    fam = adapter.family
    shape = adapter.space.latent_shape(frames, size, size)
    state = SamplerState.shared(adapter.space.make_scheduler(STEPS, shape))
    latent = adapter.space.init_noise(noise_generator(SEED), frames, size, size)
    planner = Planner(get_recipe("direct"), latent.shape[1], fam.latent_frames(fam.native_frames),
                      lambda purpose, step: keyed_generator(SEED, purpose, step))
    executor = LocalExecutor(adapter)
    executor.set_conditions({"main": (PROMPT, NEGATIVE)}, guidance)
    return denoise(latent, state, planner, executor), state


def loop_layout(adapter, z, shape):
    """The stock pipeline's output latent in the loop's ``[C, F, h, w]``."""
    convert = getattr(adapter, "from_pipeline_latent", None)
    return convert(z, shape) if convert else z[0]


@pytest.mark.parametrize("name,guidance", [(n, 5.0) for n in CASES] + [("tiny-ltx", 1.0), ("tiny-cogvideox", 1.0)],
                         ids=lambda v: str(v))
def test_direct_equals_stock_pipeline(family_adapter, stock, name, guidance):
    adapter = family_adapter(name)
    assert adapter.family.name == FAMILY[name]
    frames, size, _ = CASES[name]
    stock_latent, stock_frames = stock(name, guidance)
    result, _ = library_direct(adapter, name, guidance)
    shape = adapter.space.latent_shape(frames, size, size)
    assert tuple(result.latent.shape) == shape and result.latent.dtype == torch.float32
    ref = loop_layout(adapter, stock_latent, shape)
    assert torch.equal(result.latent, ref), (result.latent - ref).abs().max()
    assert stock_frames.shape == (frames, size, size, 3)
    for chunk in (1, 2):
        got = np.concatenate(list(adapter.decode(result.latent, chunk)))
        assert np.array_equal(got, stock_frames), (chunk, np.abs(got - stock_frames).max())
    # a decode starting mid-video after decode_context() frames of warm-up yields the rest exactly
    skip = min(2, adapter.decode_context())
    rest = np.concatenate(list(adapter.decode(result.latent, 2, skip=skip)))
    assert np.array_equal(rest, stock_frames[1 + adapter.space.temporal * (skip - 1):])


def test_wan22_switches_expert_within_a_run(family_adapter):
    adapter = family_adapter("tiny-wan22")
    assert len(adapter.experts) == 2 and adapter.boundary == 875.0
    t = adapter.space.make_scheduler(STEPS).timesteps
    assert (t >= adapter.boundary).any() and (t < adapter.boundary).any()  # both experts predict
    # the expert follows each window's timestep
    x = torch.zeros(16, 2, 8, 8)
    cond = adapter.encode_prompt(PROMPT, NEGATIVE, 1.0)
    hi, lo = adapter.predict(x, torch.tensor(900), cond), adapter.predict(x, torch.tensor(100), cond)
    adapter.experts.reverse()  # same timesteps through the other expert change the output
    try:
        assert not torch.equal(adapter.predict(x, torch.tensor(900), cond), hi)
        assert not torch.equal(adapter.predict(x, torch.tensor(100), cond), lo)
    finally:
        adapter.experts.reverse()


def test_ltx_attention_patch_and_rope_hooks(family_adapter):
    adapter = family_adapter("tiny-ltx")
    x = torch.randn(8, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    cond = adapter.encode_prompt(PROMPT, NEGATIVE, 5.0)
    t = torch.tensor(500.0)
    ref = adapter.predict(x, t, cond)

    class Raw(AttentionPatch):
        raw_qk = True

        def attend(self, q, k, v, ctx):
            pos = torch.arange(ctx.grid[0])
            return super().attend(ctx.rotate(q, pos), ctx.rotate(k, pos), v, ctx)

    try:
        adapter.install(AttentionPatch(), key="plain")  # plain attention through the hook = stock
        assert torch.equal(adapter.predict(x, t, cond), ref)
        adapter.install(Raw(), key="raw")  # the model's RoPE at frames 0..F-1 through ctx.rotate
        assert torch.allclose(adapter.predict(x, t, cond), ref, atol=1e-5)
    finally:
        adapter.install(None)
    assert torch.equal(adapter.predict(x, t, cond), ref)
    # per-frame timesteps (a timestep per token inside the model): equal levels give the same prediction
    assert torch.allclose(adapter.predict(x, torch.full((3,), 500.0), cond), ref, atol=1e-5)


class _Sub(AttentionPatch):
    """Plain attention through the generic (non-stock) path of a patch."""

    def attend(self, q, k, v, ctx):
        return super().attend(q, k, v, ctx)


class _Raw(AttentionPatch):
    """Plain attention on unrotated q/k, rotated by the model's RoPE at frames 0..F-1."""
    raw_qk = True

    def attend(self, q, k, v, ctx):
        pos = torch.arange(ctx.grid[0])
        return super().attend(ctx.rotate(q, pos), ctx.rotate(k, pos), v, ctx)


@pytest.mark.parametrize("name", ["tiny-cogvideox", "tiny-hunyuan"])
def test_joint_attention_patch_and_rope_hooks(family_adapter, name):
    """Patches on the video tokens of a joint text-video attention: the plain patch through the
    hook is stock bit for bit, a plain patch through the LSE split (text share stock) and the
    model's RoPE through ctx.rotate equal stock within float rounding; a temporal RoPE edit that
    keeps every frequency is stock, one that changes them moves the output."""
    adapter = family_adapter(name)
    c, f, h, w = adapter.space.latent_shape(17, 32, 32)
    x = torch.randn(c, f, h, w, generator=torch.Generator().manual_seed(0))
    cond = adapter.encode_prompt(PROMPT, NEGATIVE, 5.0)
    t = torch.tensor(500)
    ref = adapter.predict(x, t, cond)
    seen = []

    class Probe(AttentionPatch):
        def attend(self, q, k, v, ctx):
            seen.append((q.shape[1], ctx.grid, ctx.layer))
            return super().attend(q, k, v, ctx)

    try:
        adapter.install(AttentionPatch(), key="plain")
        assert torch.equal(adapter.predict(x, t, cond), ref)
        for patch in (_Sub(), _Raw()):
            adapter.install(patch, key=type(patch).__name__)
            assert (adapter.predict(x, t, cond) - ref).abs().max() < 1e-5
        adapter.install(Probe(), key="probe")
        adapter.predict(x, t, cond)
        g = adapter.ctx.grid
        assert [s for s, _, _ in seen] == [g[0] * g[1] * g[2]] * adapter.num_layers  # video tokens only
        assert [layer for _, _, layer in seen] == list(range(adapter.num_layers))
        adapter.install(None, lambda th: th, key="same-rope")
        assert torch.equal(adapter.predict(x, t, cond), ref)
        adapter.install(None, lambda th: th * 0.5, key="half-rope")
        assert (adapter.predict(x, t, cond) - ref).abs().max() > 1e-3
    finally:
        adapter.install(None)
    assert torch.equal(adapter.predict(x, t, cond), ref)


@pytest.mark.parametrize("name", ["tiny-cogvideox", "tiny-hunyuan"])
@pytest.mark.parametrize("recipe", ["glc", "freelong", "freespec-attn", "freeloc", "riflex"])
def test_patch_recipes_render_on_joint_attention_families(tmp_path, family_adapter, family_path, name, recipe):
    path = recipe
    if recipe == "freeloc":  # no profile ships for these tiny architectures: tiny-wan's (2 layers as well)
        from longvid_dist.methods.freeloc import PROFILE_DIR

        path = tmp_path / "freeloc.yaml"
        path.write_text(f"plan: {{kind: direct}}\nattention: {{kind: freeloc, D1: 8, D2: 24, "
                        f"profile: {PROFILE_DIR / 'tiny-wan.json'}}}\n")
    out = tmp_path / "x.mkv"
    spec = RenderSpec(prompt=PROMPT, negative_prompt=NEGATIVE, model=family_path(name), frames=41, height=32,
                      width=32, steps=2, guidance=5.0, recipe=str(path), seed=SEED, out=str(out), decode_chunk=2,
                      checkpoint_every=0)
    result = longvid_dist.render(spec, executor=LocalExecutor(family_adapter(name)), progress=False)
    assert result.frames == 41
    assert np.isfinite(read_frames(str(out)).astype(float)).all()


@pytest.mark.parametrize("name,frames,recipe", [
    ("tiny-cogvideox", 25, "sliding"), ("tiny-ltx", 41, "sliding"), ("tiny-hunyuan", 25, "sliding"),
    ("tiny-wan22", 25, "sliding"), ("tiny-wan22-ti2v", 25, "sliding"), ("tiny-ltx", 41, "glc"),
])
def test_render_with_windows(tmp_path, family_adapter, family_path, name, frames, recipe):
    size = CASES[name][1]
    out = tmp_path / "x.mkv"
    spec = RenderSpec(prompt=PROMPT, negative_prompt=NEGATIVE, model=family_path(name), frames=frames,
                      height=size, width=size, steps=2, guidance=5.0, recipe=recipe, window=3, seed=SEED,
                      out=str(out), decode_chunk=2, device="cpu", dtype="float32", checkpoint_every=0)
    assert spec.resolved.family.name == FAMILY[name] and spec.latent_frames > 3
    result = longvid_dist.render(spec, executor=LocalExecutor(family_adapter(name)), progress=False)
    assert result.frames == frames
    side = json.loads(open(f"{out}.json").read())
    assert all(s["windows"] > 1 for s in side["timings"]["per_step"])
    written = read_frames(str(out))
    assert written.shape == (frames, size, size, 3)


@pytest.mark.parametrize("model,field,kw,needle", [
    ("tiny-ltx", "frames", {"frames": 21}, "8k+1"),
    ("tiny-ltx", "height", {"height": 48}, "multiple of 32"),
    ("tiny-cogvideox", "frames", {"frames": 10}, "4k+1"),
    ("tiny-cogvideox", "width", {"width": 40}, "multiple of 16"),
    ("tiny-hunyuan", "frames", {"frames": 12}, "4k+1"),
    ("tiny-wan22-ti2v", "height", {"height": 48}, "multiple of 32"),
    ("tiny-wan22", "width", {"width": 24}, "multiple of 16"),
])
def test_frame_and_size_rules(model, field, kw, needle):
    base = {"prompt": "x", "model": model, "recipe": "direct", "frames": 17}
    with pytest.raises(SpecError, match=re.escape(needle)) as e:
        RenderSpec(**{**base, **kw})
    assert e.value.field == field


@pytest.mark.parametrize("model,recipe,missing", [
    ("tiny-ltx", "riflex", "temporal_rope"),
    ("tiny-ltx", "freeloc", "temporal_rope"),
])
def test_recipe_refused_naming_the_missing_capability(model, recipe, missing):
    with pytest.raises(SpecError, match=missing) as e:
        RenderSpec(prompt="x", model=model, recipe=recipe, frames=17)
    assert e.value.field == "recipe"


def test_local_folders_resolve_by_model_index(family_path):
    for name, fam in {**FAMILY, "tiny-wan": "wan"}.items():
        assert resolve_model(family_path(name)).family.name == fam


def test_per_frame_timesteps_refused_where_the_family_has_one_timestep(family_adapter):
    for name in ("tiny-cogvideox", "tiny-hunyuan"):
        adapter = family_adapter(name)
        assert "per_frame_timesteps" not in adapter.family.capabilities
        c, f, h, w = adapter.space.latent_shape(9, 32, 32)
        with pytest.raises(ValueError, match="one timestep"):
            adapter.predict(torch.zeros(c, f, h, w), torch.full((f,), 500), adapter.encode_prompt("x", "", 1.0))


def test_models_prints_the_support_matrix(capsys):
    from longvid_dist.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    lines = out[out.index("Support matrix"):].splitlines()
    header = lines[1].split()
    assert header == ["wan", "wan22", "wan22-ti2v", "cogvideox", "ltx", "skyreels-df", "hunyuan"]
    rows = {line.split()[0]: line for line in lines[2:] if line.strip() and not line.startswith("Capabilities")}
    assert rows["direct"].split()[1:] == ["ok"] * 7
    assert rows["glc"].split()[1:] == ["ok"] * 7  # joint-attention families take patches on their video tokens
    assert rows["riflex"].split()[1:] == ["ok", "ok", "ok", "ok", "no:", "temporal_rope", "ok", "ok"]
    assert rows["flex"].split()[1:] == ["ok", "ok", "ok", "no:", "kv_cache_rollout+per_frame_timesteps",
                                        "no:", "kv_cache_rollout+temporal_rope", "ok",
                                        "no:", "kv_cache_rollout+per_frame_timesteps"]
    for name in ("tiny-cogvideox", "tiny-ltx", "tiny-hunyuan", "tiny-wan22"):
        assert name in out
