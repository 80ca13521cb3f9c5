"""Progress of a batch: videos done / failed / in flight on the package's one
:class:`~longvid_dist.progress.Progress` bar, and a plain line with the ETA per finished video."""

from __future__ import annotations

from ..progress import Progress
from .results import BatchResult, RowResult


class BatchProgress(Progress):
    """The bar counts videos; the rows settled before any render (skipped, invalid) start it."""

    def __init__(self, result: BatchResult, enabled: bool):
        super().__init__(result.total, initial=result.done + result.failed, desc="batch", unit="video",
                         prefix="[longvid batch]", enabled=enabled, smoothing=0)
        self.result = result
        self.in_flight = 0
        self.show(**self._counts())

    def _counts(self) -> dict:
        return {"done": self.result.done, "failed": self.result.failed, "in_flight": self.in_flight}

    def eta_text(self) -> str:
        eta = self.eta()
        return "?" if eta is None else f"{eta:.0f}s"

    def started(self) -> None:
        """A video starts rendering."""
        with self.lock:
            self.in_flight += 1
            self.show(**self._counts())

    def finished(self, row: RowResult) -> None:
        """A video is done or failed."""
        with self.lock:
            self.in_flight -= 1
            if self.advance(**self._counts()):
                r = self.result
                what = f"{row.id!r} done" if row.state == "done" else f"{row.id!r} failed: {row.reason}"
                self.log(f"{r.done}/{r.total} done, {r.failed} failed, {self.in_flight} in flight, "
                         f"eta {self.eta_text()} ({what})")
