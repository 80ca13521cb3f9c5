"""Causal rollout and FLEX: the KV-cached rollout equals recomputing every block with a full
block-causal (windowed, with sink) mask; the cache stays bounded; FLEX RoPE, antiphase noise
and sink properties; bad inputs refused naming the key."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from longvid_dist import RenderSpec
from longvid_dist.config import SpecError
from longvid_dist.methods.causal import causal_plan
from longvid_dist.methods.noise import antiphase_noise
from longvid_dist.methods.rope import flex_rope
from longvid_dist.models.hooks import AttentionPatch, rope_frequencies, sdpa

B, SINK, WINDOW = 2, 1, 3  # block frames, sink frames, cache window


class _MaskPatch(AttentionPatch):
    """Full-sequence attention under a boolean frame mask [F, F] (the reference)."""

    def __init__(self, frame_mask):
        self.frame_mask = frame_mask

    def attend(self, q, k, v, ctx):
        tpf = ctx.tokens_per_frame
        m = self.frame_mask.repeat_interleave(tpf, 0).repeat_interleave(tpf, 1)  # [F, F] -> [S, S]
        return sdpa(q, k, v, m)


def _visible(q_frame: int, k_frame: int) -> bool:
    """The cache's rule: own block and earlier ones, of those the sink and the last WINDOW
    frames before the query's block."""
    bq, bk = q_frame // B, k_frame // B
    if bk == bq:
        return True
    if bk > bq:
        return False
    return k_frame < SINK or k_frame >= bq * B - WINDOW


def test_kv_cached_rollout_equals_full_block_causal_recompute(tiny_adapter):
    ad = tiny_adapter
    cond = ad.encode_prompt("a cat", "", 1.0)
    g = torch.Generator().manual_seed(0)
    blocks = [torch.randn(16, B, 4, 4, generator=g) for _ in range(5)]  # clean context blocks
    ad.install(None, None)
    worst = 0.0
    for n in range(1, 6):  # block n-1 is the query block
        x = torch.cat(blocks[:n], 1)  # [C, n*B, h, w]
        t_query = 600.0
        # cached: write blocks 0..n-2 at t=0, then predict block n-1 at t_query
        cid = f"c{n}"
        for b in range(n - 1):
            ad.predict_block(blocks[b], torch.tensor(0.0), cond, cid, b * B, True, SINK, WINDOW)
        cached = ad.predict_block(blocks[n - 1], torch.tensor(t_query), cond, cid, (n - 1) * B, False, SINK, WINDOW)
        # reference: the whole sequence, per-frame timesteps, windowed block-causal mask
        F = n * B
        mask = torch.tensor([[_visible(i, j) for j in range(F)] for i in range(F)])
        ad.install(_MaskPatch(mask), None)
        t = torch.tensor([0.0] * (F - B) + [t_query] * B)
        full = ad.predict(x, t, cond)[:, F - B:]
        ad.install(None, None)
        worst = max(worst, float((cached - full).abs().max()))
    assert worst <= 1e-5, worst


def test_cache_is_bounded_in_video_length(tiny_adapter):
    """Memory stays flat: after the window fills, the cache holds sink + window frames."""
    ad = tiny_adapter
    cond = ad.encode_prompt("a cat", "", 1.0)
    ad.install(None, None)
    sizes = []
    for b in range(12):
        ad.predict_block(torch.zeros(16, B, 4, 4), torch.tensor(0.0), cond, "mem", b * B, True, SINK, WINDOW)
        sizes.append(ad.caches["mem"].nbytes())
    assert ad.caches["mem"].frames() == [0] + list(range(12 * B - WINDOW, 12 * B))  # sink + last WINDOW
    assert len(set(sizes[3:])) == 1 and sizes[-1] == sizes[3]


def test_flex_rope_properties():
    theta = rope_frequencies(44, 10000.0)  # Wan2.1's 44-dim temporal RoPE
    L, T = 256, 1024  # long enough a training clip that all three regimes occur
    out = flex_rope(theta, L, T, alpha=1, beta=32)
    r = L * theta / (2 * math.pi)
    hi, lo = r >= 32, r <= 1
    assert hi.any() and lo.any()
    assert np.array_equal(out[hi], theta[hi])  # high exposure: kept
    assert np.allclose(out[lo], theta[lo] * L / T)  # low exposure: interpolated
    mid = ~hi & ~lo
    gamma = (r[mid] - 1) / 31
    assert np.allclose(out[mid], (1 - gamma) * theta[mid] * L / T + gamma * theta[mid])  # linear ramp
    assert np.all(out <= theta + 1e-15) and np.array_equal(flex_rope(theta, L, L), theta)


def test_antiphase_covariance():
    z = antiphase_noise(torch.Generator().manual_seed(0), (20000, 4, 1, 1), rho=-0.3)  # frames on axis 1
    c = np.corrcoef(z[:, :, 0, 0].T.numpy())
    for d in range(1, 4):
        assert abs(np.diag(c, d).mean() - (-0.3) ** d) < 0.02
    assert abs(z.var().item() - 1) < 0.02


def test_sink_is_visible_to_every_query():
    plan = causal_plan(dict(block_frames=3, timesteps=[1000, 500], shift=5.0, context_noise=0, local_window=3,
                            sink_frames=3), 30, 4)
    from longvid_dist.models.kvcache import KVCache

    c = KVCache(plan.sink_frames, plan.local_window)
    frames = []
    for s in range(0, 30, 3):
        frames = frames + list(range(s, s + 3))
        frames = [f for f in frames if f < c.sink or f >= s + 3 - c.window]
        assert {0, 1, 2} <= set(frames)  # every later block's queries see the sink


@pytest.mark.parametrize("recipe, model, key", [
    ("plan: {kind: causal, block_frames: 4, local_window: 2}", "tiny-wan", "plan.local_window"),
    ("plan: {kind: direct}\nrope: {kind: flex}", "tiny-ltx", "temporal_rope"),
])
def test_bad_inputs_are_refused(tmp_path, recipe, model, key):
    path = tmp_path / "r.yaml"
    path.write_text(recipe + "\n")
    with pytest.raises((SpecError, ValueError)) as e:
        RenderSpec(prompt="a cat", model=model, recipe=str(path), frames=41, out=str(tmp_path / "v.mp4"))
    assert key in str(e.value) and "\n" not in str(e.value)
    assert not list(tmp_path.glob("v.mp4*"))


def test_flex_renders_and_resumes(tmp_path):
    """The builtin flex recipe renders on tiny-wan; a render resumed from a block checkpoint
    equals an uninterrupted one."""
    from longvid_dist.api import render
    from longvid_dist.io.video import read_frames
    from longvid_dist.runtime import checkpoint
    from longvid_dist.sampling import chunks

    kw = dict(prompt="a cat", model="tiny-wan", recipe="flex", frames=49, height=32, width=32, seed=3,
              guidance=1.0, checkpoint_every=1)
    full = render(RenderSpec(out=str(tmp_path / "a.mkv"), **kw), progress=False)
    spec = RenderSpec(out=str(tmp_path / "b.mkv"), **kw)
    real = chunks.rollout

    def dying(*a, on_segment=None, **k):
        def stop(pos):
            on_segment(pos)
            if pos.next_segment == 2:
                raise KeyboardInterrupt
        return real(*a, on_segment=stop, **k) if on_segment else real(*a, **k)

    chunks.rollout = lambda plan, planner, ex, sp, on_segment=None, resume=None: dying(
        plan, planner, ex, sp, on_segment=on_segment, resume=resume)
    try:
        with pytest.raises(KeyboardInterrupt):
            render(spec, progress=False)
    finally:
        chunks.rollout = real
    assert checkpoint.load(checkpoint.checkpoint_path(spec.out), spec)["next_step"] == 2
    resumed = render(RenderSpec(out=str(tmp_path / "b.mkv"), resume=True, **kw), progress=False)
    assert resumed.frames == full.frames == 49
    assert np.array_equal(read_frames(resumed.out), read_frames(full.out))
