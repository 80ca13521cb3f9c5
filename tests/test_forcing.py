"""SkyReels-V2 diffusion forcing: the library's render equals the stock
``SkyReelsV2DiffusionForcingPipeline`` bit for bit (CPU, fp32) in short mode, long mode
(``overlap_history`` + ``addnoise_condition``) and asynchronous mode (``ar_step`` > 0,
``causal_block_size``), and bad plan parameters are refused with one line naming the key.
With ``sink_frames`` (FLEX's inference-only sink) the first frames are visible to every frame
of every later segment, and a render with it resumes to the same video."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longvid_dist import RenderSpec
from longvid_dist.config import SpecError
from longvid_dist.methods.forcing import Segment, forcing_plan, schedule, segments
from longvid_dist.runtime.executor import LocalExecutor
from longvid_dist.sampling.chunks import denoise_forcing, predict_segment

PROMPT, NEGATIVE = "a red car drives in the city at night", "blurry low quality"
SIZE, STEPS, SEED, GUIDANCE = 32, 4, 1234, 5.0
DEFAULTS = dict(base_num_frames=97, overlap_history=None, ar_step=0, causal_block_size=1, addnoise_condition=0,
                sink_frames=0)

MODES = {
    "short": (41, {}),
    "long": (41, dict(base_num_frames=17, overlap_history=9, addnoise_condition=20)),
    "async": (33, dict(ar_step=2, causal_block_size=3)),
    "async-long": (61, dict(base_num_frames=29, overlap_history=13, addnoise_condition=20, ar_step=1,
                            causal_block_size=2)),
}


def stock_latent(path: str, frames: int, mode: dict) -> torch.Tensor:
    """The stock pipeline's latent; the global generator is seeded with the seed right before
    the call (the prefix noise of long/async mode comes from it). Reloaded per call: a
    ``causal_block_size`` rewrites the transformer's config for good."""
    from diffusers import SkyReelsV2DiffusionForcingPipeline

    pipe = SkyReelsV2DiffusionForcingPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(SEED)
    out = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_frames=frames, height=SIZE, width=SIZE,
               num_inference_steps=STEPS, guidance_scale=GUIDANCE, generator=torch.Generator().manual_seed(SEED),
               output_type="latent", **mode).frames
    return out[0]


@pytest.mark.parametrize("mode", list(MODES))
def test_forcing_equals_stock_pipeline(df_path, df_adapter, mode):
    frames, params = MODES[mode]
    expected = stock_latent(df_path, frames, params)
    plan = forcing_plan({**DEFAULTS, **params}, (frames - 1) // 4 + 1, 4)
    executor = LocalExecutor(df_adapter)
    executor.set_conditions({"main": (PROMPT, NEGATIVE)}, GUIDANCE)
    torch.manual_seed(99)  # global state left by anything else must not matter
    result = denoise_forcing(plan, df_adapter.space, executor, STEPS, SIZE, SIZE, SEED)
    assert result.latent.shape == expected.shape
    assert torch.equal(result.latent, expected), (result.latent - expected).abs().max()


def test_render_writes_the_stock_video(df_path, tmp_path):
    """Through ``render`` (recipe file, CLI path): the decoded video equals the stock decode."""
    from diffusers import SkyReelsV2DiffusionForcingPipeline

    from longvid_dist.api import render
    from longvid_dist.io.video import read_frames

    frames, params = MODES["long"]
    recipe = tmp_path / "df.yaml"
    recipe.write_text("plan: {kind: diffusion_forcing, base_num_frames: 17, overlap_history: 9, "
                      "addnoise_condition: 20}\n")
    spec = RenderSpec(prompt=PROMPT, negative_prompt=NEGATIVE, model="tiny-skyreels-df", recipe=str(recipe),
                      frames=frames, height=SIZE, width=SIZE, steps=STEPS, guidance=GUIDANCE, seed=SEED,
                      out=str(tmp_path / "v.mkv"), checkpoint_every=1)
    res = render(spec, progress=False)
    assert res.frames == frames
    pipe = SkyReelsV2DiffusionForcingPipeline.from_pretrained(df_path)
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(SEED)
    video = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_frames=frames, height=SIZE, width=SIZE,
                 num_inference_steps=STEPS, guidance_scale=GUIDANCE, generator=torch.Generator().manual_seed(SEED),
                 output_type="np", **params).frames[0]
    ref = np.clip(np.rint(video * 255), 0, 255).astype(np.uint8)
    assert np.array_equal(read_frames(res.out), ref)


def test_schedule_async_wave():
    rows, upd = schedule(6, 3, ar_step=1, causal_block=2)
    # block 1 starts one iteration after block 0, block 2 after block 1
    assert rows[0].tolist() == [1, 1, 0, 0, 0, 0]
    assert rows[1].tolist() == [2, 2, 1, 1, 0, 0]
    assert upd[:, 0].sum() == 3 and upd.sum() == 3 * 6  # every frame steps exactly once per timestep
    assert [(s.frames, s.prefix, s.keep_from) for s in segments(11, 5, 3)] == [(5, 0, 0), (5, 3, 3), (5, 3, 3),
                                                                             (5, 3, 3)]


@pytest.mark.parametrize("plan, key", [
    ("{kind: diffusion_forcing, base_num_frames: 17, overlap_history: 17}", "plan.overlap_history"),
    ("{kind: diffusion_forcing, base_num_frames: 17, overlap_history: 9, causal_block_size: 2}",
     "plan.causal_block_size"),
    ("{kind: diffusion_forcing, sink_frames: -1}", "plan.sink_frames"),
    ("{kind: diffusion_forcing, sink_frames: 2}", "plan.sink_frames"),  # short mode: no later segment
    ("{kind: diffusion_forcing, base_num_frames: 17, overlap_history: 9, sink_frames: 5}", "plan.sink_frames"),
    ("{kind: diffusion_forcing, base_num_frames: 17, overlap_history: 9, causal_block_size: 5, sink_frames: 2}",
     "plan.sink_frames"),
])
def test_bad_forcing_parameters_are_refused(tmp_path, plan, key):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(f"plan: {plan}\n")
    with pytest.raises((SpecError, ValueError)) as e:
        RenderSpec(prompt="a cat", model="tiny-skyreels-df", recipe=str(recipe), frames=41,
                   out=str(tmp_path / "v.mp4"))
    msg = str(e.value)
    assert key in msg and "\n" not in msg
    assert not list(tmp_path.glob("v.mp4*"))


@pytest.mark.parametrize("causal_block", [1, 2])
def test_sink_is_visible_to_every_frame_of_a_later_segment(df_adapter, causal_block):
    """Changing the sink frames (the video's first frames) changes the prediction of every frame
    of a later segment -- under a block-causal mask its first block too -- and without the sink
    it changes nothing."""
    executor = LocalExecutor(df_adapter)
    executor.set_conditions({"main": (PROMPT, NEGATIVE)}, GUIDANCE)
    g = torch.Generator().manual_seed(0)
    c, _, h, w = df_adapter.space.latent_shape(5, SIZE, SIZE)
    history = torch.randn(c, 8, h, w, generator=g)
    other = history.clone()
    other[:, :2] = torch.randn(c, 2, h, w, generator=g)  # another sink, the rest of the history the same
    x = torch.randn(c, 6, h, w, generator=g)  # prefix (2 frames) + new frames of a later segment
    t = np.array([0, 0, 600, 600, 900, 900])
    for sink in (2, 0):
        seg = Segment(1, 6, 2, 2, sink)
        a = predict_segment(executor, x, t, seg, history, causal_block)
        b = predict_segment(executor, x, t, seg, other, causal_block)
        assert a.shape == x.shape
        moved = (a - b).abs().amax(dim=(0, 2, 3))  # per frame
        if sink:
            assert bool((moved > 0).all()), moved
        else:
            assert torch.equal(a, b)


def test_sink_render_resumes_to_the_same_video(tmp_path, monkeypatch):
    """A block-causal, asynchronous render with a sink writes the requested frames, records the
    sink in the sidecar, and resumed from a segment checkpoint equals an uninterrupted one."""
    import json

    from longvid_dist.api import render
    from longvid_dist.io.video import read_frames
    from longvid_dist.runtime import checkpoint
    from longvid_dist.sampling import chunks

    frames, params = MODES["async-long"]
    recipe = tmp_path / "df-sink.yaml"
    recipe.write_text("plan: {kind: diffusion_forcing, " + ", ".join(f"{k}: {v}" for k, v in params.items())
                      + ", sink_frames: 2}\n")
    kw = dict(prompt=PROMPT, negative_prompt=NEGATIVE, model="tiny-skyreels-df", recipe=str(recipe), frames=frames,
              height=SIZE, width=SIZE, steps=STEPS, guidance=GUIDANCE, seed=SEED, checkpoint_every=1)
    full = render(RenderSpec(out=str(tmp_path / "a.mkv"), **kw), progress=False)
    assert full.frames == frames and read_frames(full.out).shape[0] == frames
    side = json.loads(open(full.sidecar).read())
    assert side["resolved_recipe"]["plan"]["sink_frames"] == 2

    spec = RenderSpec(out=str(tmp_path / "b.mkv"), **kw)
    real = chunks.denoise_forcing

    def dying(plan, space, ex, steps, height, width, seed, on_segment=None, resume=None, conds=None):
        def stop(pos):
            on_segment(pos)
            if pos.next_segment == 2:
                raise KeyboardInterrupt
        return real(plan, space, ex, steps, height, width, seed, stop, resume, conds)

    monkeypatch.setattr(chunks, "denoise_forcing", dying)
    with pytest.raises(KeyboardInterrupt):
        render(spec, progress=False)
    monkeypatch.setattr(chunks, "denoise_forcing", real)
    assert checkpoint.load(checkpoint.checkpoint_path(spec.out), spec)["next_step"] == 2
    resumed = render(RenderSpec(out=str(tmp_path / "b.mkv"), resume=True, **kw), progress=False)
    assert np.array_equal(read_frames(resumed.out), read_frames(full.out))
