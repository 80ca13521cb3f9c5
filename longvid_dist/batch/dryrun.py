"""``longvid batch ... --dry-run``: every row's cost plan and the batch's total, nothing rendered.

The rows are parsed with the batch's own rules (bad rows are listed with their reason), each
valid one is planned by :func:`longvid_dist.plan_cost.plan` on the batch's layout
(``--workers-per-video``), and the total is given in device-hours (GPU-hours on GPUs). No output
directory is created, no Ray is started and no weights are loaded.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

from ..config import ParallelConfig
from ..plan_cost import _dur, _fmt, calibrate, plan
from .results import PROG
from .rows import check_defaults, parse_rows, read_prompts
from .run import _positive


def batch_plan(prompts: str, out_dir: str, defaults: dict, workers_per_video: int = 1,
               address: str | None = None, do_calibrate: bool = False) -> dict:
    """``{"rows": [...], "total": {...}}``: per row its plan (or why it is invalid) and the totals."""
    _positive(workers_per_video, "--workers-per-video")
    defaults = check_defaults(dict(defaults))
    lines = read_prompts(prompts)
    where = out_dir if os.path.isdir(out_dir) else tempfile.gettempdir()  # nothing is created
    rows = parse_rows(lines, where, defaults)
    parallel = ParallelConfig(workers=workers_per_video, address=address)
    out, seconds, hours, unfit = [], 0.0, 0.0, 0
    kind = None
    calibrated = False
    for r in rows:
        if r.state == "failed":
            out.append({"line": r.line, "id": r.id, "valid": False, "reason": r.reason})
            continue
        if do_calibrate and not calibrated:
            calibrate(r.spec)
            calibrated = True
        p = plan(r.spec, parallel)
        kind = p.device
        s = p.seconds["total"]
        seconds += s
        hours += s * p.workers / 3600
        unfit += not p.fits
        out.append({"line": r.line, "id": r.id, "valid": True, "device_hours": s * p.workers / 3600, **p.to_dict()})
    unit = "GPU-hours" if kind == "cuda" else "CPU-worker-hours"
    total = {"rows": len(rows), "valid": sum(1 for o in out if o["valid"]), "do_not_fit": unfit,
             "seconds_sequential": seconds, "device_hours": hours, "unit": unit,
             "workers_per_video": workers_per_video}
    return {"rows": out, "total": total}


def format_batch_plan(bp: dict) -> str:
    lines = []
    for o in bp["rows"]:
        label = f"line {o['line']}" + (f" ({o['id']})" if o["id"] is not None else "")
        if not o["valid"]:
            lines.append(f"{label}: invalid: {o['reason']}")
            continue
        fit = "fits" if o["fits"] else f"DOES NOT FIT: {o['refusal']}"
        lines.append(f"{label}: {o['frames']} frames {o['width']}x{o['height']}, {o['steps']} steps, {o['recipe']}: "
                     f"{o['windows_total']} windows, {o['forwards_total']} forwards, ~{_fmt(o['worker_peak'])} per "
                     f"worker ({fit}), ~{_dur(o['seconds']['total'])} on {o['workers']} worker(s) = "
                     f"{o['device_hours']:.3g} {bp['total']['unit']}")
        lines += [f"  warning: {w}" for w in o["warnings"]]
    t = bp["total"]
    lines.append(f"total: {t['valid']} of {t['rows']} rows valid, {t['do_not_fit']} do not fit; "
                 f"~{_dur(t['seconds_sequential'])} one after another, {t['device_hours']:.3g} {t['unit']}")
    return "\n".join(lines)


def main_dry_run(args, defaults: dict) -> int:
    bp = batch_plan(args.prompts, args.out_dir, defaults, args.workers_per_video, args.address, args.calibrate)
    print(json.dumps(bp, indent=2) if args.json else format_batch_plan(bp))
    sys.stdout.flush()
    return 0


__all__ = ["PROG", "batch_plan", "format_batch_plan", "main_dry_run"]
