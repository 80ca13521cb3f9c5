"""``longvid eval VIDEO... [--json OUT.json] [--vbench]``: the command line and its table.

One concern: the user-facing command -- parsing arguments, checking every input path up front
(one-line errors, exit code 2), printing the aligned metrics table (:func:`format_table`),
writing the JSON and reporting VBench's status. The metrics themselves live in
:mod:`longvid_dist.eval.metrics`, VBench in :mod:`longvid_dist.eval.vbench`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Iterable, Optional

from ..cli import _Parser
from ..io.video import VideoInputError, check_video, write_json_atomic
from .metrics import METRIC_DEFINITIONS, evaluate
from .vbench import VBENCH_DIMENSIONS, run_vbench, vbench_status

__all__ = ["build_eval_parser", "format_table", "main_eval"]

_COLUMNS = [  # (header, key, format)
    ("frames", "frames", "{:d}"),
    ("size", None, None),
    ("fps", "fps", "{:.3g}"),
    ("flicker", "flicker_mad", "{:.4f}"),
    ("vb_flicker", "temporal_flickering", "{:.4f}"),
    ("motion px/f", "motion", "{:.3f}"),
    ("consist", "consistency", "{:.4f}"),
    ("consist@0", "consistency_first", "{:.4f}"),
]


def format_table(results: Iterable[dict]) -> str:
    """One aligned row per video: path, frames, size, fps and the metrics (``-`` when undefined)."""
    headers = ["video"] + [h for h, _, _ in _COLUMNS]
    rows = []
    for r in results:
        row = [str(r.get("path", ""))]
        for _, key, fmt in _COLUMNS:
            if key is None:
                row.append(f"{r.get('width')}x{r.get('height')}")
            else:
                v = r.get(key)
                row.append("-" if v is None else fmt.format(v))
        rows.append(row)
    widths = [max(len(x) for x in col) for col in zip(headers, *rows)]
    lines = []
    for row in [headers] + rows:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def build_eval_parser(prog: str = "longvid eval") -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="Model-free temporal metrics of videos (flicker, optical-flow motion, "
                                       "feature consistency), optionally VBench.")
    p.add_argument("videos", nargs="+", metavar="VIDEO",
                   help=".mp4, .mkv (or any ffmpeg-readable video) or a PNG-frame directory")
    p.add_argument("--json", metavar="OUT.json", default=None,
                   help="also write per-video metrics, metric definitions and VBench status/results as JSON")
    p.add_argument("--plot", metavar="OUT.png", default=None,
                   help="also draw per-frame flicker, motion and feature consistency over time, every video side "
                        "by side (window edges from a render's sidecar as faint lines), as a PNG")
    p.add_argument("--vbench", action="store_true",
                   help="also run VBench (" + ", ".join(VBENCH_DIMENSIONS) + ") when it and its weights are "
                        "installed; otherwise say what is missing on stderr (the model-free metrics are still "
                        "computed and the exit code is 0)")
    return p


def _check_json_out(path: str) -> Optional[str]:
    parent = os.path.dirname(path) or "."
    if os.path.isdir(path):
        return "is an existing directory"
    if not os.path.isdir(parent):
        return f"directory {parent!r} does not exist"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"directory {parent!r} is not writable"
    return None


def main_eval(argv: list[str] | None = None) -> int:
    """``longvid eval VIDEO... [--json OUT.json] [--vbench]``.

    Every path is checked first (exit 2 with ``longvid eval: error: <path>: <what>`` on the
    first bad one, before any metric is computed); then the metrics table is printed and the
    JSON written. With ``--vbench`` but VBench or its weights missing, the model-free table and
    JSON are still produced, the reason goes to stderr and the exit code is 0: what could be
    computed was computed, and the JSON records ``"vbench": {"available": false, "reason": ...}``.
    A VBench run that fails after starting exits 1 (the model-free results are still written).
    """
    parser = build_eval_parser()
    args = parser.parse_args(argv)
    prog = parser.prog
    if args.json is not None:
        problem = _check_json_out(args.json)
        if problem:
            print(f"{prog}: error: --json: {args.json}: {problem}", file=sys.stderr)
            return 2
    if args.plot is not None:
        problem = _check_json_out(args.plot)
        if problem is None and not args.plot.lower().endswith(".png"):
            problem = "must end in .png"
        if problem:
            print(f"{prog}: error: --plot: {args.plot}: {problem}", file=sys.stderr)
            return 2
    infos = []
    for path in args.videos:
        try:
            infos.append(check_video(path))
        except VideoInputError as e:  # "<path>: <what is wrong>"
            print(f"{prog}: error: {e}", file=sys.stderr)
            return 2

    series = args.plot is not None
    results = [evaluate(p, info, series=series) for p, info in zip(args.videos, infos)]
    print(format_table(results))
    if series:
        from .plot import plot_series

        plot_series(results, args.plot)
        for r in results:
            r.pop("series", None)
        print(f"wrote {args.plot}")

    available, reason = vbench_status()
    vb: dict = {"requested": bool(args.vbench), "available": available, "reason": reason}
    code = 0
    if args.vbench:
        if not available:
            print(f"{prog}: VBench not run: {reason}", file=sys.stderr)
        else:
            try:
                vb.update(run_vbench(args.videos))
                for path, scores in vb["results"].items():
                    print(f"vbench {path}: " + ", ".join(f"{d}={s:.4f}" for d, s in scores.items()))
            except Exception as e:  # an optional third-party stack: report, keep our results
                vb["error"] = f"{type(e).__name__}: {e}"
                print(f"{prog}: VBench failed: {vb['error']}", file=sys.stderr)
                code = 1
    if args.json is not None:
        write_json_atomic(args.json, {"videos": results, "metrics": METRIC_DEFINITIONS, "vbench": vb})
    return code
