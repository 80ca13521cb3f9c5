"""``render(spec)``: the library entry point the CLI, jobs and tests call."""

from __future__ import annotations

import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata

import numpy as np

from .config import RenderSpec
from .io.video import VideoWriter, sidecar_path, write_json_atomic
from .methods.recipes import get_recipe


@dataclass
class RenderResult:
    """What a finished render produced."""

    out: str
    """Path of the video (or PNG directory)."""
    sidecar: str
    """Path of the sidecar JSON."""
    frames: int
    """Pixel frames written."""
    timings: dict = field(default_factory=dict)
    """Per-stage wall times in seconds."""


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("longvid_dist", "torch", "diffusers", "transformers", "numpy", "ray", "ffmpeg-python"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _device_dtype(spec: RenderSpec):
    import torch

    device = spec.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = spec.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    return device, getattr(torch, dtype)


def load_adapter(spec: RenderSpec, device: str = "cpu", dtype=None):
    """Load the spec's model with its family adapter (tiny models are built on first use)."""
    import diffusers
    import transformers

    from .models.registry import adapter_class
    from .models.tiny import tiny_model_path

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()

    src = spec.resolved.source
    if spec.resolved.is_tiny:
        src = str(tiny_model_path(src.split(":", 1)[1]))
    kwargs = {} if dtype is None else {"dtype": dtype}
    return adapter_class(spec.resolved.family).load(src, device=device, **kwargs)


class _Progress:
    """A tqdm bar on a terminal; plain log lines every ~10% of steps otherwise."""

    def __init__(self, total: int, desc: str):
        from tqdm import tqdm

        self.tty = sys.stderr.isatty()
        self.total, self.t0 = total, time.perf_counter()
        self.bar = tqdm(total=total, desc=desc, unit="step", disable=not self.tty)
        self.every = max(1, total // 10)

    def __call__(self, s) -> None:
        self.bar.update(1)
        self.bar.set_postfix(windows=s.windows, t=f"{s.t:.0f}")
        done = s.step + 1
        if not self.tty and (done % self.every == 0 or done == self.total):
            el = time.perf_counter() - self.t0
            print(f"[longvid] step {done}/{self.total} t={s.t:.0f} windows={s.windows} "
                  f"elapsed={el:.1f}s eta={el / done * (self.total - done):.1f}s", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Float frames in [0, 1] -> uint8, rounded."""
    return np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8)


def render(spec: RenderSpec, executor=None, progress: bool = True) -> RenderResult:
    """Render ``spec`` to ``spec.out`` (atomically) and write the sidecar JSON.

    ``executor`` defaults to a :class:`~longvid_dist.runtime.executor.LocalExecutor` on a
    replica loaded here.
    """
    from .runtime.executor import LocalExecutor
    from .sampling.loop import denoise
    from .sampling.planner import Planner
    from .sampling.rng import keyed_generator, noise_generator

    timings: dict = {}
    t_start = time.perf_counter()
    recipe = get_recipe(spec.recipe).with_overrides(window=spec.window, stride=spec.stride)
    device, dtype = _device_dtype(spec)
    adapter = load_adapter(spec, device, dtype)
    executor = executor or LocalExecutor(adapter)
    timings["load"] = time.perf_counter() - t_start

    t0 = time.perf_counter()
    executor.set_conditions({"main": (spec.prompt, spec.negative_prompt)}, spec.guidance)
    timings["encode"] = time.perf_counter() - t0

    scheduler = adapter.make_scheduler(spec.steps)
    latent = adapter.init_noise(noise_generator(spec.seed), spec.frames, spec.height, spec.width)
    native = spec.resolved.family.latent_frames(spec.resolved.family.native_frames)
    planner = Planner(recipe, latent.shape[1], native, lambda purpose, step: keyed_generator(spec.seed, purpose, step))

    t0 = time.perf_counter()
    bar = _Progress(spec.steps, "denoise") if progress else None
    try:
        result = denoise(latent, scheduler, planner, executor, on_step=bar)
    finally:
        if bar:
            bar.close()
    timings["denoise"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    with VideoWriter(spec.out, spec.width, spec.height, spec.fps) as writer:
        for chunk in executor.decode(result.latent, spec.decode_chunk):
            writer.write(to_uint8(chunk))
    timings["decode_encode"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start

    side = sidecar_path(spec.out)
    write_json_atomic(side, {
        "spec": spec.to_dict(),
        "seed": spec.seed,
        "model": {"name": spec.model, "family": spec.resolved.family.name, "source": spec.resolved.source},
        "recipe": {"name": recipe.name, **recipe.params()},
        "frames": writer.frames_written,
        "latent_frames": spec.latent_frames,
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "versions": _versions(),
        "timings": {**timings, "per_step": [asdict(s) for s in result.steps]},
    })
    return RenderResult(spec.out, side, writer.frames_written, timings)
