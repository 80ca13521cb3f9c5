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
    """Owns one executor of ``parallel``'s layout and renders specs on it (``api.render``)."""

    def __init__(self):
        self.executor = None

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
