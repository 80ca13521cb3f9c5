"""What to render (:class:`RenderSpec`) and where it runs (:class:`ParallelConfig`), validated
on construction.

Nothing here imports torch, diffusers or Ray, so a bad spec is refused in milliseconds,
before any model is loaded and before any output file exists. Every error is a
:class:`SpecError` naming the field (:func:`flag_name` turns it into ``--flag``) and what is
allowed. The content of a video depends on the spec only, never on the parallel layout.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from .io.video import check_output_path
from .models.registry import ResolvedModel, resolve_model

if TYPE_CHECKING:
    from .lora import Lora
    from .storyboard import Storyboard

DEVICES = ("auto", "cpu", "cuda")
SP_BACKENDS = ("native", "xfuser")
INT_MAX = 2**31 - 1
"""Largest value of an integer flag (frames, sizes, steps...): tensor shapes and ffmpeg take 32-bit sizes."""
SEED_MAX = 2**64 - 1
"""Largest seed ``torch.Generator.manual_seed`` takes (an unsigned 64-bit integer)."""
FPS_MAX = 1000.0
"""Highest output frame rate."""
DTYPES = ("auto", "float32", "bfloat16", "float16")
OFFLOADS = ("none", "model", "sequential")
"""``--offload`` modes: diffusers' model / sequential CPU offload (accelerate hooks; CUDA only)."""


OUTPUT_FIELDS = ("prompt", "negative_prompt", "model", "frames", "height", "width", "fps", "steps", "guidance",
                 "recipe", "window", "stride", "seed", "dtype")
"""Spec fields that determine the video (and ``storyboard`` / ``lora`` when given); the others (output
path, decode chunk, device...) and the parallel layout may differ between a killed render and its
resumption."""


def flag_name(field_name: str) -> str:
    """The command-line flag of a spec field: ``decode_chunk`` -> ``--decode-chunk``."""
    return "--" + field_name.replace("_", "-")


def output_fields(spec: dict) -> tuple[str, ...]:
    """The fields of a spec (a plain dict) that determine its video: :data:`OUTPUT_FIELDS`, plus
    ``storyboard`` and ``lora`` when set (so keys of renders without them stay as they were)."""
    return OUTPUT_FIELDS + tuple(k for k in ("storyboard", "lora") if spec.get(k))


def output_key(spec: dict) -> str:
    """Hash of a spec's :func:`output_fields` (as a plain dict: a sidecar's or checkpoint's
    ``spec``); numbers compare by value, so guidance 5 (JSON) and 5.0 (CLI) are one render. A
    LoRA counts by its file's sha256 and its scale, not by its path."""
    norm = lambda v: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v  # noqa: E731
    values = {k: norm(spec.get(k)) for k in output_fields(spec)}
    if "lora" in values:
        values["lora"] = [[lo["sha256"], float(lo["scale"])] for lo in values["lora"]]
    blob = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def resolve_dtype(dtype: str, on_gpu: bool) -> str:
    """``auto`` -> bfloat16 on a GPU, float32 on a CPU; other values as given."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if on_gpu else "float32"


def offload_refusal(mode: str, device: str) -> str:
    """Why ``--offload mode`` cannot run on ``device`` (a CPU): the one line the user sees."""
    return (f"{mode} offload keeps weights on the CPU and moves them to a CUDA GPU when used; this render "
            f"runs on {device}, where everything already is in CPU memory: drop --offload")


class SpecError(ValueError):
    """A spec field has a value that is not allowed."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass(frozen=True)
class RenderSpec:
    """One video to render. Pixel sizes are in frames/pixels; window sizes in latent frames."""

    prompt: str = ""
    """Text prompt (must not be empty without a storyboard; with one it is the global prompt,
    for GLC's global path and ABAM anchors, unless the storyboard names its own)."""
    negative_prompt: str = ""
    """Negative prompt for classifier-free guidance."""
    model: str = "tiny-wan"
    """Model: ``tiny-wan``, a local diffusers pipeline folder, or a known hub id."""
    frames: int = 121
    """Pixel frames to render; ``4k+1`` for Wan."""
    height: int | None = None
    """Frame height in pixels (multiple of 16 for Wan); ``None`` = the model's default."""
    width: int | None = None
    """Frame width in pixels (multiple of 16 for Wan); ``None`` = the model's default."""
    fps: float = 16.0
    """Frames per second of the output video."""
    steps: int = 50
    """Denoising steps."""
    guidance: float = 5.0
    """Classifier-free guidance scale (<= 1 turns guidance off)."""
    recipe: str = "glc"
    """Built-in recipe name (``longvid recipes``) or a path to a YAML recipe."""
    window: int | None = None
    """Window length in latent frames, overriding the recipe; ``None`` = the model's native clip."""
    stride: int | None = None
    """Window stride in latent frames, overriding the recipe; ``None`` = half the window."""
    seed: int = 0
    """Seed: the initial noise equals the stock pipeline's with ``Generator().manual_seed(seed)``."""
    out: str = "out.mp4"
    """Output: ``.mp4`` (H.264), ``.mkv`` (lossless FFV1) or a directory ending in ``/`` (PNGs)."""
    decode_chunk: int = 4
    """Latent frames decoded at a time (pixel memory is bounded by this, not the video length)."""
    device: str = "auto"
    """``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    dtype: str = "auto"
    """Transformer dtype: ``auto`` (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16."""
    offload: str = "none"
    """CPU offload for a GPU smaller than the model: ``none``, ``model`` (one whole model on the
    GPU at a time) or ``sequential`` (one layer at a time); needs a CUDA device."""
    checkpoint_every: int = 5
    """Checkpoint the coordinator state every this many steps (0 = never) to ``<out>.ckpt``."""
    resume: bool = False
    """Continue from ``<out>.ckpt`` written by an interrupted render of the same spec."""
    storyboard: Storyboard | dict | str | None = None
    """Segments with their own prompts (:mod:`longvid_dist.storyboard`): a JSON object, a path to
    a JSON file, or None; held as the validated :class:`~longvid_dist.storyboard.Storyboard`."""
    lora: tuple[Lora, ...] | list | str | None = ()
    """LoRA adapters fused into the transformer's weights when a replica loads, in order:
    ``PATH[:SCALE]`` strings, ``{"path", "scale"}`` objects or :class:`~longvid_dist.lora.Lora`
    (one or a list); held as a tuple of validated :class:`~longvid_dist.lora.Lora`."""
    resolved: ResolvedModel = field(init=False, repr=False, compare=False)
    """The model name resolved to its family (filled in by validation)."""

    def __post_init__(self):
        if not isinstance(self.prompt, str) or (self.storyboard is None and not self.prompt.strip()):
            raise SpecError("prompt", "must be a non-empty string (or give a storyboard)")
        try:
            resolved = resolve_model(self.model)
        except ValueError as e:
            raise SpecError("model", str(e)) from None
        object.__setattr__(self, "resolved", resolved)
        fam = resolved.family
        _int(self, "frames", 1)
        if (self.frames - 1) % fam.temporal_factor:
            lo = (self.frames - 1) // fam.temporal_factor * fam.temporal_factor + 1
            raise SpecError("frames", f"must be {fam.temporal_factor}k+1 for {fam.name} models "
                                      f"(e.g. {lo} or {lo + fam.temporal_factor}), got {self.frames}")
        for name, default in zip(("height", "width"), resolved.default_size):
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
            _int(self, name, 1)
            if getattr(self, name) % fam.spatial_multiple:
                raise SpecError(name, f"must be a positive multiple of {fam.spatial_multiple}, "
                                      f"got {getattr(self, name)}")
        _int(self, "steps", 1)
        _int(self, "decode_chunk", 1)
        _int(self, "seed", 0, SEED_MAX)
        _number(self, "guidance", lambda v: 0 <= v <= 1e6, "must be a number in [0, 1e6]")
        _number(self, "fps", lambda v: 0 < v <= FPS_MAX, f"must be > 0 and <= {FPS_MAX:g}")
        from .methods.recipes import get_recipe

        try:
            recipe = get_recipe(self.recipe)
        except ValueError as e:
            raise SpecError("recipe", str(e)) from None
        missing = fam.missing(recipe.requires())
        if missing:
            from .models.registry import CAPABILITIES

            raise SpecError("recipe", f"recipe {recipe.name!r} needs what {fam.name} models lack: "
                                      + "; ".join(f"{m} ({CAPABILITIES[m]})" for m in missing))
        from .methods import registry

        plan_kind = registry.get("plan", recipe.plan.kind)
        if plan_kind.check_video is not None:
            geo = registry.Geometry(self.latent_frames, fam.latent_frames(fam.native_frames),
                                    temporal_factor=fam.temporal_factor)
            msg = plan_kind.check_video(registry.resolve("plan", recipe.plan.kind, recipe.plan.params, geo), geo)
            if msg:
                raise SpecError("recipe", msg)
        for name in ("window", "stride"):
            if getattr(self, name) is not None and name not in recipe.plan.params:
                raise SpecError(name, f"recipe {recipe.name!r} uses plan {recipe.plan.kind}, which has no {name}")
        latent = self.latent_frames
        for name in ("window", "stride"):
            v = getattr(self, name)
            if v is not None:
                _int(self, name, 1)
                if v > latent:
                    raise SpecError(name, f"{v} latent frames exceeds the video's {latent} latent frames "
                                          f"({self.frames} pixel frames)")
        window = min(self.window or recipe.plan.params.get("window") or fam.latent_frames(fam.native_frames), latent)
        if self.stride and latent > window and self.stride > window:
            raise SpecError("stride", f"{self.stride} must not exceed the window ({window} latent frames)")
        _int(self, "checkpoint_every", 0)
        if self.storyboard is not None:
            self._check_storyboard()
        from .lora import parse_loras

        object.__setattr__(self, "lora", parse_loras(self.lora))
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise SpecError("device", f"must be one of {', '.join(DEVICES)} or cuda:N, got {self.device!r}")
        if self.offload not in OFFLOADS:
            raise SpecError("offload", f"must be one of {', '.join(OFFLOADS)}, got {self.offload!r}")
        if self.offload != "none" and self.device == "cpu":
            raise SpecError("offload", offload_refusal(self.offload, "cpu"))
        if self.dtype not in DTYPES:
            raise SpecError("dtype", f"must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        try:
            check_output_path(self.out)
        except ValueError as e:
            raise SpecError("out", str(e)) from None

    def _check_storyboard(self) -> None:
        from .storyboard import Storyboard

        board = Storyboard.parse(self.storyboard, self.frames)
        if self.prompt.strip():
            if board.global_prompt is None:
                board = Storyboard(board.segments, self.prompt)  # --prompt is the global prompt
            elif board.global_prompt != self.prompt:
                raise SpecError("prompt", "differs from the storyboard's global prompt; give only one of them")
        object.__setattr__(self, "storyboard", board)

    @property
    def latent_frames(self) -> int:
        """Latent frames of the video."""
        return self.resolved.family.latent_frames(self.frames)

    def to_dict(self) -> dict:
        """Plain fields (for the sidecar and checkpoints)."""
        d = asdict(self)
        d.pop("resolved", None)
        if self.storyboard is not None:
            d["storyboard"] = self.storyboard.to_dict()
        d["lora"] = [asdict(lo) for lo in self.lora]
        return d

    def output_key(self) -> str:
        """Hash of the fields that determine the video (:func:`output_key`)."""
        return output_key(self.to_dict())


@dataclass(frozen=True)
class ParallelConfig:
    """Where a render runs, apart from what it renders (the parallel layout, as vLLM's
    ``ParallelConfig``). The same spec gives the same video under every layout."""

    workers: int | None = None
    """Ray worker actors, each owning one GPU (or CPUs on a CPU-only cluster); ``None`` renders
    in this process (unless ``address`` is given: then one worker)."""
    address: str | None = None
    """Ray cluster to join (``auto``, ``host:port`` or ``ray://host:port``); ``None`` with
    ``workers`` starts a private local Ray instance (``RAY_ADDRESS`` is honoured too)."""
    ulysses_degree: int = 1
    """Workers that split one window's attention heads (Ulysses all-to-all); divides the
    model's attention heads."""
    ring_degree: int = 1
    """Workers that split one window's keys/values (ring); ``workers`` actors form
    ``workers / (ulysses_degree * ring_degree)`` groups, each running one window at a time."""
    sp_backend: str = "native"
    """Sequence-parallel backend: ``native`` (torch.distributed collectives in the adapter's
    attention, split where diffusers' context-parallel plan splits) or ``xfuser`` (xDiT's USP;
    CUDA only)."""
    shared_memory: bool = True
    """Exchange each step's latent and predictions with the workers on the coordinator's node
    through shared memory allocated once per render (``runtime/shm.py``) rather than fresh
    objects of Ray's object store; workers on other nodes always go through Ray. Off
    (``--no-shared-memory``): the object store for every worker."""

    def __post_init__(self):
        if self.workers is not None:
            _int(self, "workers", 1)
        if self.address is not None and (not isinstance(self.address, str) or not self.address.strip()):
            raise SpecError("address", f"must be a Ray address such as 'auto' or 'ray://host:10001', "
                                       f"got {self.address!r}")
        _int(self, "ulysses_degree", 1)
        _int(self, "ring_degree", 1)
        if self.sp_backend not in SP_BACKENDS:
            raise SpecError("sp_backend", f"must be one of {', '.join(SP_BACKENDS)}, got {self.sp_backend!r}")
        g = self.group_size
        if g > 1:
            which = "ulysses_degree" if self.ulysses_degree > 1 else "ring_degree"
            if self.workers is None:
                raise SpecError(which, f"{self.ulysses_degree} x {self.ring_degree} splits a window over "
                                       f"{g} Ray workers: give --workers (a multiple of {g})")
            if self.workers % g:
                raise SpecError("workers", f"{self.workers} is not a multiple of --ulysses-degree x --ring-degree = {g}; "
                                           f"use {max(g, self.workers // g * g)} or {(self.workers // g + 1) * g}")
        if self.sp_backend == "xfuser" and g == 1:
            raise SpecError("sp_backend", "xfuser splits windows: set --ulysses-degree or --ring-degree above 1")

    @property
    def distributed(self) -> bool:
        """Whether the render runs on Ray workers."""
        return self.workers is not None or self.address is not None

    @property
    def num_workers(self) -> int:
        """Worker actors of a distributed render (1 when only ``address`` is given)."""
        return self.workers or 1

    @property
    def group_size(self) -> int:
        """Workers that share one window's attention (a sequence-parallel group)."""
        return self.ulysses_degree * self.ring_degree

    def groups(self) -> list[list[int]]:
        """Worker ranks of each group, consecutive: ``[[0, 1], [2, 3]]`` for 4 workers in groups of 2."""
        n, g = self.num_workers, self.group_size
        return [list(range(i, i + g)) for i in range(0, n, g)]


def _int(spec, name: str, minimum: int, maximum: int = INT_MAX) -> None:
    v = getattr(spec, name)
    if isinstance(v, bool) or not isinstance(v, int) or not minimum <= v <= maximum:
        what = f"an integer from {minimum} to {maximum}"
        if maximum == SEED_MAX:
            what += " (2**64 - 1, the random generator's range)"
        shown = repr(v) if len(repr(v)) <= 40 else repr(v)[:37] + "..."
        raise SpecError(name, f"must be {what}, got {shown}")


def _number(spec, name: str, ok, message: str) -> None:
    v = getattr(spec, name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
        raise SpecError(name, f"{message}, got {v!r}")
