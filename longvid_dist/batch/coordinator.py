"""One in-flight video's coordinator, run off the batch driver's interpreter.

The batch driver only schedules and records (manifest, progress, gallery); each in-flight
video's loop -- planning, transfers, merges, scheduler steps, checkpoints, decode and the mp4 --
runs in a :class:`VideoCoordinator`, a Ray actor of its own (``runtime.ray_executor.ActorProcess``)
that owns the video's ``RayExecutor`` (actors create actors) and renders the rows the driver
hands it one after another. So the merges and transfers of dozens of videos in flight use as
many processes, not one interpreter. The class imports no Ray; it is the same in-process.
"""

from __future__ import annotations

import os

from ..config import ParallelConfig, RenderSpec


class VideoCoordinator:
    """Owns one executor of ``parallel``'s layout and renders specs on it (``api.render``).

    ``driver_pid``: the batch driver's process on this machine (the coordinator is placed on
    the driver's node). When it is gone -- killed, say -- this process ends at once instead of
    finishing its video into a directory that the next run may already own: Ray's own clean-up
    of a dead driver's actors can lag by seconds, or never come when the local Ray the driver
    started died with it."""

    def __init__(self, driver_pid: int | None = None, poll: float = 0.2):
        self.executor = None
        if driver_pid is not None:
            import threading

            threading.Thread(target=_exit_with, args=(driver_pid, poll), daemon=True,
                             name="driver-watchdog").start()

    def start(self, spec: RenderSpec, parallel: ParallelConfig) -> bool:
        """Create the executor (its workers are placed and load the model); a failure is raised
        to the caller as the original exception."""
        from ..api import make_executor

        self.executor = make_executor(spec, parallel)
        return True

    def render(self, spec: RenderSpec, preview: bool = False) -> dict:
        """Render ``spec`` on this coordinator's executor; what the driver records of it."""
        from ..api import render

        res = render(spec, executor=self.executor, progress=False, preview=preview)
        return {"out": res.out, "timings": res.timings}

    def healthy(self, timeout: float = 60.0) -> bool:
        return self.executor is not None and self.executor.healthy(timeout=timeout)

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of this process (benchmarks)."""
        t = os.times()
        return t.user + t.system

    def close(self) -> bool:
        if self.executor is not None:
            self.executor.close()
            self.executor = None
        return True


def _exit_with(pid: int, poll: float) -> None:
    """End this process (no clean-up: its temporaries carry its pid and are removed by the next
    run) as soon as process ``pid`` is gone."""
    import time

    from .outdir import pid_alive

    while pid_alive(pid):
        time.sleep(poll)
    os._exit(1)
