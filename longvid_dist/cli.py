"""``longvid``: render long videos, list models and recipes.

Bad input gets one line ``longvid render: error: --flag: what is allowed`` and exit code 2,
before any model is loaded and before any output file exists.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields

from .config import ParallelConfig, RenderSpec, SpecError, flag_name

_D = RenderSpec.__dataclass_fields__

SPEC_FLAGS: dict[str, dict] = {
    "negative_prompt": dict(default=_D["negative_prompt"].default,
                            help="negative prompt for classifier-free guidance (default: empty)"),
    "model": dict(default=_D["model"].default,
                  help="tiny-wan (built-in random-weight demo model), a local diffusers pipeline folder, "
                       "or a known hub id (default: %(default)s; see `longvid models`)"),
    "lora": dict(action="append", default=None, metavar="PATH[:SCALE]",
                 help="a LoRA to fuse into the model's transformer (diffusers' load_lora_weights + fuse_lora, "
                      "via peft): a .safetensors file in the diffusers/peft, original Wan or musubi layout, or a "
                      "folder holding pytorch_lora_weights.safetensors; SCALE multiplies its update (default 1). "
                      "Repeat for several (summed). Causal few-step models (CausVid, Self-Forcing) often ship as "
                      "one on top of Wan2.1. Every worker reads it at the same path"),
    "frames": dict(type=int, default=_D["frames"].default,
                   help="pixel frames to render, 4k+1 for Wan (default: %(default)s)"),
    "height": dict(type=int, default=None,
                   help="frame height, a multiple of 16 (default: the model's, 64 for tiny-wan, 480 for Wan2.1)"),
    "width": dict(type=int, default=None,
                  help="frame width, a multiple of 16 (default: the model's, 64 for tiny-wan, 832 for Wan2.1)"),
    "fps": dict(type=float, default=_D["fps"].default, help="output frames per second (default: %(default)s)"),
    "steps": dict(type=int, default=_D["steps"].default, help="denoising steps (default: %(default)s)"),
    "guidance": dict(type=float, default=_D["guidance"].default,
                     help="classifier-free guidance scale, >= 0; <= 1 disables guidance (default: %(default)s)"),
    "recipe": dict(default=_D["recipe"].default,
                   help="long-video recipe: a built-in name or a YAML file (default: %(default)s; "
                        "see `longvid recipes`)"),
    "seed": dict(type=int, default=_D["seed"].default,
                 help="random seed; the initial noise equals diffusers' with Generator().manual_seed(seed) "
                      "(default: %(default)s)"),
    "decode_chunk": dict(type=int, default=_D["decode_chunk"].default,
                         help="latent frames decoded at a time; bounds pixel memory (default: %(default)s)"),
    "device": dict(default=_D["device"].default,
                   help="auto (CUDA if available, else CPU), cpu, cuda or cuda:N (default: %(default)s)"),
    "dtype": dict(default=_D["dtype"].default,
                  help="transformer dtype: auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16 "
                       "(default: %(default)s)"),
    "offload": dict(choices=("none", "model", "sequential"), default=_D["offload"].default,
                    help="CPU offload for a GPU smaller than the model (diffusers/accelerate; CUDA only): "
                         "model moves one whole model (text encoder, transformer, VAE) to the GPU at a time, "
                         "sequential one layer at a time (least memory, slowest) (default: %(default)s)"),
    "checkpoint_every": dict(type=int, default=_D["checkpoint_every"].default,
                             help="checkpoint latent and scheduler every N steps to <out>.ckpt, 0 = never "
                                  "(default: %(default)s)"),
}
"""The RenderSpec flags shared by ``render`` and ``batch`` (where they are per-row defaults)."""


def add_spec_args(p: argparse.ArgumentParser, names) -> None:
    """Add the :data:`SPEC_FLAGS` named by ``names`` (spec field names) to a parser."""
    for name in names:
        p.add_argument(flag_name(name), **SPEC_FLAGS[name])


def _add_render_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", default="",
                   help="text prompt (required, non-empty, unless --storyboard is given: then it is the "
                        "storyboard's global prompt, used by GLC's global path and ABAM anchors)")
    p.add_argument("--storyboard", default=None, metavar="STORY.json",
                   help='segments with their own prompts: {"global": "optional prompt for the whole video", '
                        '"segments": [{"prompt": "...", "frames": N}, ...]}, the frames summing to --frames; '
                        "windows straddling a boundary blend the prompts by frame overlap")
    add_spec_args(p, ("negative_prompt", "model", "lora", "frames", "height", "width", "fps", "steps", "guidance", "recipe"))
    p.add_argument("--window", type=int, default=None,
                   help="window length in latent frames (default: the model's native clip, 21 for Wan)")
    p.add_argument("--stride", type=int, default=None,
                   help="window stride in latent frames (default: half the window)")
    add_spec_args(p, ("seed",))
    p.add_argument("--out", default=_D["out"].default,
                   help="output: .mp4 (H.264), .mkv (lossless FFV1) or a directory ending in / (PNG frames); "
                        "a sidecar <out>.json is written beside it (default: %(default)s)")
    add_spec_args(p, ("decode_chunk", "device", "dtype", "offload"))
    p.add_argument("--workers", type=int, default=None,
                   help="render on N Ray worker actors (one GPU each; CPUs on a CPU-only machine); "
                        "default: in this process")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join (e.g. auto, or host:6379); default: $RAY_ADDRESS, else a private "
                        "local Ray instance started and stopped by this command")
    add_parallel_args(p)
    add_spec_args(p, ("checkpoint_every",))
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted render of the same settings from <out>.ckpt")
    p.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    p.add_argument("--preview", action="store_true",
                   help="also write <out>.preview.png, a contact sheet of evenly spaced frames with their numbers")
    add_plan_args(p)


def add_plan_args(p: argparse.ArgumentParser) -> None:
    """``--dry-run``, ``--json`` and ``--calibrate`` (render and batch)."""
    p.add_argument("--dry-run", action="store_true",
                   help="resolve everything from the model's configs (no weights), print the plan -- latent shape, "
                        "windows and model forwards, bytes per step, peak memory per worker, estimated wall time "
                        "-- and exit without rendering")
    p.add_argument("--json", action="store_true", help="with --dry-run: print the plan as JSON")
    p.add_argument("--calibrate", action="store_true",
                   help="with --dry-run: time one short forward of the transformer (local weights only) and keep "
                        "the factor for later wall-time estimates of this model and device")


def add_parallel_args(p: argparse.ArgumentParser) -> None:
    """The sequence-parallel layout flags (render, batch and the Ray job entry points)."""
    p.add_argument("--ulysses-degree", type=int, default=1,
                   help="split each window's attention heads over this many workers (Ulysses all-to-all); "
                        "must divide the model's heads. For windows too long for one GPU, or fewer windows "
                        "than GPUs (default: 1)")
    p.add_argument("--ring-degree", type=int, default=1,
                   help="split each window's keys/values over this many workers (ring); --workers must be a "
                        "multiple of ulysses x ring, which forms that many groups (default: 1)")
    p.add_argument("--sp-backend", choices=("native", "xfuser"), default="native",
                   help="sequence-parallel backend: native (torch.distributed, gloo on CPU / NCCL on GPU) or "
                        "xfuser (xDiT, CUDA only) (default: %(default)s)")
    p.add_argument("--no-shared-memory", dest="shared_memory", action="store_false",
                   help="send every step's latent and predictions through Ray's object store, also to the "
                        "workers on this node (default: through shared memory kept for the render)")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``prog: error: message`` and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="longvid", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    r = sub.add_parser("render", help="render one long video",
                       description="Render one long video with a training-free long-video recipe.")
    _add_render_args(r)
    sub.add_parser("models", help="list model families and built-in models")
    sub.add_parser("recipes", help="list recipes and their parameters")
    sub.add_parser("batch", help="render a JSONL file of prompts, resumable; see `longvid batch -h`",
                   add_help=False)
    sub.add_parser("probe", help="measure per-layer attention sensitivity and write a FreeLOC profile; "
                                 "see `longvid probe -h`", add_help=False)
    sub.add_parser("eval", help="model-free temporal metrics of videos (flicker, motion, consistency); "
                                "see `longvid eval -h`", add_help=False)
    sub.add_parser("gallery", help="write OUT_DIR/index.html, a static page of a batch's videos; "
                                   "see `longvid gallery -h`", add_help=False)
    return parser


_OWN_PARSERS = {"eval": ".eval:main_eval", "batch": ".batch:main_batch", "probe": ".probe:main_probe",
                "gallery": ".batch.gallery:main_gallery"}


def spec_from_args(args: argparse.Namespace) -> RenderSpec:
    """Build the spec from parsed flags (raises SpecError on bad values)."""
    names = {f.name for f in fields(RenderSpec) if f.init}
    return RenderSpec(**{k: v for k, v in vars(args).items() if k in names})


def parallel_from_args(args: argparse.Namespace) -> ParallelConfig:
    """The parallel layout from parsed flags (raises SpecError on bad values)."""
    names = {f.name for f in fields(ParallelConfig)}
    return ParallelConfig(**{k: v for k, v in vars(args).items() if k in names})


def _cmd_models() -> int:
    from .methods.recipes import builtin_names, get_recipe
    from .models.registry import CAPABILITIES, FAMILIES, TINY

    for fam in FAMILIES.values():
        print(f"{fam.name:10s} {fam.description}")
        print(f"{'':10s} pipelines: {', '.join(fam.pipeline_classes)}; frames {fam.temporal_factor}k+1, "
              f"size multiple of {fam.spatial_multiple}, native {fam.native_frames} frames")
        print(f"{'':10s} capabilities: {', '.join(sorted(fam.capabilities)) or 'none'}")
        for hub in fam.hub_ids:
            print(f"{'':10s} hub id: {hub}")
    for name, (fam, size) in TINY.items():
        print(f"{name:16s} built-in tiny random-weight {fam} model ({size[0]}x{size[1]} default), no download")
    recipes, fams = builtin_names(), list(FAMILIES.values())
    cell = {(n, f.name): "ok" if not (m := f.missing(get_recipe(n).requires())) else "no: " + "+".join(m)
            for n in recipes for f in fams}
    widths = [max(len(f.name), *(len(cell[n, f.name]) for n in recipes)) for f in fams]
    first = max(len(n) for n in recipes) + 2
    print("\nSupport matrix (recipe x family): ok, or the capabilities the family lacks")
    print(f"{'':{first}s}" + "  ".join(f"{f.name:{w}s}" for f, w in zip(fams, widths)).rstrip())
    for n in recipes:
        print(f"{n:{first}s}" + "  ".join(f"{cell[n, f.name]:{w}s}" for f, w in zip(fams, widths)).rstrip())
    print("\nCapabilities: " + "; ".join(f"{k}: {v}" for k, v in CAPABILITIES.items()))
    return 0


def _cmd_recipes() -> int:
    from .methods.recipes import builtin_names, get_recipe

    for name in builtin_names():
        r = get_recipe(name)
        print(f"{name:14s} {r.description}")
        for sec, data in r.to_dict().items():
            if sec in ("name", "description") or data["kind"] == "none":
                continue
            params = ", ".join(f"{k}={v}" for k, v in data.items() if k != "kind")
            print(f"{'':14s}   {sec}: {data['kind']}{' (' + params + ')' if params else ''}")
    print("\nA YAML file with the same sections (plan, noise, attention, rope, refine) works as "
          "--recipe path.yaml.")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in _OWN_PARSERS:  # subcommands with their own parser
        import importlib

        module, func = _OWN_PARSERS[argv[0]].split(":")
        return getattr(importlib.import_module(module, __package__), func)(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "models":
        return _cmd_models()
    if args.command == "recipes":
        return _cmd_recipes()
    try:
        spec, parallel = spec_from_args(args), parallel_from_args(args)
        from .api import check_layout

        check_layout(spec, parallel)
        if (args.json or args.calibrate) and not args.dry_run:
            raise SpecError("dry_run", f"{'--json' if args.json else '--calibrate'} goes with --dry-run")
        from . import plan_cost

        if args.calibrate:
            plan_cost.calibrate(spec)
        cost = plan_cost.plan(spec, parallel)
        if args.dry_run:
            print(json.dumps(cost.to_dict(), indent=2) if args.json else plan_cost.format_plan(cost))
            return 0
        if not cost.fits:
            plan_cost.preflight(spec, parallel)  # raises the one-line refusal
        for w in cost.warnings:
            print(f"longvid render: warning: {w}", file=sys.stderr)
    except SpecError as e:
        print(f"longvid render: error: {flag_name(e.field)}: {e.message}", file=sys.stderr)
        return 2
    from .api import render
    from .runtime.checkpoint import CheckpointError

    try:
        result = render(spec, parallel, progress=not args.quiet, preview=args.preview, preflight=False)
    except CheckpointError as e:
        print(f"longvid render: error: {e}", file=sys.stderr)
        return 2
    except SpecError as e:  # found once the device is known (--offload on a CPU-only cluster)
        print(f"longvid render: error: {flag_name(e.field)}: {e.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("longvid render: interrupted; no output written", file=sys.stderr)
        return 130
    except (OSError, ValueError, RuntimeError) as e:  # missing checkpoint, unreachable cluster, hub id...
        print(f"longvid render: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {result.out} ({result.frames} frames) and {result.sidecar} in {result.timings['total']:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
