"""``longvid batch PROMPTS.jsonl --out-dir DIR [flags]``: the command line of a batch (its
parser and exit codes) around :func:`~longvid_dist.batch.run_batch`."""

from __future__ import annotations

import argparse
import sys

from ..config import SpecError, flag_name
from .results import PROG, BatchInputError
from .rows import DEFAULT_KEYS
from .run import run_batch


def build_batch_parser() -> argparse.ArgumentParser:
    from ..cli import _Parser, add_parallel_args, add_plan_args, add_spec_args

    p = _Parser(prog=PROG, description="Render every prompt of a JSONL file into a directory, several videos at "
                                       "once on a Ray cluster; rerunning the same command resumes (finished "
                                       "videos are skipped, interrupted ones continue from their checkpoint).")
    p.add_argument("prompts", metavar="PROMPTS.jsonl",
                   help="one JSON object per line: id, prompt and optionally negative_prompt, frames, height, "
                        "width, seed, recipe, steps, guidance (the flags below give the defaults)")
    p.add_argument("--out-dir", required=True, metavar="DIR",
                   help="output directory (created if missing): DIR/<id>.mp4, DIR/<id>.mp4.json and "
                        "DIR/manifest.jsonl; ids are sanitized into safe file names")
    # The render flags, as defaults for every row (rows override them).
    add_spec_args(p, DEFAULT_KEYS)
    p.add_argument("--workers-per-video", type=int, default=1, metavar="K",
                   help="Ray workers per video (one GPU each; one CPU each on a CPU-only cluster) "
                        "(default: %(default)s)")
    add_parallel_args(p)
    p.add_argument("--max-in-flight", type=int, default=None, metavar="N",
                   help="at most N videos at once (default: as many as the cluster can host with K workers each)")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join and leave running (e.g. auto, or host:6379); default: $RAY_ADDRESS, "
                        "else a private local Ray instance started and stopped by this command")
    p.add_argument("--quiet", action="store_true", help="no progress bar or log lines (the summary is printed)")
    p.add_argument("--preview", action="store_true",
                   help="also write DIR/<id>.mp4.preview.png per video: a contact sheet of evenly spaced frames")
    p.add_argument("--gallery", action="store_true",
                   help="previews plus DIR/index.html, one card per id (preview, prompt, recipe, state, duration, "
                        "video link), rewritten as the batch progresses; readable from a plain file server")
    add_plan_args(p)
    return p


def main_batch(argv: list[str] | None = None) -> int:
    """``longvid batch PROMPTS.jsonl --out-dir DIR [flags]``; exit 0 all done, 1 some failed or the
    cluster is unusable, 2 bad input, 130 interrupted."""
    parser = build_batch_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    defaults = {k: getattr(args, k) for k in DEFAULT_KEYS}
    try:
        if (args.json or args.calibrate) and not args.dry_run:
            raise SpecError("dry_run", f"{'--json' if args.json else '--calibrate'} goes with --dry-run")
        if args.dry_run:
            from .dryrun import main_dry_run

            return main_dry_run(args, defaults)
        result = run_batch(args.prompts, args.out_dir, defaults, workers_per_video=args.workers_per_video,
                           address=args.address, max_in_flight=args.max_in_flight, progress=not args.quiet,
                           ulysses_degree=args.ulysses_degree, ring_degree=args.ring_degree,
                           sp_backend=args.sp_backend, shared_memory=args.shared_memory, preview=args.preview,
                           gallery=args.gallery)
    except SpecError as e:
        print(f"{PROG}: error: {flag_name(e.field)}: {e.message}", file=sys.stderr)
        return 2
    except BatchInputError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    if result.error:
        print(f"{PROG}: error: {result.error}", file=sys.stderr)
    print(result.summary(), flush=True)
    return result.exit_code
