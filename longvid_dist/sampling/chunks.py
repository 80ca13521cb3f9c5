"""The chunk driver: chunked plans (diffusion forcing) made segment after segment.

The window loop (:mod:`.loop`) steps one latent of fixed length; a chunked plan's latent
grows segment by segment, each segment with one scheduler per latent frame
(:meth:`SamplerState.frames`) and the per-frame schedule of :mod:`longvid_dist.methods.forcing`.
It shares everything else with the loop: the executor's ``predict`` on :class:`Window` s that
carry per-frame timesteps, :class:`StepStats`, and checkpoints (the history so far and the two
generators' states, after every finished segment; ``--resume`` restarts from the last one).

Randomness (DESIGN decision 3) stays here: each segment's fresh noise is drawn from the
render's noise generator (``Generator().manual_seed(seed)``, as the stock pipeline draws it,
segment after segment), and the noise added to the history prefix from a second generator
seeded with the same seed, standing in for the global generator the stock pipeline draws it
from (``randn_like``), in the same order -- never from torch's global state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..methods.causal import CausalPlan
from ..methods.forcing import ForcingPlan, model_timesteps, schedule
from ..methods.windows import Window
from ..runtime.executor import CacheLost
from .loop import LoopResult, StepStats
from .rng import noise_generator
from .state import SamplerState


@dataclass
class ChunkPosition:
    """Where a chunked render stands: what a checkpoint holds."""

    next_segment: int
    """Index of the first segment not finished."""
    history: torch.Tensor | None
    """Latent of the video so far ``[C, n, h, w]`` (None before the first segment)."""
    generators: dict[str, torch.Tensor]
    """``get_state()`` of the ``noise`` and ``prefix`` generators after the finished segments."""


def denoise_forcing(plan: ForcingPlan, space, executor, steps: int, height: int, width: int, seed: int,
                    on_segment: Callable[[ChunkPosition], None] | None = None,
                    resume: ChunkPosition | None = None, conds=None) -> LoopResult:
    """Diffusion forcing over ``plan``'s segments: per segment, fresh noise with the history
    prefix copied in, then every iteration of the per-frame schedule: noise the prefix to
    ``addnoise``, predict the whole segment (block-causal, after the plan's attention sink if
    any: :func:`predict_segment`), step the frames the schedule advances with their own
    schedulers. Returns the clean latent of the whole video."""
    gens = {"noise": noise_generator(seed), "prefix": torch.Generator("cpu").manual_seed(seed)}
    history = None
    start = 0
    if resume is not None:
        start, history = resume.next_segment, resume.history
        for k, g in gens.items():
            g.set_state(resume.generators[k])
    result = LoopResult(history)
    temporal = space.temporal
    factor = 0.001 * plan.addnoise
    for seg in plan.segments()[start:]:
        latent = space.init_noise(gens["noise"], (seg.frames - 1) * temporal + 1, height, width)  # [C, n, h, w]
        p = seg.prefix
        if p:
            latent[:, :p] = history[:, history.shape[1] - seg.keep_from:][:, :p]
        state = SamplerState.frames(space.make_scheduler(steps), seg.frames, in_place=True)  # the stock quirk
        rows, updates = schedule(seg.frames, steps, plan.ar_step, p, plan.causal_block)
        timesteps = state.scheduler.timesteps.numpy()
        for i, (row, update) in enumerate(zip(rows, updates)):
            t_model = model_timesteps(row, timesteps)
            x = latent
            if factor > 0 and p:
                x = latent.clone()
                x[:, :p] = x[:, :p] * (1.0 - factor) + torch.randn((1, *x[:, :p].shape), generator=gens["prefix"],
                                                                   dtype=x.dtype)[0] * factor
                t_model[:p] = plan.addnoise
            first = (0 if history is None else history.shape[1]) - seg.keep_from  # video frame of row 0
            cond = "main" if conds is None else conds.cond_for(tuple(range(first, first + seg.frames)))
            t0 = time.perf_counter()
            pred = predict_segment(executor, x, t_model, seg, history, plan.causal_block, cond)
            t1 = time.perf_counter()
            latent = state.step(pred, np.maximum(row - 1, 0), latent, frames=np.flatnonzero(update).tolist())
            result.steps.append(StepStats(len(result.steps), float(t_model.max()), 1, t1 - t0, 0.0,
                                          time.perf_counter() - t1))
        history = latent if history is None else torch.cat([history, latent[:, seg.keep_from:]], dim=1)
        if on_segment:
            on_segment(ChunkPosition(seg.index + 1, history, {k: g.get_state() for k, g in gens.items()}))
    result.latent = history
    return result


def predict_segment(executor, x: torch.Tensor, t_model: np.ndarray, seg, history: torch.Tensor | None,
                    causal_block: int, cond: str = "main") -> torch.Tensor:
    """The model's prediction ``[C, n, h, w]`` for a segment's latent ``x`` at per-frame timesteps
    ``t_model``, under a block-causal mask of ``causal_block`` frames. With an attention sink
    (``seg.sink``) the video's first frames, clean (``history[:, :sink]``), lead the model input
    at timestep 0 and their predictions are dropped (:attr:`~longvid_dist.methods.forcing.Segment.sink`)."""
    s = seg.sink
    if s:
        x = torch.cat([history[:, :s], x], dim=1)  # [C, s + n, h, w]
        t_model = np.concatenate([np.zeros(s, dtype=np.int64), t_model])
    n = x.shape[1]
    win = Window(tuple(range(n)), (1.0,) * n, timestep=t_model, causal_block=causal_block, cond=cond)
    return executor.predict(x, [win])[0][:, s:]


def run_chunks(planner, executor, spec, progress: bool = True, resumed: dict | None = None,
               save: Callable | None = None) -> LoopResult:
    """A render's chunked plan on ``executor`` (what :func:`longvid_dist.api.render` calls):
    checkpoints after every finished chunk through ``save(next_chunk, history, (tensors, meta))``
    and resumes from ``resumed`` (a loaded checkpoint)."""
    from ..progress import Progress

    plan = planner.chunks
    total = len(plan.segments())
    bar = Progress(total, initial=resumed["next_step"] if resumed else 0, desc="chunks", unit="chunk",
                   every=max(total // 10, 1)) if progress else None
    resume = None
    if resumed:
        resume = ChunkPosition(resumed["next_step"], resumed["latent"],
                               {k[4:]: v for k, v in resumed["tensors"].items() if k.startswith("gen.")})

    def on_segment(pos: ChunkPosition) -> None:
        if bar:
            bar.advance()
        if save and spec.checkpoint_every and pos.next_segment < total:
            save(pos.next_segment, pos.history, ({f"gen.{k}": v for k, v in pos.generators.items()},
                                                 {"chunked": type(plan).__name__}))

    try:
        if isinstance(plan, CausalPlan):
            return rollout(plan, planner, executor, spec, on_segment, resume)
        if isinstance(plan, ForcingPlan):
            return denoise_forcing(plan, executor.space, executor, spec.steps, spec.height, spec.width, spec.seed,
                                   on_segment, resume, planner.conds)
        raise TypeError(f"no chunk driver for {type(plan).__name__}")
    finally:
        if bar:
            bar.close()


def rollout(plan: CausalPlan, planner, executor, spec, on_segment=None, resume: ChunkPosition | None = None,
            cache_id: str | None = None) -> LoopResult:
    """Causal rollout: each block's fresh noise (the recipe's noise section over the whole
    video, e.g. FLEX's antiphase noise) denoised over the plan's few timesteps -- flow
    prediction -> ``x0 = x - sigma v``, re-noised to the next sigma with keyed noise -- then the
    clean block re-run at ``context_noise`` to write its keys/values into the rolling cache.
    Resuming re-writes the cache from the finished blocks (deterministic, so exact)."""
    import uuid

    cache_id = cache_id or uuid.uuid4().hex
    space = executor.space
    noise = planner.init_noise(space, noise_generator(spec.seed), spec.frames, spec.height, spec.width)
    out = torch.zeros_like(noise)  # [C, F, h, w]; frames fill in block by block
    sig = plan.sigmas()
    ctx_sigma = plan.context_noise / 1000.0
    result = LoopResult(out)
    start = resume.next_segment if resume is not None else 0
    if resume is not None:
        out[:, :resume.history.shape[1]] = resume.history

    segs = plan.segments()

    def cond(s: int, n: int) -> str:  # a storyboard's prompt(s) for the block's frames
        return planner.conds.cond_for(tuple(range(s, s + n))) if planner.conds is not None else "main"

    def call(x: torch.Tensor, t: float, b: int, s: int, write: bool) -> torch.Tensor:
        try:
            return executor.predict_block(x, t, cache_id, s, write, plan.sink_frames, plan.local_window,
                                          cond(s, x.shape[1]))
        except CacheLost:  # the replica holding the cache was restarted: re-write it, then again
            rewrite(b)
            return executor.predict_block(x, t, cache_id, s, write, plan.sink_frames, plan.local_window,
                                          cond(s, x.shape[1]))

    def write(b: int, s: int, x0: torch.Tensor) -> None:
        eps = torch.randn(x0.shape, generator=planner.rng("context_noise", b))
        xc = (1 - ctx_sigma) * x0 + ctx_sigma * eps
        call(xc, plan.context_noise, b, s, True)

    def rewrite(upto: int) -> None:
        """The cache of blocks ``0..upto-1`` written again from the finished frames (exact:
        every write is a pure function of the block and its keyed noise)."""
        for seg in segs[:upto]:
            s = seg.index * plan.block_frames
            write(seg.index, s, out[:, s:s + seg.frames])

    rewrite(start)  # a resumed rollout: the cache of the finished blocks
    for seg in segs[start:]:
        s, b = seg.index * plan.block_frames, seg.index
        x = noise[:, s:s + seg.frames]
        for j, sigma in enumerate(sig):
            t0 = time.perf_counter()
            v = call(x, sigma * 1000.0, b, s, False)
            t1 = time.perf_counter()
            x0 = x - sigma * v
            if j + 1 < len(sig):
                eps = torch.randn(x0.shape, generator=planner.rng("renoise", b * len(sig) + j))
                x = (1 - sig[j + 1]) * x0 + sig[j + 1] * eps
            result.steps.append(StepStats(len(result.steps), sigma * 1000.0, 1, t1 - t0, 0.0,
                                          time.perf_counter() - t1))
        out[:, s:s + seg.frames] = x0
        write(b, s, x0)
        if on_segment:
            on_segment(ChunkPosition(b + 1, out[:, :s + seg.frames].clone(), {}))
    result.latent = out
    return result
