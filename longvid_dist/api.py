"""``render(spec)``: the library entry point the CLI, jobs and tests call."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata

from .config import ParallelConfig, RenderSpec, resolve_dtype
from .io.video import VideoWriter, sidecar_path, write_json_atomic
from .methods.recipes import get_recipe
from .progress import Progress


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


def _device_dtype(spec: RenderSpec, cuda_available: bool):
    device = spec.device
    if device == "auto":
        device = "cuda" if cuda_available else "cpu"
    return device, resolve_dtype(spec.dtype, device.startswith("cuda"))


def model_source(spec: RenderSpec) -> str:
    """Where ``from_pretrained`` reads the spec's model (tiny models are built on first use)."""
    import diffusers
    import transformers

    from .models.tiny import tiny_model_path

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    src = spec.resolved.source
    if spec.resolved.is_tiny:
        src = str(tiny_model_path(src.split(":", 1)[1]))
    return src


def lora_pairs(spec: RenderSpec) -> list[tuple[str, float]]:
    """The spec's LoRA adapters as plain ``(path, scale)`` pairs, what replicas take."""
    return [(lo.path, lo.scale) for lo in spec.lora]


def load_adapter(spec: RenderSpec, device: str = "cpu", dtype: str = "float32"):
    """Load the spec's model replica with its family adapter, its LoRAs fused in (with
    ``spec.offload``: loaded on the CPU, its models moved to ``device`` only when used)."""
    import torch

    from .models.registry import adapter_class

    return adapter_class(spec.resolved.family).load_replica(model_source(spec), device, getattr(torch, dtype),
                                                            offload=spec.offload, lora=lora_pairs(spec))


def check_offload(spec: RenderSpec, parallel: ParallelConfig | None) -> None:
    """Refuse ``--offload`` for a render that will run on a CPU (one line naming the flag); a
    Ray render checks it where its workers' device is known (``RayExecutor``)."""
    if spec.offload == "none" or (parallel is not None and parallel.distributed):
        return
    import torch

    from .config import SpecError, offload_refusal

    device, _ = _device_dtype(spec, torch.cuda.is_available())
    if not device.startswith("cuda"):
        raise SpecError("offload", offload_refusal(spec.offload, device))


class _Progress(Progress):
    """Denoising steps: windows, timestep and per-worker activity after the bar; a plain log
    line every ~10% of steps when stderr is not a terminal."""

    def __init__(self, total: int, start: int, desc: str, executor=None):
        super().__init__(total, initial=start, desc=desc, unit="step", every=total // 10)
        self.executor = executor

    def _workers(self, s) -> str:
        """Per-worker activity of the step: busy time over the step's predict wall time."""
        metrics = getattr(self.executor, "metrics", None)
        if not metrics or s.predict <= 0:
            return ""
        return " ".join(f"{min(b / s.predict, 1):.0%}" for b in metrics[-1]["worker_busy"])

    def __call__(self, s, *_) -> None:
        busy = self._workers(s)
        if self.advance(windows=s.windows, t=f"{s.t:.0f}", **({"workers": busy} if busy else {})):
            self.log(f"step {s.step + 1}/{self.total} t={s.t:.0f} windows={s.windows} "
                     f"predict={s.predict:.2f}s{' workers=' + busy.replace(' ', ',') if busy else ''} "
                     f"elapsed={self.elapsed():.1f}s eta={self.eta() or 0.0:.1f}s")


def make_executor(spec: RenderSpec, parallel: ParallelConfig | None = None):
    """A ``LocalExecutor`` on a replica loaded here, or a ``RayExecutor`` when ``parallel``
    asks for Ray workers."""
    parallel = parallel or ParallelConfig()
    if not parallel.distributed:
        import torch

        from .runtime.executor import LocalExecutor

        return LocalExecutor(load_adapter(spec, *_device_dtype(spec, torch.cuda.is_available())), own_adapter=True)
    from .runtime.ray_executor import RayExecutor

    return RayExecutor(spec.resolved.family.name, model_source(spec), parallel, device=spec.device,
                       dtype=spec.dtype, offload=spec.offload, lora=lora_pairs(spec))


def storyboard_conds(spec: RenderSpec):
    """The spec's storyboard on its latent (:class:`~longvid_dist.storyboard.StoryboardConds`),
    or None without one."""
    if spec.storyboard is None:
        return None
    from .storyboard import StoryboardConds

    return StoryboardConds(spec.storyboard, spec.latent_frames, spec.resolved.family.temporal_factor,
                           spec.negative_prompt)


def check_lora(spec: RenderSpec) -> None:
    """Refuse LoRA files the spec's model cannot take (``SpecError`` naming ``lora``): keys that
    match no layer of its transformer, a pipeline without a LoRA loader. Reads the model's
    configs and the LoRA files, no model weights."""
    if not spec.lora:
        return
    from .config import SpecError
    from .models.base import check_lora as check

    try:
        check(model_source(spec), lora_pairs(spec))
    except ValueError as e:
        raise SpecError("lora", str(e).removeprefix("lora: ")) from None


def check_layout(spec: RenderSpec, parallel: ParallelConfig | None) -> None:
    """Refuse what the spec's model cannot run (``SpecError`` naming the flag): its LoRAs
    (:func:`check_lora`) and the parallel layout, reading configs only: before any worker or
    weight is loaded."""
    check_lora(spec)
    check_offload(spec, parallel)
    if parallel is not None and parallel.group_size > 1:
        from .config import SpecError
        from .methods import registry
        from .models.registry import adapter_class
        from .runtime.ray_executor import check_sequence_parallel

        recipe = get_recipe(spec.recipe)
        for mode, degree in (("ulysses", parallel.ulysses_degree), ("ring", parallel.ring_degree)):
            plan = registry.get("plan", recipe.plan.kind)
            if degree > 1 and mode not in plan.sp_modes:
                raise SpecError(f"{mode}_degree", f"plan {recipe.plan.kind} does not run under {mode} sequence "
                                                  f"parallelism (it supports: {', '.join(plan.sp_modes) or 'none'}); "
                                                  f"use --workers without --{mode}-degree")
            for a in recipe.attention_patches():
                if degree > 1 and mode not in registry.get("attention", a.kind).sp_modes:
                    raise SpecError(f"{mode}_degree", f"attention {a.kind} is not correct under {mode} sequence "
                                                      f"parallelism (it supports: "
                                                      f"{', '.join(registry.get('attention', a.kind).sp_modes) or 'none'})")
        fam = spec.resolved.family
        check_sequence_parallel(fam, adapter_class(fam), model_source(spec), parallel)


def render(spec: RenderSpec, parallel: ParallelConfig | None = None, executor=None,
           progress: bool = True, preview: bool = False, preflight: bool = True) -> RenderResult:
    """Render ``spec`` to ``spec.out`` (atomically) and write the sidecar JSON.

    Runs in-process (``LocalExecutor``) unless ``parallel`` asks for Ray workers; the video is
    the same either way. An ``executor`` passed in is reused as is and left open (its workers
    keep their model). The coordinator checkpoints every ``spec.checkpoint_every`` steps to
    ``<out>.ckpt``; ``spec.resume`` continues from it and gives the same video as an
    uninterrupted render.

    Before any model is loaded, the memory pre-flight (:func:`longvid_dist.plan_cost.preflight`)
    refuses a request that does not fit the device with a :class:`~longvid_dist.config.SpecError`
    (skipped for an ``executor`` passed in: its owner checked the layout). ``preview`` also
    writes ``<out>.preview.png``, a contact sheet of evenly spaced frames.
    """
    if preflight and executor is None:
        from .plan_cost import preflight as check_memory

        check_memory(spec, parallel)
    from .runtime import checkpoint
    from .sampling.loop import denoise
    from .sampling.planner import Planner
    from .sampling.rng import keyed_generator, noise_generator
    from .sampling.state import SamplerState

    ckpt_path = checkpoint.checkpoint_path(spec.out)
    resumed = checkpoint.load(ckpt_path, spec) if spec.resume else None  # fails before any load

    timings: dict = {}
    t_start = time.perf_counter()
    recipe = get_recipe(spec.recipe).with_overrides(window=spec.window, stride=spec.stride)
    owned = executor is None  # a caller's executor stays open for its next render
    if owned:
        check_layout(spec, parallel)
    elif list(getattr(executor, "lora", [])) != lora_pairs(spec):
        from .config import SpecError

        raise SpecError("lora", f"the executor passed in has LoRAs {executor.lora or 'none'}, the spec "
                                f"{lora_pairs(spec) or 'none'}: build the executor from this spec (make_executor)")
    executor = executor or make_executor(spec, parallel)
    space = executor.space
    try:
        timings["load"] = time.perf_counter() - t_start

        fam = spec.resolved.family
        conds = storyboard_conds(spec)
        t0 = time.perf_counter()
        executor.set_conditions(conds.conditions() if conds else {"main": (spec.prompt, spec.negative_prompt)},
                                spec.guidance)
        timings["encode"] = time.perf_counter() - t0

        planner = Planner(recipe, spec.latent_frames, fam.latent_frames(fam.native_frames),
                          lambda purpose, step: keyed_generator(spec.seed, purpose, step),
                          tokens_per_frame=(spec.height // fam.spatial_multiple) * (spec.width // fam.spatial_multiple),
                          temporal_factor=fam.temporal_factor, conds=conds)
        if planner.chunks is not None:  # chunk after chunk (diffusion forcing, causal rollout)
            from .sampling.chunks import run_chunks

            first_windows = planner.windows(0, 0.0)
            t0 = time.perf_counter()
            result = run_chunks(planner, executor, spec, progress,
                                resumed=resumed,
                                save=lambda nxt, lat, st: checkpoint.save(ckpt_path, spec, nxt, lat, st))
            timings["denoise"] = time.perf_counter() - t0
            start = resumed["next_step"] if resumed else 0
        elif resumed:
            latent, start = resumed["latent"], resumed["next_step"]
            state = SamplerState.from_state_dict(resumed["tensors"], resumed["state"])
        else:
            shape = space.latent_shape(spec.frames, spec.height, spec.width)
            state = SamplerState.shared(space.make_scheduler(spec.steps, shape))
            latent = planner.init_noise(space, noise_generator(spec.seed), spec.frames, spec.height, spec.width)
            start = 0

        if planner.chunks is None:
            first_windows = planner.windows(0, float(state.noise_level(0).max()))
            bar = _Progress(spec.steps, start, "denoise", executor) if progress else None

            def on_step(stats, lat, st):
                if bar:
                    bar(stats)
                done = stats.step + 1
                if spec.checkpoint_every and done % spec.checkpoint_every == 0 and done < spec.steps:
                    checkpoint.save(ckpt_path, spec, done, lat, st.state_dict())

            t0 = time.perf_counter()
            try:
                result = denoise(latent, state, planner, executor, on_step=on_step, start=start)
            finally:
                if bar:
                    bar.close()
            timings["denoise"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        sheet = None
        if preview:
            from .io.preview import PreviewSheet

            sheet = PreviewSheet(spec.frames, boundaries=spec.storyboard.starts()[1:] if spec.storyboard else None)
        with VideoWriter(spec.out, spec.width, spec.height, spec.fps) as writer:
            for chunk in executor.decode(result.latent, spec.decode_chunk):
                writer.write(chunk)
                if sheet:
                    sheet.feed(chunk)
        if sheet:
            from .io.preview import preview_path

            sheet.write(preview_path(spec.out))
        timings["decode_encode"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_start
        metrics = executor.report()
    finally:
        if owned:
            executor.close()

    side = sidecar_path(spec.out)
    steps = [asdict(s) for s in result.steps]
    for s, m in zip(steps, metrics.get("per_step", [])):
        s.update(m)
    write_json_atomic(side, {
        "spec": spec.to_dict(),
        "seed": spec.seed,
        "model": {"name": spec.model, "family": spec.resolved.family.name, "source": spec.resolved.source},
        "recipe": recipe.to_dict(),
        "resolved_recipe": planner.resolved(),
        "windows": first_windows,
        **({"storyboard": conds.describe()} if conds else {}),
        "frames": writer.frames_written,
        "latent_frames": spec.latent_frames,
        "device": executor.device,
        "dtype": executor.dtype,
        "executor": type(executor).__name__,
        "resumed_from_step": start if resumed else None,
        "versions": _versions(),
        "timings": {**timings, "per_step": steps},
        "workers": metrics.get("workers"),
    })
    if os.path.exists(ckpt_path):
        os.unlink(ckpt_path)
    return RenderResult(spec.out, side, writer.frames_written, timings)
