"""The executor pool of a batch: as many executors of ``workers_per_video`` workers as the
cluster hosts (capped by ``max_in_flight`` and the videos to render), each driven by one thread
that takes rows from a shared queue and renders them on it, recording each in the manifest.

Each executor lives in a video coordinator process of its own (``coordinators="process"``, the
default: :class:`~longvid_dist.batch.coordinator.VideoCoordinator` as a Ray actor), so the
driver's threads only hand out rows and record outcomes while the per-step merges and
transfers of every video in flight run in parallel processes; ``coordinators="driver"`` runs
them in the driver's threads (one interpreter), as before.

Ray stays behind :mod:`longvid_dist.runtime.ray_executor`'s functions (``connect``,
``capacity``, ``shutdown``) and the executors :func:`longvid_dist.api.make_executor` builds."""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from dataclasses import replace

from ..config import ParallelConfig
from .manifest import Manifest
from .outdir import finished
from .progress import BatchProgress
from .results import BatchResult, RowResult


def render_all(todo: list[RowResult], result: BatchResult, manifest: Manifest, prog: BatchProgress,
               parallel: ParallelConfig, max_in_flight: int | None, preview: bool = False,
               coordinators: str = "process") -> None:
    """Render ``todo`` on a pool of executors of ``parallel``'s layout each; outcomes go to the
    rows, ``result`` and the manifest.

    Joins ``parallel.address`` (else ``RAY_ADDRESS``, else starts a private local Ray) unless Ray
    is already connected in this process; only a connection made here is shut down at the end."""
    from ..api import check_layout, model_source
    from ..runtime.ray_executor import ClusterError, capacity, connect, shutdown

    owns_ray = False
    executors: list = []
    lock = threading.Lock()  # executors / stop: a lane placed late closes its own executor
    t0 = time.perf_counter()
    stop = threading.Event()
    try:
        # ours to shut down when we connected (for a joined cluster: disconnect; it keeps running)
        workers_per_video = parallel.num_workers
        owns_ray = connect(parallel.address, quiet=not prog.enabled) is not None
        spec0 = todo[0].spec
        fit, what = capacity(workers_per_video, spec0.device, flag="--workers-per-video")
        m = min(fit, max_in_flight or fit, len(todo))
        model_source(spec0)  # a tiny model is built here, once, not by the lanes at the same time
        check_layout(spec0, parallel)
        prog.log(f"{m} video(s) in flight, {workers_per_video} worker(s) each ({fit} fit the cluster's {what})")

        jobs: queue.Queue = queue.Queue()
        for r in todo:
            jobs.put(r)
        errors: list[BaseException] = []
        first_ready: list[float] = []

        def lane():
            """Create one executor, then feed it from the queue (it starts as soon as it is placed)."""
            try:
                ex = (_Remote if coordinators == "process" else _InDriver)(spec0, parallel)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
                return
            with lock:
                if stop.is_set():
                    ex.close()
                    return
                executors.append(ex)
                if not first_ready:
                    first_ready.append(time.perf_counter())
                    prog.restart_clock()
            _drive(ex, jobs, manifest, prog, stop, preview)

        lanes = [threading.Thread(target=lane, daemon=True) for _ in range(m)]
        for t in lanes:
            t.start()
        for t in lanes:
            _join(t)
        result.executors = len(executors)
        if not executors:
            raise ClusterError(str(errors[0]) if errors else "no executor could be created")
        result.startup = first_ready[0] - t0
        result.render_time = time.perf_counter() - first_ready[0]
        if errors:
            prog.log(f"only {len(executors)} of {m} executors could be placed ({errors[0]})")
        while True:  # every executor broke: whatever is left was not rendered
            try:
                r = jobs.get_nowait()
            except queue.Empty:
                break
            r.state, r.reason = "failed", "not rendered: no working executor left"
            manifest.append({"id": r.id, "state": "failed", "line": r.line, "reason": r.reason})
    except KeyboardInterrupt:
        stop.set()
        result.interrupted = True
        prog.log("interrupted; in-flight videos keep their checkpoints: rerun the same command to resume")
    except (ClusterError, RuntimeError, OSError, ValueError) as e:
        result.error = str(e)
    finally:
        with lock:
            stop.set()
        for ex in executors:
            try:
                ex.close()
            except Exception:  # noqa: BLE001 - best effort at shutdown
                pass
        if owns_ray:
            shutdown()


class _InDriver:
    """A lane's executor, its renders run by the driver's thread."""

    def __init__(self, spec, parallel: ParallelConfig):
        from ..api import make_executor

        self.ex = make_executor(spec, parallel)

    def render(self, spec, preview: bool) -> dict:
        from ..api import render

        res = render(spec, executor=self.ex, progress=False, preview=preview)
        return {"out": res.out, "timings": res.timings}

    def healthy(self, timeout: float) -> bool:
        return self.ex.healthy(timeout=timeout)

    def close(self) -> None:
        self.ex.close()


class _Remote:
    """A lane's video coordinator in a process of its own (a Ray actor owning the executor)."""

    def __init__(self, spec, parallel: ParallelConfig):
        from ..runtime.ray_executor import ActorProcess
        from .coordinator import VideoCoordinator

        self.proc = ActorProcess(VideoCoordinator, os.getpid())  # placed on this node: it can watch this pid
        try:
            self.proc.call("start", spec, parallel)
        except BaseException:
            self.proc.close(timeout=10)
            raise

    def render(self, spec, preview: bool) -> dict:
        return self.proc.call("render", spec, preview)

    def healthy(self, timeout: float) -> bool:
        try:
            return bool(self.proc.call("healthy", timeout, timeout=timeout + 30))
        except Exception:  # noqa: BLE001 - any failure means not usable
            return False

    def close(self) -> None:
        self.proc.close()


def _join(t: threading.Thread) -> None:
    while t.is_alive():  # short timeouts keep Ctrl-C responsive
        t.join(0.2)


def _drive(ex, jobs: queue.Queue, manifest: Manifest, prog: BatchProgress, stop: threading.Event,
           preview: bool = False) -> None:
    """One executor's driver thread: render queued rows until the queue is empty."""
    from ..runtime.checkpoint import CheckpointError, checkpoint_path

    while not stop.is_set():
        try:
            r = jobs.get_nowait()
        except queue.Empty:
            return
        r.state = "running"
        prog.started()
        manifest.append({"id": r.id, "state": "running", "line": r.line, "out": os.path.basename(r.out),
                         "resume": r.spec.resume, "prompt": r.spec.prompt, "recipe": r.spec.recipe})
        try:
            try:
                res = ex.render(r.spec, preview)
            except CheckpointError as e:  # a checkpoint of other settings (the row was edited)
                prog.log(f"{r.id!r}: {e}; rendering from the start")
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(checkpoint_path(r.out))
                r.spec = replace(r.spec, resume=False)
                res = ex.render(r.spec, preview)
        except Exception as e:  # noqa: BLE001 - recorded; the batch goes on
            if stop.is_set():  # interrupted: stays "running", resumes next time
                return
            r.state, r.reason = "failed", f"render failed: {type(e).__name__}: {e}"
            manifest.append({"id": r.id, "state": "failed", "line": r.line, "reason": r.reason})
            prog.finished(r)
            if not ex.healthy(timeout=60):
                prog.log(f"an executor stopped working after {r.id!r}; the others go on")
                return
            continue
        side = finished(r.spec) or {}
        r.state, r.rendered = "done", True
        r.resumed_from_step = side.get("resumed_from_step")
        manifest.append({"id": r.id, "state": "done", "line": r.line, "out": os.path.basename(res["out"]),
                         "timings": res["timings"], "resumed_from_step": r.resumed_from_step})
        prog.finished(r)
