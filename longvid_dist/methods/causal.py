"""Causal rollout as a chunked plan: blocks of a few latent frames, each denoised with a short
timestep list and written into a rolling KV cache.

Huang et al. 2025, "Self Forcing: Bridging the Train-Test Gap in Autoregressive Video
Diffusion", §3 (few-step block denoising: x0 prediction re-noised to the next timestep; the
clean block re-run to write its keys/values into a rolling cache) and Yang et al. 2025,
"LongLive: Real-time Interactive Long Video Generation", §3 (a local attention window plus
sink frames that are never evicted). FLEX (Li et al., "Train Short, Inference Long: Training-free
Horizon Extension for Autoregressive Video Generation", "Inference-only Attention Sink") adds an
inference-only sink on top of such a model (``sink_frames``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .forcing import Segment
from .registry import NUM, Param, num_range, register


@dataclass(frozen=True)
class CausalPlan:
    """A resolved causal rollout, in latent frames."""

    num_frames: int
    """Latent frames of the video."""
    block_frames: int
    """Latent frames per block."""
    timesteps: tuple[float, ...]
    """Denoising timesteps of each block on the 0..1000 scale, before the shift."""
    shift: float
    """Flow shift warping the timesteps: ``s' = shift s / (1 + (shift - 1) s)``, ``s = t / 1000``."""
    context_noise: float
    """Timestep of the clean re-run that writes the cache (0: clean)."""
    local_window: int
    """Latent frames of the rolling cache before each block."""
    sink_frames: int
    """First latent frames of the video kept in the cache for good (attention sink)."""

    def segments(self) -> list[Segment]:
        """One segment per block (the last may be shorter)."""
        return [Segment(i, min(self.block_frames, self.num_frames - s), 0, 0)
                for i, s in enumerate(range(0, self.num_frames, self.block_frames))]

    def sigmas(self) -> list[float]:
        """Flow sigmas of the block's denoising timesteps, warped by ``shift``."""
        out = []
        for t in self.timesteps:
            s = t / 1000.0
            out.append(self.shift * s / (1 + (self.shift - 1) * s))
        return out


def causal_plan(params, num_frames, temporal, rng=None) -> CausalPlan:
    """Causal rollout (Self Forcing §3, LongLive §3): blocks, few steps, rolling KV cache."""
    p = params
    return CausalPlan(num_frames, p["block_frames"], tuple(float(t) for t in p["timesteps"]), float(p["shift"]),
                      float(p["context_noise"]), p["local_window"], p["sink_frames"])


def _check(recipe, section) -> str | None:
    p = section.params
    if p["local_window"] < p["block_frames"]:
        return (f"plan.local_window: {p['local_window']} latent frames is shorter than a block "
                f"(plan.block_frames {p['block_frames']})")
    return None


def _timesteps_ok(v) -> bool:
    return len(v) >= 1 and all(isinstance(t, (int, float)) and 0 < t <= 1000 for t in v) and list(v) == sorted(
        v, reverse=True)


register("plan", "causal", causal_plan, {
    "block_frames": Param((int,), 3, "an integer >= 1 (latent frames per block; Self-Forcing 3)", lambda v: v >= 1),
    "timesteps": Param((list,), [1000, 750, 500, 250], "a decreasing list of timesteps in (0, 1000]",
                       _timesteps_ok),
    "shift": Param(NUM, 5.0, "a number > 0 (flow shift of the timesteps; Self-Forcing 5)",
                   num_range(0, lo_open=True)),
    "context_noise": Param(NUM, 0, "a number in [0, 1000) (timestep of the cache-writing re-run)",
                           num_range(0, 1000, hi_open=True)),
    "local_window": Param((int,), 12, "an integer >= 1 (latent frames of the rolling KV cache; LongLive 12)",
                          lambda v: v >= 1),
    "sink_frames": Param((int,), 0, "an integer >= 0 (latent frames never evicted: the attention sink)",
                         lambda v: v >= 0),
}, requires=("per_frame_timesteps", "attention_patches", "temporal_rope", "kv_cache_rollout"), check=_check,
         chunked=True, sp_modes=())  # one block at a time against one replica's KV cache: nothing to split


