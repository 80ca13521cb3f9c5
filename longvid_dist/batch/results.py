"""What became of a batch: one :class:`RowResult` per prompts row, the :class:`BatchResult`
with its summary and exit code, and :class:`BatchInputError` for a batch that cannot start."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import RenderSpec

PROG = "longvid batch"


class BatchInputError(ValueError):
    """The batch cannot start: prompts file, output directory or settings are unusable."""


@dataclass
class RowResult:
    """What became of one line of the prompts file."""

    line: int
    """1-based line number in the prompts file."""
    id: str | None
    """The row's id (``None`` when it has no usable one)."""
    state: str = "pending"
    """``done`` or ``failed`` at the end (``pending``/``running`` only if interrupted)."""
    name: str | None = None
    """File-name stem in the output directory."""
    out: str | None = None
    """Path of the video."""
    reason: str | None = None
    """Why it failed."""
    rendered: bool = False
    """Rendered (or finished) by this run."""
    skipped: bool = False
    """Already done by an earlier run; left untouched."""
    resumed_from_step: int | None = None
    """Step the render continued from (a checkpoint of an interrupted run)."""
    spec: RenderSpec | None = field(default=None, repr=False)
    warnings: list = field(default_factory=list)
    """Warnings of the pre-flight (a prompt longer than the text encoder reads)."""

    @property
    def key(self) -> str:
        return self.id if self.id is not None else f"line {self.line}"

    @property
    def label(self) -> str:
        return f"line {self.line} (id {self.id!r})" if self.id is not None else f"line {self.line}"


@dataclass
class BatchResult:
    """Outcome of :func:`~longvid_dist.batch.run_batch`: one :class:`RowResult` per non-blank line
    of the prompts file."""

    rows: list[RowResult]
    out_dir: str
    manifest: str
    executors: int = 0
    """Videos rendered concurrently (RayExecutors created)."""
    workers_per_video: int = 1
    elapsed: float = 0.0
    """Wall time of the whole call."""
    startup: float = 0.0
    """Seconds spent starting/joining Ray and creating the executors (0 when nothing to render)."""
    render_time: float = 0.0
    """Seconds from the first render's start to the last one's end (the executors were ready)."""
    interrupted: bool = False
    error: str | None = None
    """Set when the cluster could not be used (no row was rendered then)."""

    def _count(self, pred) -> int:
        return sum(1 for r in self.rows if pred(r))

    @property
    def total(self) -> int:
        return len(self.rows)

    @property
    def done(self) -> int:
        return self._count(lambda r: r.state == "done")

    @property
    def failed(self) -> int:
        return self._count(lambda r: r.state == "failed")

    @property
    def pending(self) -> int:
        """Rows neither done nor failed (the cluster was unusable, or the batch was interrupted)."""
        return self.total - self.done - self.failed

    @property
    def rendered(self) -> int:
        return self._count(lambda r: r.rendered)

    @property
    def skipped(self) -> int:
        return self._count(lambda r: r.skipped)

    @property
    def resumed(self) -> int:
        return self._count(lambda r: r.rendered and r.resumed_from_step)

    @property
    def states(self) -> dict[str, str]:
        """State per id (rows without a usable id as ``"line N"``)."""
        return {r.key: r.state for r in self.rows}

    @property
    def failures(self) -> list[RowResult]:
        return [r for r in self.rows if r.state == "failed"]

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 0 if self.done == self.total and not self.error else 1

    def summary(self) -> str:
        lines = [f"{PROG}: {self.total} rows: {self.done} done ({self.rendered} rendered, {self.resumed} resumed, "
                 f"{self.skipped} skipped), {self.failed} failed"
                 + (f", {self.pending} not rendered" if self.pending else "") + f" in {self.elapsed:.1f}s"
                 + (f" ({self.startup:.1f}s cluster start, {self.executors} x {self.workers_per_video} workers)"
                    if self.executors else "") + f"; manifest {self.manifest}"]
        lines += [f"  failed: {r.label}: {r.reason}" for r in self.failures]
        return "\n".join(lines)
