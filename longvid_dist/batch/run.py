"""One batch run, start to end: check the input, lock the manifest, clean the directory, parse
the rows, decide per row (invalid, already finished, resume from a checkpoint, render), and hand
the rest to the executor pool. No Ray is started when nothing is left to render."""

from __future__ import annotations

import os
import time
from dataclasses import replace

from ..config import ParallelConfig, SpecError, flag_name
from .manifest import MANIFEST, Manifest
from .outdir import clean_stale, finished, prepare_out_dir
from .pool import render_all
from .progress import BatchProgress
from .results import BatchInputError, BatchResult, RowResult
from .rows import check_defaults, parse_rows, read_prompts


def _positive(value, flag: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BatchInputError(f"{flag}: must be a positive integer, got {value!r}")


def run_batch(prompts_path: str, out_dir: str, defaults: dict | None = None, workers_per_video: int = 1,
              address: str | None = None, max_in_flight: int | None = None,
              progress: bool = True, ulysses_degree: int = 1, ring_degree: int = 1,
              sp_backend: str = "native", shared_memory: bool = True, preview: bool = False,
              gallery: bool = False, coordinators: str = "process") -> BatchResult:
    """Render every row of ``prompts_path`` into ``out_dir``; see :mod:`longvid_dist.batch`.

    ``defaults``: render settings for rows that do not give them (keys:
    :data:`~longvid_dist.batch.rows.DEFAULT_KEYS`). ``workers_per_video``: Ray workers of each
    video's executor. ``address``: Ray cluster to join (else ``RAY_ADDRESS``, else a private local
    Ray; a Ray already initialized in this process is used as is). ``max_in_flight``: at most this
    many videos at once (default: as many as the cluster can host with ``workers_per_video`` each).
    ``ulysses_degree``/``ring_degree``/``sp_backend``/``shared_memory``: each video's parallel
    layout (:class:`~longvid_dist.config.ParallelConfig`; ``workers_per_video`` is its ``workers``).
    ``preview``: a contact sheet per video; ``gallery``: previews and ``DIR/index.html``, rewritten
    on every manifest line. ``coordinators``: ``process`` (default) runs each in-flight video's
    coordinator loop in a process of its own (a Ray actor), so this process only schedules and
    records; ``driver`` runs them in this process's threads. Rows whose memory estimate does not fit a worker's device are failed
    with the estimate as their reason, before any Ray start.

    Raises :class:`BatchInputError` / :class:`SpecError` on bad input, before any Ray start.
    Per-row problems and failed renders are recorded in the result and the manifest.
    """
    t_start = time.perf_counter()
    _positive(workers_per_video, "--workers-per-video")
    if max_in_flight is not None:
        _positive(max_in_flight, "--max-in-flight")
    address = address or os.environ.get("RAY_ADDRESS") or None
    try:
        parallel = ParallelConfig(workers=workers_per_video, address=address, ulysses_degree=ulysses_degree,
                                  ring_degree=ring_degree, sp_backend=sp_backend, shared_memory=shared_memory)
    except SpecError as e:
        flag = "--workers-per-video" if e.field == "workers" else flag_name(e.field)
        raise BatchInputError(f"{flag}: {e.message}") from None
    defaults = check_defaults(dict(defaults or {}))
    lines = read_prompts(prompts_path)
    prepare_out_dir(out_dir)
    manifest = Manifest(os.path.join(out_dir, MANIFEST))
    if gallery:
        from .gallery import write_gallery

        manifest.listeners.append(lambda entry: write_gallery(out_dir, live=True))
    try:
        removed = clean_stale(out_dir)
        rows = parse_rows(lines, out_dir, defaults)
        result = BatchResult(rows, out_dir, manifest.path, workers_per_video=workers_per_video)
        todo = classify(rows, manifest, parallel)
        prog = BatchProgress(result, progress)
        try:
            if removed:
                prog.log(f"removed {len(removed)} stale temporary file(s) of a killed run: {', '.join(removed)}")
            resuming = sum(1 for r in todo if r.spec.resume)
            prog.log(f"{result.total} rows: {result.skipped} already done, {result.failed} invalid, "
                     f"{len(todo)} to render ({resuming} resuming from a checkpoint)")
            for r in todo:
                for w in r.warnings:
                    prog.log(f"{r.id!r}: warning: {w}")
            if todo:
                render_all(todo, result, manifest, prog, parallel, max_in_flight, preview=preview or gallery,
                           coordinators=coordinators)
        finally:
            # Again at the end: a killed run's writers (Ray actors, outside its process group) may
            # still have been dying at the start, and a crashed coordinator of this run leaves its own.
            late = clean_stale(out_dir)
            if late:
                prog.log(f"removed {len(late)} temporary file(s) of writers that died: {', '.join(late)}")
            prog.close()
    finally:
        manifest.listeners.clear()
        manifest.close()
        if gallery:
            write_gallery(out_dir, live=False)
    result.elapsed = time.perf_counter() - t_start
    return result


def classify(rows: list[RowResult], manifest: Manifest, parallel: ParallelConfig | None = None) -> list[RowResult]:
    """Record invalid rows (and those whose memory estimate does not fit) as failed, skip finished
    ones; the rest (with ``resume`` set where a checkpoint exists) are returned to be rendered."""
    from ..plan_cost import plan
    from ..runtime.checkpoint import checkpoint_path

    todo = []
    for r in rows:
        if r.state != "failed" and finished(r.spec) is None:
            cost = plan(r.spec, parallel)
            if not cost.fits:
                r.state, r.reason = "failed", f"does not fit in memory: {cost.refusal}"
            r.warnings = cost.warnings
        if r.state == "failed":
            extra = {"prompt": r.spec.prompt, "recipe": r.spec.recipe} if r.spec else {}
            manifest.append({"id": r.id, "state": "failed", "line": r.line, "reason": r.reason, **extra})
            continue
        side = finished(r.spec)
        ckpt = checkpoint_path(r.out)
        if side is not None:
            r.state, r.skipped = "done", True
            r.resumed_from_step = side.get("resumed_from_step")
            if os.path.exists(ckpt):  # killed after the sidecar, before the checkpoint was removed
                os.unlink(ckpt)
            if manifest.latest.get(r.id, {}).get("state") != "done":  # killed before the done line
                manifest.append({"id": r.id, "state": "done", "line": r.line, "out": os.path.basename(r.out),
                                 "timings": {k: v for k, v in side.get("timings", {}).items() if k != "per_step"},
                                 "resumed_from_step": r.resumed_from_step, "recovered": True})
            continue
        if os.path.exists(ckpt):
            r.spec = replace(r.spec, resume=True)
        todo.append(r)
    return todo
