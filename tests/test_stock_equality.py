"""The key oracle: with recipe ``direct`` the library reproduces diffusers' stock
``WanPipeline`` bit for bit -- initial noise, guidance, scheduler steps and the streamed
VAE decode -- for the same prompt, sizes, steps, guidance and seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import WanPipeline

import longvid_dist
from longvid_dist import RenderSpec
from longvid_dist.io.video import probe_video, read_frames
from longvid_dist.methods.recipes import get_recipe
from longvid_dist.runtime.executor import LocalExecutor
from longvid_dist.sampling.state import SamplerState
from longvid_dist.sampling.loop import denoise
from longvid_dist.sampling.planner import Planner
from longvid_dist.sampling.rng import keyed_generator, noise_generator

PROMPT, NEGATIVE = "a red car drives in the city at night", "blurry low quality"
FRAMES, SIZE, STEPS, SEED = 41, 64, 4, 1234
NATIVE = 21  # Wan's native clip in latent frames (81 pixel frames)


@pytest.fixture(scope="module")
def stock_pipe(tiny_path):
    pipe = WanPipeline.from_pretrained(tiny_path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def stock(stock_pipe):
    """(latent [C, F, h, w], float frames [n, H, W, 3]) of the stock pipeline for a guidance."""
    _stock_cache: dict = {}

    def run(guidance: float):
        if guidance not in _stock_cache:
            kw = dict(prompt=PROMPT, negative_prompt=NEGATIVE, num_frames=FRAMES, height=SIZE, width=SIZE,
                      num_inference_steps=STEPS, guidance_scale=guidance)
            latent = stock_pipe(**kw, generator=torch.Generator("cpu").manual_seed(SEED),
                                output_type="latent").frames
            video = stock_pipe(**kw, generator=torch.Generator("cpu").manual_seed(SEED),
                               output_type="np").frames
            assert latent.shape[0] == 1 and video.shape[0] == 1
            _stock_cache[guidance] = (latent[0], video[0])
        return _stock_cache[guidance]

    return run


def to_uint8_reference(frames: np.ndarray) -> np.ndarray:
    """Float frames in [0, 1] -> the uint8 a lossless file must hold: round to nearest."""
    return np.clip(np.rint(frames * 255), 0, 255).astype(np.uint8)


def library_denoise(adapter, recipe: str, guidance: float, seed: int, frames: int = FRAMES,
                    steps: int = STEPS, window: int | None = None):
    """Render through the library's pieces exactly as ``api.render`` wires them."""
    state = SamplerState.shared(adapter.space.make_scheduler(steps))
    latent = adapter.space.init_noise(noise_generator(seed), frames, SIZE, SIZE)
    planner = Planner(get_recipe(recipe).with_overrides(window=window), latent.shape[1], NATIVE,
                      lambda purpose, step: keyed_generator(seed, purpose, step))
    executor = LocalExecutor(adapter)
    executor.set_conditions({"main": (PROMPT, NEGATIVE)}, guidance)
    return denoise(latent, state, planner, executor), executor


@pytest.mark.parametrize("guidance", [5.0, 1.0], ids=["cfg", "no-cfg"])
def test_direct_equals_stock_pipeline(tiny_adapter, stock, guidance):
    stock_latent, stock_frames = stock(guidance)
    result, executor = library_denoise(tiny_adapter, "direct", guidance, SEED)
    assert len(result.steps) == STEPS and all(s.windows == 1 for s in result.steps)
    assert result.latent.shape == stock_latent.shape == (16, (FRAMES - 1) // 4 + 1, SIZE // 8, SIZE // 8)
    assert result.latent.dtype == stock_latent.dtype
    assert torch.equal(result.latent, stock_latent), (result.latent - stock_latent).abs().max()

    assert stock_frames.shape == (FRAMES, SIZE, SIZE, 3) and stock_frames.dtype == np.float32
    stock_uint8 = to_uint8_reference(stock_frames)
    for chunk in (1, 3):
        # float frames in [0, 1], streamed by the adapter chunk by chunk
        frames = np.concatenate(list(tiny_adapter.decode(result.latent, chunk)))
        assert frames.shape == stock_frames.shape and frames.dtype == stock_frames.dtype
        assert np.array_equal(frames, stock_frames), (chunk, np.abs(frames - stock_frames).max())
        # what the executor hands the video writer
        frames8 = np.concatenate(list(executor.decode(result.latent, chunk)))
        assert frames8.dtype == np.uint8 and np.array_equal(frames8, stock_uint8), chunk


def test_guidance_changes_the_result(stock):
    # guards the oracle: the two cases above really exercise different computations
    assert not torch.equal(stock(5.0)[0], stock(1.0)[0])


def test_render_ffv1_equals_stock(tmp_path, stock):
    _, stock_frames = stock(5.0)
    out = tmp_path / "x.mkv"
    spec = RenderSpec(prompt=PROMPT, negative_prompt=NEGATIVE, frames=FRAMES, height=SIZE, width=SIZE,
                      steps=STEPS, guidance=5.0, recipe="direct", seed=SEED, out=str(out),
                      decode_chunk=3, device="cpu", dtype="float32")
    result = longvid_dist.render(spec)
    assert result.frames == FRAMES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.mkv", "x.mkv.json"]
    written = read_frames(str(out))
    expected = to_uint8_reference(stock_frames)
    assert written.shape == expected.shape == (FRAMES, SIZE, SIZE, 3)
    assert np.array_equal(written, expected), np.abs(written.astype(int) - expected).max()
    info = probe_video(str(out))
    assert (info["frames"], info["width"], info["height"]) == (FRAMES, SIZE, SIZE)


def test_glc_is_deterministic_and_seeded(tiny_adapter):
    # window 5 on 11 latent frames: 3 dilated + several randomly shifted local windows
    runs = [library_denoise(tiny_adapter, "glc", 1.0, seed, steps=2, window=5)[0] for seed in (7, 7, 8)]
    assert all(s.windows > 4 for s in runs[0].steps)
    assert torch.equal(runs[0].latent, runs[1].latent)
    assert [s.windows for s in runs[0].steps] == [s.windows for s in runs[1].steps]
    assert not torch.equal(runs[0].latent, runs[2].latent)
    assert (runs[0].latent - runs[2].latent).abs().max() > 1e-3
