"""The batch manifest ``DIR/manifest.jsonl``: append-only JSON lines, each written with one
``write`` then ``fsync``, the latest line per id winning; an exclusive ``flock`` makes it one
batch per directory, and a torn final line (a crash mid write) is ignored on read and cut off
before the next append."""

from __future__ import annotations

import json
import os
import threading
from datetime import datetime, timezone

from .results import BatchInputError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no cross-process lock
    fcntl = None

MANIFEST = "manifest.jsonl"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_manifest(path: str) -> dict[str, dict]:
    """Latest entry per id of a manifest (``{}`` when there is none). Lines that do not parse as
    JSON objects -- a torn final line after a crash -- are ignored, as are ``"id": null`` lines."""
    latest: dict[str, dict] = {}
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return latest
    for raw in data.split(b"\n"):
        try:
            entry = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            continue
        if isinstance(entry, dict) and isinstance(entry.get("id"), str) and "state" in entry:
            latest[entry["id"]] = entry
    return latest


class Manifest:
    """``DIR/manifest.jsonl``, opened for appending under an exclusive lock (one batch per DIR)."""

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self.fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(self.fd)
                raise BatchInputError(f"another longvid batch is running in {os.path.dirname(path) or '.'!r} "
                                      f"(it holds {path!r})") from None
        self._cut_torn_tail()
        self.latest = read_manifest(path)
        self.listeners: list = []
        """Called with each appended entry (the gallery rewrites its page)."""

    def _cut_torn_tail(self) -> None:
        """Drop a final line without its newline (a write cut by a crash), so appends stay whole."""
        size = os.fstat(self.fd).st_size
        if not size:
            return
        pos = size
        while pos > 0:
            step = min(4096, pos)
            chunk = os.pread(self.fd, step, pos - step)
            if pos == size and chunk.endswith(b"\n"):
                return
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                os.ftruncate(self.fd, pos - step + nl + 1)
                return
            pos -= step
        os.ftruncate(self.fd, 0)

    def append(self, entry: dict) -> None:
        """Append one line (single write, then fsync) and remember it as the id's latest."""
        entry = {**entry, "time": _now()}
        data = (json.dumps(entry, default=str, ensure_ascii=True) + "\n").encode()
        with self._lock:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]
            os.fsync(self.fd)
            if isinstance(entry.get("id"), str):
                self.latest[entry["id"]] = entry
            for listener in self.listeners:
                listener(entry)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # releases the lock
            self.fd = -1
