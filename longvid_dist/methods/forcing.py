"""Diffusion forcing (SkyReels-V2 DF) as a chunked plan: segments of a long video and the
per-frame timestep schedule inside each, as pure functions of integers.

Chen et al. 2025, "SkyReels-V2: Infinite-length Film Generative Model", §3.4 (diffusion
forcing, asynchronous "denoising wave") and §4 (long videos segment by segment, the last
``overlap_history`` frames of a segment prefixing the next, re-noised to
``addnoise_condition``). Every number here is the stock diffusers pipeline's
(``SkyReelsV2DiffusionForcingPipeline``): parameters in pixel frames with its names, converted
to latent frames as it does, so a render equals it (tests/test_forcing.py).

``sink_frames`` adds FLEX's inference-only attention sink (Li et al., "Train Short,
Inference Long: Training-free Horizon Extension for Autoregressive Video Generation",
"Inference-only Attention Sink": the first frames stay visible to every later query as an
anchor of global structure) to diffusion forcing: see :class:`Segment` ``sink``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .registry import INT_OR_NULL, NUM, Geometry, Param, num_range, register


@dataclass(frozen=True)
class Segment:
    """One segment of a diffusion-forcing render, in latent frames."""

    index: int
    """Position in the render (0 first)."""
    frames: int
    """Latent frames denoised together (history prefix included)."""
    prefix: int
    """Leading frames copied from the history (clean, never stepped)."""
    keep_from: int
    """Frames ``[keep_from:]`` of the segment are appended to the video."""
    sink: int = 0
    """Attention sink (FLEX's inference-only sink): the video's first ``sink`` latent frames,
    clean from the first segment, prepended to the model input of this segment at timestep 0
    (as the stock pipeline conditions on a clean history prefix); never stepped, their
    predictions discarded. Under a block-causal mask they form the leading block(s), visible
    to every block of the segment. RoPE: the model numbers its input frames from 0, so the
    sink keeps the temporal positions ``0..sink-1`` it had when the first segment made it and
    the segment follows at ``sink..``: positions within the model's input, not in the video
    (StreamingLLM's rule for a rolling cache with sinks, Xiao et al. 2024, "Efficient Streaming
    Language Models with Attention Sinks", §3.2), so the anchor sits where the first frames
    were generated and every relative distance stays within ``sink + base`` frames."""


def latent_len(pixel_frames: int, temporal: int) -> int:
    """Latent frames of ``pixel_frames`` (``(n - 1) // temporal + 1``, as the pipeline rounds)."""
    return (pixel_frames - 1) // temporal + 1


def segments(num_frames: int, base: int, overlap: int | None, causal_block: int = 1,
             sink: int = 0) -> list[Segment]:
    """The segments of a video of ``num_frames`` latent frames: one (short mode) when
    ``overlap`` is None or the video fits ``base``; else the first segment has ``base`` frames
    and each next one re-uses the last ``overlap`` frames of the video so far as its prefix
    (cut down to a multiple of ``causal_block``) and adds at most ``base - overlap`` new ones;
    every segment after the first sees the ``sink`` first frames of the video."""
    if overlap is None or num_frames <= base:
        return [Segment(0, num_frames, 0, 0)]
    count = 1 + (num_frames - base - 1) // (base - overlap) + 1
    out = [Segment(0, base, 0, 0)]
    for k in range(1, count):
        done = k * (base - overlap) + overlap
        out.append(Segment(k, min(num_frames - done + overlap, base), overlap - overlap % causal_block, overlap,
                           sink))
    return out


def schedule(frames: int, num_steps: int, ar_step: int = 0, pre_ready: int = 0,
             causal_block: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(row, update)``, both ``[iterations, frames]``: ``row`` indexes the extended timestep
    list ``[999, t_0 .. t_{S-1}, 0]`` (0 not started, S + 1 done), ``update`` says which frames a
    scheduler step advances at that iteration. Blocks of ``causal_block`` frames share a row;
    each block starts ``ar_step`` iterations after the one before it (0: all together), and the
    first ``pre_ready`` frames (history) are done from the start."""
    done = num_steps + 1
    blocks = frames // causal_block
    prev = np.zeros(blocks, dtype=np.int64)
    prev[: pre_ready // causal_block] = done
    rows, updates = [], []
    while not np.all(prev >= done - 1):
        new = np.zeros(blocks, dtype=np.int64)
        for i in range(blocks):
            new[i] = prev[i] + 1 if i == 0 or prev[i - 1] >= done - 1 else new[i - 1] - ar_step
        new = np.clip(new, 0, done)
        updates.append((new != prev) & (new != done))
        rows.append(new)
        prev = new
    expand = np.repeat  # [I, blocks] -> [I, blocks * causal_block]
    return expand(np.stack(rows), causal_block, axis=1), expand(np.stack(updates), causal_block, axis=1)


def model_timesteps(row: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
    """The transformer's per-frame timesteps (int64) for one ``row`` of :func:`schedule`."""
    ext = np.concatenate([[999], np.asarray(timesteps).astype(np.int64), [0]])
    return ext[row]


@dataclass(frozen=True)
class ForcingPlan:
    """A resolved diffusion-forcing plan, in latent frames."""

    num_frames: int
    """Latent frames of the video."""
    base: int
    """Latent frames of one segment (the model's base clip)."""
    overlap: int | None
    """History frames prefixing each later segment; None: short mode (one segment)."""
    ar_step: int
    """Iterations each causal block lags the one before it (0: synchronous)."""
    causal_block: int
    """Latent frames per causal block (block-causal attention when > 1)."""
    addnoise: float
    """Noise level of the history prefix (0..1000 scale; 0: clean, timestep 0)."""
    sink_frames: int = 0
    """First latent frames of the video every later segment attends to (:attr:`Segment.sink`)."""

    def segments(self) -> list[Segment]:
        return segments(self.num_frames, self.base, self.overlap, self.causal_block, self.sink_frames)


def resolve_forcing(params: dict, geometry: Geometry) -> dict:
    """``base_num_frames`` null -> the model's native clip (pixel frames)."""
    out = dict(params)
    if out.get("base_num_frames") is None:
        out["base_num_frames"] = (geometry.native_window - 1) * geometry.temporal_factor + 1
    return out


def forcing_plan(params, num_frames, temporal, rng=None) -> ForcingPlan:
    """Diffusion forcing (SkyReels-V2 §3.4, §4): the stock pipeline's segments and schedule."""
    p = params
    short = p["overlap_history"] is None or num_frames <= latent_len(p["base_num_frames"], temporal)
    base = num_frames if short else latent_len(p["base_num_frames"], temporal)
    overlap = None if short else latent_len(p["overlap_history"], temporal)
    return ForcingPlan(num_frames, base, overlap, p["ar_step"], p["causal_block_size"],
                       float(p["addnoise_condition"]), p.get("sink_frames", 0))


def check_forcing(p: dict, geometry: Geometry) -> str | None:
    """A conflict of the resolved plan with the video (one line naming the key), or None."""
    num_frames, temporal = geometry.num_frames, geometry.temporal_factor
    base, ov, cb = p["base_num_frames"], p["overlap_history"], p["causal_block_size"]
    msg = _check_params(p)
    if msg:
        return msg
    sink = p.get("sink_frames", 0)
    if sink >= latent_len(base, temporal):
        return (f"plan.sink_frames: {sink} must be fewer than the first segment's {latent_len(base, temporal)} "
                f"latent frames (plan.base_num_frames {base})")
    plan = forcing_plan(p, num_frames, temporal)
    for s in plan.segments():
        if s.frames % cb:
            return (f"plan.causal_block_size: {cb} does not divide a segment of {s.frames} latent frames "
                    f"(base_num_frames {base}, overlap_history {ov}, {num_frames} latent frames)")
    return None


def _check_params(p: dict) -> str | None:
    """A conflict between the plan's own parameters (one line naming the key), or None."""
    base, ov, cb, sink = p["base_num_frames"], p["overlap_history"], p["causal_block_size"], p.get("sink_frames", 0)
    if base is not None and ov is not None and ov >= base:
        return f"plan.overlap_history: {ov} must be smaller than plan.base_num_frames {base}"
    if sink and ov is None:
        return (f"plan.sink_frames: {sink} needs long mode (plan.overlap_history set): a short render is one "
                f"segment, with no later segment to see the sink")
    if sink % cb:
        return (f"plan.sink_frames: {sink} must be a multiple of plan.causal_block_size {cb} (the sink forms "
                f"whole leading blocks of the block-causal mask)")
    return None


def _check(recipe, section) -> str | None:
    return _check_params(section.params)


PIXELS = "pixel frames, 4k + 1"
register("plan", "diffusion_forcing", forcing_plan, {
    "base_num_frames": Param(INT_OR_NULL, None, f"null (the model's native clip) or {PIXELS} >= 1",
                             lambda v: v >= 1),
    "overlap_history": Param(INT_OR_NULL, None, f"null (short mode: one segment) or {PIXELS} >= 1",
                             lambda v: v >= 1),
    "ar_step": Param((int,), 0, "an integer >= 0 (0 synchronous; SkyReels recommends 5 asynchronous)",
                     lambda v: v >= 0),
    "causal_block_size": Param((int,), 1, "an integer >= 1 (latent frames per causal block; 5 with ar_step > 0)",
                               lambda v: v >= 1),
    "addnoise_condition": Param(NUM, 0, "a number in [0, 1000) (SkyReels recommends 20)", num_range(0, 1000,
                                                                                                  hi_open=True)),
    "sink_frames": Param((int,), 0, "an integer >= 0 (latent frames at the start of the video every later "
                         "segment attends to: FLEX's inference-only sink; 0 none)", lambda v: v >= 0),
}, requires=lambda p: {"per_frame_timesteps"} | ({"block_causal_attention"} if p.get("causal_block_size", 1) > 1
                                                  else set()),
         check=_check, resolve=resolve_forcing, chunked=True,
         check_video=check_forcing)
