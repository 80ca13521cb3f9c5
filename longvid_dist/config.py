"""What to render: :class:`RenderSpec`, validated on construction.

Nothing here imports torch, diffusers or Ray, so a bad spec is refused in milliseconds,
before any model is loaded and before any output file exists. Every error is a
:class:`SpecError` naming the field (the CLI turns it into ``--flag``) and what is allowed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from .io.video import check_output_path
from .models.registry import ResolvedModel, resolve_model

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_dtype(dtype: str, on_gpu: bool) -> str:
    """``auto`` -> bfloat16 on a GPU, float32 on a CPU; other values as given."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if on_gpu else "float32"


class SpecError(ValueError):
    """A spec field has a value that is not allowed."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass(frozen=True)
class RenderSpec:
    """One video to render. Pixel sizes are in frames/pixels; window sizes in latent frames."""

    prompt: str
    """Text prompt (must not be empty)."""
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
    workers: int | None = None
    """Ray worker actors (one GPU each, or CPUs on a CPU cluster); ``None`` renders in this process."""
    address: str | None = None
    """Ray cluster to join (``RAY_ADDRESS`` is used too); none starts a private local instance."""
    checkpoint_every: int = 5
    """Checkpoint the coordinator state every this many steps (0 = never) to ``<out>.ckpt``."""
    resume: bool = False
    """Continue from ``<out>.ckpt`` written by an interrupted render of the same spec."""
    resolved: ResolvedModel = field(init=False, repr=False, compare=False)
    """The model name resolved to its family (filled in by validation)."""

    def __post_init__(self):
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise SpecError("prompt", "must be a non-empty string")
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
        _int(self, "seed", 0)
        _number(self, "guidance", lambda v: v >= 0, "must be >= 0")
        _number(self, "fps", lambda v: v > 0, "must be > 0")
        from .methods.recipes import get_recipe

        try:
            recipe = get_recipe(self.recipe)
        except ValueError as e:
            raise SpecError("recipe", str(e)) from None
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
        if self.workers is not None:
            _int(self, "workers", 1)
        if self.address is not None and (not isinstance(self.address, str) or not self.address.strip()):
            raise SpecError("address", f"must be a Ray address such as 'auto' or 'ray://host:10001', got {self.address!r}")
        _int(self, "checkpoint_every", 0)
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise SpecError("device", f"must be one of {', '.join(DEVICES)} or cuda:N, got {self.device!r}")
        if self.dtype not in DTYPES:
            raise SpecError("dtype", f"must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        try:
            check_output_path(self.out)
        except ValueError as e:
            raise SpecError("out", str(e)) from None

    @property
    def distributed(self) -> bool:
        """Whether the render runs on Ray workers."""
        return self.workers is not None or self.address is not None

    @property
    def latent_frames(self) -> int:
        """Latent frames of the video."""
        return self.resolved.family.latent_frames(self.frames)

    def to_dict(self) -> dict:
        """Plain fields (for the sidecar and checkpoints)."""
        d = asdict(self)
        d.pop("resolved", None)
        return d


def _int(spec, name: str, minimum: int) -> None:
    v = getattr(spec, name)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise SpecError(name, f"must be {what}, got {v!r}")


def _number(spec, name: str, ok, message: str) -> None:
    v = getattr(spec, name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
        raise SpecError(name, f"{message}, got {v!r}")
