"""Progress of long work on stderr: a tqdm bar on a terminal, plain prefixed log lines otherwise.

The one progress display of the package: the steps of a render (``api``) and the videos of a
batch (``batch.progress``) are thin subclasses that choose what the bar shows and what a plain
line says. Thread-safe: the driver threads of a batch report through one instance.
"""

from __future__ import annotations

import sys
import threading
import time


class Progress:
    """``total`` units of work (``initial`` already done): a tqdm bar when stderr is a terminal;
    otherwise :meth:`advance` says when a plain line is due (every ``every`` units and at the
    end) and :meth:`log` prints it with ``prefix``. ``enabled=False`` shows nothing at all."""

    def __init__(self, total: int, *, initial: int = 0, desc: str | None = None, unit: str = "it",
                 prefix: str = "[longvid]", enabled: bool = True, every: int = 1, smoothing: float = 0.3):
        from tqdm import tqdm

        self.total, self.n, self.prefix, self.enabled = total, initial, prefix, enabled
        self.every = max(1, every)
        self.tty = sys.stderr.isatty()
        self.lock = threading.RLock()
        self.t0, self._n0 = time.perf_counter(), initial
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not (enabled and self.tty),
                        dynamic_ncols=True, smoothing=smoothing)

    @property
    def plain(self) -> bool:
        """Reporting with plain log lines (enabled, stderr not a terminal)."""
        return self.enabled and not self.tty

    def restart_clock(self) -> None:
        """The work proper starts now: rate and ETA (the bar's too) are measured from here."""
        with self.lock:
            self.t0, self._n0 = time.perf_counter(), self.n
            if hasattr(self.bar, "start_t") and hasattr(self.bar, "_time"):
                self.bar.start_t = self.bar.last_print_t = self.bar._time()

    def elapsed(self) -> float:
        """Seconds since the clock started."""
        return time.perf_counter() - self.t0

    def eta(self) -> float | None:
        """Seconds left at the average rate since the clock started; None before any unit is done."""
        done = self.n - self._n0
        return self.elapsed() / done * (self.total - self.n) if done > 0 else None

    def show(self, **fields) -> None:
        """Show ``fields`` after the bar."""
        with self.lock:
            self.bar.set_postfix(**fields)

    def advance(self, n: int = 1, **fields) -> bool:
        """``n`` more units done, ``fields`` shown after the bar; True when a plain line is due."""
        with self.lock:
            self.n += n
            if fields:
                self.bar.set_postfix(refresh=False, **fields)
            self.bar.update(n)
            return self.plain and (self.n % self.every == 0 or self.n >= self.total)

    def log(self, msg: str) -> None:
        """One ``prefix msg`` line on stderr (above the bar on a terminal)."""
        if not self.enabled:
            return
        if self.tty:
            self.bar.write(f"{self.prefix} {msg}", file=sys.stderr)
        else:
            print(f"{self.prefix} {msg}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()
