"""``longvid batch PROMPTS.jsonl --out-dir DIR``: render many videos on a Ray cluster, resumably.

Input: one JSON object per line with ``id`` and ``prompt`` and optionally ``negative_prompt``,
``frames``, ``height``, ``width``, ``seed``, ``recipe``, ``steps``, ``guidance``; the command's
flags give the defaults. Blank lines are ignored. Each row is validated with the same rules as
``longvid render`` (a :class:`RenderSpec` is built; its :class:`SpecError` names the key).

Scheduling: ``M = floor(capacity / K)`` :class:`RayExecutor` s of ``K = --workers-per-video``
workers each are created once (capacity = the cluster's available GPUs, or CPUs on a CPU-only
cluster, one per worker; capped by ``--max-in-flight`` and by the number of videos to render)
and reused across videos: each is fed from a shared queue by one driver thread calling
``render(spec, executor=ex)``, which leaves it open. They are closed at the end. Without
``--address``/``RAY_ADDRESS`` a private local Ray is started and shut down at the end; with one
the cluster is joined and left running (only this driver disconnects); a Ray already initialized
in the calling process (``run_batch`` from a job) is used as is and left initialized.

Output, all inside ``DIR``:

* ``<name>.mp4`` and ``<name>.mp4.json`` per id, written atomically by ``render`` (video to a
  temporary ``.<name>.partial-<pid>.mp4`` renamed into place, then the sidecar);
  ``<name>.mp4.ckpt`` while a video is in flight (every ``--checkpoint-every`` steps; removed
  when it is done).
* ``manifest.jsonl``: append-only, one JSON object per line, each written with a single
  ``write`` then ``fsync``::

      {"id": "cat", "state": "running", "line": 2, "out": "cat.mp4", "resume": true, "time": "..."}
      {"id": "cat", "state": "done", "line": 2, "out": "cat.mp4", "timings": {...},
       "resumed_from_step": 12, "time": "..."}
      {"id": "dog", "state": "failed", "line": 3, "reason": "frames: must be 4k+1 ...", "time": "..."}
      {"id": null, "state": "failed", "line": 4, "reason": "malformed JSON: ...", "time": "..."}

  ``state`` is ``running`` | ``done`` | ``failed``; the latest line per ``id`` wins. Rows that
  have no usable id of their own (malformed line, not an object, missing id, a duplicate id's
  second occurrence) are recorded with ``"id": null`` and their ``line`` so they never shadow
  a real id's state. ``out`` is relative to ``DIR``. On read a torn final line (a crash mid
  write) is ignored, and cut off before the next append.

File names: an id is sanitized to ``[A-Za-z0-9._-]`` (others become ``_``), leading dots are
stripped, it is cut to 100 characters; if the result differs from the id, ``-`` and 8 hex digits
of the id's SHA-256 are appended (``../evil`` -> ``.._evil-1a2b3c4d``, the empty id ->
``_-e3b0c442``), so names never leave ``DIR`` and two ids never share a file. Names that still
collide within the batch (also case-insensitively) get the hash as well (longer on a clash).

Rerunning the same command (resume):

* an id is skipped when its video is there and its sidecar parses and records the same
  output-determining settings (prompt, seed, frames, steps... and fps) as the row: that is a
  video whose latest manifest state is ``done``, or one killed after its sidecar was written but
  before the ``done`` line (it is recorded ``done`` then, its stale checkpoint removed); a row
  whose settings changed is rendered again;
* any other id with ``<name>.mp4.ckpt`` continues from it (``RenderSpec(resume=True)``; the
  resumed render equals an uninterrupted one); a checkpoint of other settings is dropped and the
  video rendered from the start;
* the rest (failed, never started) are rendered.

So after a crash no finished video is rendered again and in-flight ones lose at most
``--checkpoint-every`` steps.

Stale temporaries: only one batch may run in ``DIR`` at a time (an exclusive ``flock`` on
``manifest.jsonl``; a second one is refused). On start, with that lock held, ``DIR`` is cleaned
of what a killed run left: video temporaries ``.<name>.partial-<pid>[.ext]`` whose ``pid`` is
not a live process on this machine (a live one may be a ``longvid render`` writing there), and
checkpoint/sidecar temporaries (``.ckpt-*``, ``.<name>.json.*.tmp``), which carry no pid and can
only come from a dead writer while the lock is held. So ``DIR`` is meant to belong to the batch.

Exit codes: 2 for bad input (missing/unreadable prompts file, output directory not creatable or
not writable, bad flags, another batch running in ``DIR``) with one line
``longvid batch: error: ...`` before any Ray start; 1 when any row failed (a summary lists them)
or the cluster is unusable; 130 when interrupted; 0 when every row is done.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import queue
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from .config import RenderSpec, SpecError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no cross-process lock
    fcntl = None

PROG = "longvid batch"
MANIFEST = "manifest.jsonl"
ROW_KEYS = ("id", "prompt", "negative_prompt", "frames", "height", "width", "seed", "recipe", "steps", "guidance")
"""Keys a prompts row may have."""
DEFAULT_KEYS = ("model", "negative_prompt", "frames", "height", "width", "fps", "steps", "guidance", "recipe",
                "seed", "device", "dtype", "decode_chunk", "checkpoint_every")
"""Keys of ``run_batch``'s ``defaults`` (the render flags ``longvid batch`` takes)."""
MAX_NAME = 100
"""Longest sanitized id (before the hash suffix)."""
OUTPUT_KEY_FIELDS = ("prompt", "negative_prompt", "model", "frames", "height", "width", "steps", "guidance",
                     "recipe", "window", "stride", "seed", "dtype", "fps")
"""Spec fields that determine a finished video (a sidecar must match them to be skipped)."""
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_PARTIAL = re.compile(r"^\..+\.partial-(\d+)(\.[A-Za-z0-9]+)?$")
_JSON_TMP = re.compile(r"^\..+\.json\..+\.tmp$")


class BatchInputError(ValueError):
    """The batch cannot start: prompts file, output directory or settings are unusable."""


# -- ids and file names -------------------------------------------------------------------------

def _hash(s: str, n: int = 8) -> str:
    return hashlib.sha256(s.encode("utf-8", "surrogatepass")).hexdigest()[:n]


def safe_name(id_: str) -> str:
    """File-name stem for an id: ``[A-Za-z0-9._-]`` only (others -> ``_``), no leading dot, at most
    100 characters, plus ``-<8 hex of sha256(id)>`` whenever that changed the id."""
    base = _UNSAFE.sub("_", id_).lstrip(".")[:MAX_NAME] or "_"
    return base if base == id_ else f"{base}-{_hash(id_)}"


def assign_names(ids: list[str]) -> dict[str, str]:
    """Distinct file-name stems for distinct ids: :func:`safe_name`, then the hash is appended to
    names that still collide (case-insensitively, for case-insensitive file systems), with a
    longer hash should that not settle it."""
    names = {i: safe_name(i) for i in dict.fromkeys(ids)}
    for n in (8, 16, 64):
        groups: dict[str, list[str]] = {}
        for i, name in names.items():
            groups.setdefault(name.lower(), []).append(i)
        clashes = [g for g in groups.values() if len(g) > 1]
        if not clashes:
            break
        for group in clashes:
            for i in group:
                stem = _UNSAFE.sub("_", i).lstrip(".")[:MAX_NAME] or "_"
                names[i] = f"{stem}-{_hash(i, n)}"
    return names


# -- manifest -----------------------------------------------------------------------------------

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

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # releases the lock
            self.fd = -1


# -- rows ---------------------------------------------------------------------------------------

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

    @property
    def key(self) -> str:
        return self.id if self.id is not None else f"line {self.line}"

    @property
    def label(self) -> str:
        return f"line {self.line} (id {self.id!r})" if self.id is not None else f"line {self.line}"


@dataclass
class BatchResult:
    """Outcome of :func:`run_batch`: one :class:`RowResult` per non-blank line of the prompts file."""

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


def _type_problem(row: dict) -> str | None:
    for key in ("prompt", "negative_prompt", "recipe"):
        if key in row and not isinstance(row[key], str):
            return f"{key}: must be a string, got {row[key]!r}"
    return None


def _check_defaults(defaults: dict) -> dict:
    unknown = sorted(set(defaults) - set(DEFAULT_KEYS))
    if unknown:
        raise BatchInputError(f"unknown default setting(s): {', '.join(unknown)} (allowed: {', '.join(DEFAULT_KEYS)})")
    defaults = {k: v for k, v in defaults.items() if v is not None or k in ("height", "width")}
    if str(defaults.get("device", "")).startswith("cuda:"):
        raise SpecError("device", "each Ray worker gets a GPU of its own: use cuda or auto, not "
                                  f"{defaults['device']!r}")
    problem = _type_problem(defaults)
    if problem:
        field_name, _, message = problem.partition(": ")
        raise SpecError(field_name, message)
    # Same rules as `longvid render`, checked before anything else; the output is checked later.
    RenderSpec(prompt="defaults", out=os.path.join(tempfile.gettempdir(), "longvid-batch-check.mp4"), **defaults)
    return defaults


def _read_prompts(path: str) -> list[str]:
    if not os.path.exists(path):
        raise BatchInputError(f"prompts file {path!r} does not exist")
    if os.path.isdir(path):
        raise BatchInputError(f"prompts file {path!r} is a directory")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BatchInputError(f"prompts file {path!r} is not readable: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BatchInputError(f"prompts file {path!r} is not UTF-8 text (byte {e.start})") from None
    return text.split("\n")


def _prepare_out_dir(out_dir: str) -> None:
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise BatchInputError(f"output directory {out_dir!r} exists and is not a directory")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise BatchInputError(f"cannot create output directory {out_dir!r}: {e.strerror or e}") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise BatchInputError(f"output directory {out_dir!r} is not writable")


def parse_rows(lines: list[str], out_dir: str, defaults: dict, render_kw: dict) -> list[RowResult]:
    """One :class:`RowResult` per non-blank line: with its ``spec`` when valid, failed with a
    ``reason`` otherwise. ``render_kw`` adds spec fields that are not per row (workers...)."""
    rows: list[RowResult] = []
    first: dict[str, int] = {}
    parsed: list[tuple[RowResult, dict | None]] = []
    for n, text in enumerate(lines, 1):
        if not text.strip():
            continue
        r = RowResult(line=n, id=None)
        rows.append(r)
        try:
            obj = json.loads(text)
        except ValueError as e:
            r.state, r.reason = "failed", f"malformed JSON: {e}"
            continue
        if not isinstance(obj, dict):
            r.state, r.reason = "failed", f"not a JSON object (got {type(obj).__name__})"
            continue
        rid = obj.get("id")
        if isinstance(rid, int) and not isinstance(rid, bool):
            rid = str(rid)
        if rid is None or rid == "":
            r.state, r.reason = "failed", "missing id"
            continue
        if not isinstance(rid, str):
            r.state, r.reason = "failed", f"id: must be a string, got {rid!r}"
            continue
        if rid in first:
            r.state, r.reason = "failed", f"duplicate id {rid!r} (first on line {first[rid]})"
            continue
        first[rid] = n
        r.id = rid
        parsed.append((r, obj))
    names = assign_names([r.id for r, _ in parsed])
    for r, obj in parsed:
        r.name = names[r.id]
        r.out = os.path.join(out_dir, r.name + ".mp4")
        unknown = [k for k in obj if k not in ROW_KEYS]
        problem = None
        if "prompt" not in obj:
            problem = "missing prompt"
        elif unknown:
            problem = (f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                       f"(allowed: {', '.join(ROW_KEYS)})")
        else:
            problem = _type_problem(obj)
        if problem is None:
            kw = {**defaults, **{k: v for k, v in obj.items() if k != "id"}, **render_kw, "out": r.out}
            try:
                r.spec = RenderSpec(**kw)
            except SpecError as e:
                problem = f"{e.field}: {e.message}"
            except (TypeError, ValueError) as e:
                problem = f"invalid row: {e}"
        if problem:
            r.state, r.reason = "failed", problem
    return rows


# -- finished videos, stale files ---------------------------------------------------------------

def _output_key(d: dict) -> str:
    """Hash of the output-determining settings; numbers compare by value (``8 == 8.0``)."""
    norm = lambda v: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v  # noqa: E731
    blob = json.dumps({k: norm(d.get(k)) for k in OUTPUT_KEY_FIELDS}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def finished(spec: RenderSpec) -> dict | None:
    """The sidecar of ``spec.out`` when the video exists and its sidecar parses and was written for
    the same output-determining settings; ``None`` otherwise."""
    from .io.video import sidecar_path

    try:
        if os.path.getsize(spec.out) <= 0:
            return None
        with open(sidecar_path(spec.out), encoding="utf-8") as f:
            side = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(side, dict) or not isinstance(side.get("spec"), dict):
        return None
    if _output_key(side["spec"]) != _output_key(spec.to_dict()) or side.get("frames") != spec.frames:
        return None
    return side


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process on this machine (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def clean_stale(out_dir: str) -> list[str]:
    """Remove what killed writers left in ``out_dir`` (call with the manifest lock held): video
    temporaries ``.<name>.partial-<pid>[.ext]`` of dead pids, and checkpoint / sidecar
    temporaries (``.ckpt-*``, ``.<name>.json.*.tmp``). Returns the removed names."""
    import shutil

    removed = []
    for name in os.listdir(out_dir):
        m = _PARTIAL.match(name)
        stale = (m is not None and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1)))) \
            or name.startswith(".ckpt-") or _JSON_TMP.match(name) is not None
        if not stale:
            continue
        path = os.path.join(out_dir, name)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
            removed.append(name)
        except FileNotFoundError:
            pass
    return removed


# -- progress -----------------------------------------------------------------------------------

class _Progress:
    """A tqdm bar on a terminal; otherwise a plain log line on each completion."""

    def __init__(self, result: BatchResult, todo: int, enabled: bool):
        from tqdm import tqdm

        self.result, self.enabled = result, enabled
        self.tty = sys.stderr.isatty()
        self.lock = threading.Lock()
        self.in_flight = 0
        self.todo = todo
        self.completed = 0
        self.t0 = time.perf_counter()
        settled = result.done + result.failed
        self.bar = tqdm(total=result.total, initial=settled, unit="video", desc="batch",
                        disable=not (enabled and self.tty), dynamic_ncols=True, smoothing=0)
        self._postfix()

    def begin(self) -> None:
        """Renders start now (the ETA is measured from here, not from the cluster start)."""
        self.t0 = time.perf_counter()
        with self.lock:
            if hasattr(self.bar, "start_t") and hasattr(self.bar, "_time"):
                self.bar.start_t = self.bar.last_print_t = self.bar._time()  # its rate and ETA too

    def _postfix(self, refresh: bool = True) -> None:
        self.bar.set_postfix(done=self.result.done, failed=self.result.failed, in_flight=self.in_flight,
                             refresh=refresh)

    def eta(self) -> str:
        if not self.completed:
            return "?"
        rate = self.completed / (time.perf_counter() - self.t0)
        left = self.todo - self.completed
        return f"{left / rate:.0f}s" if rate > 0 else "?"

    def log(self, msg: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.bar.write(f"[longvid batch] {msg}", file=sys.stderr)
        else:
            print(f"[longvid batch] {msg}", file=sys.stderr, flush=True)

    def started(self) -> None:
        with self.lock:
            self.in_flight += 1
            self._postfix()

    def finished(self, row: RowResult) -> None:
        with self.lock:
            self.in_flight -= 1
            self.completed += 1
            self._postfix(refresh=False)
            self.bar.update(1)
            if self.enabled and not self.tty:
                r = self.result
                what = f"{row.id!r} done" if row.state == "done" else f"{row.id!r} failed: {row.reason}"
                print(f"[longvid batch] {r.done}/{r.total} done, {r.failed} failed, {self.in_flight} in flight, "
                      f"eta {self.eta()} ({what})", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()


# -- cluster ------------------------------------------------------------------------------------

def _capacity(ray, workers_per_video: int, device: str) -> tuple[int, str]:
    """Videos the cluster can host at once with ``workers_per_video`` workers each, and the
    resource that limits it (GPU bundles are ``{GPU: 1, CPU: 1}``; CPU ones ``{CPU: 1}``).

    Counted on the cluster's total resources, not the available ones: these lag behind just
    after a previous batch released its placement groups, and on a shared cluster executors
    that cannot be placed within RayExecutor's placement timeout are simply dropped."""
    total = ray.cluster_resources()
    use_gpu = device.startswith("cuda") or (device == "auto" and total.get("GPU", 0) >= 1)
    bundle = {"GPU": 1, "CPU": 1} if use_gpu else {"CPU": 1}
    fits = lambda res: min(int(res.get(k, 0) // (v * workers_per_video)) for k, v in bundle.items())  # noqa: E731
    what = "GPU" if use_gpu else "CPU"
    if fits(total) < 1:
        have = ", ".join(f"{total.get(k, 0):g} {k}" for k in bundle)
        raise RuntimeError(f"--workers-per-video {workers_per_video} needs {workers_per_video} {what} "
                           f"per video; the cluster has {have}")
    return fits(total), what


# -- the batch ----------------------------------------------------------------------------------

def run_batch(prompts_path: str, out_dir: str, defaults: dict | None = None, workers_per_video: int = 1,
              address: str | None = None, max_in_flight: int | None = None,
              progress: bool = True) -> BatchResult:
    """Render every row of ``prompts_path`` into ``out_dir``; see the module docstring.

    ``defaults``: render settings for rows that do not give them (keys: :data:`DEFAULT_KEYS`).
    ``address``: Ray cluster to join (else ``RAY_ADDRESS``, else a private local Ray; a Ray
    already initialized in this process is used as is). ``max_in_flight``: at most this many
    videos at once (default: as many as the cluster can host with ``workers_per_video`` each).

    Raises :class:`BatchInputError` / :class:`SpecError` on bad input, before any Ray start.
    Per-row problems and failed renders are recorded in the result and the manifest.
    """
    t_start = time.perf_counter()
    if isinstance(workers_per_video, bool) or not isinstance(workers_per_video, int) or workers_per_video < 1:
        raise BatchInputError(f"--workers-per-video: must be a positive integer, got {workers_per_video!r}")
    if max_in_flight is not None and (isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int)
                                      or max_in_flight < 1):
        raise BatchInputError(f"--max-in-flight: must be a positive integer, got {max_in_flight!r}")
    address = address or os.environ.get("RAY_ADDRESS") or None
    defaults = _check_defaults(dict(defaults or {}))
    lines = _read_prompts(prompts_path)
    _prepare_out_dir(out_dir)
    manifest = Manifest(os.path.join(out_dir, MANIFEST))
    try:
        removed = clean_stale(out_dir)
        rows = parse_rows(lines, out_dir, defaults, {"workers": workers_per_video, "address": address})
        result = BatchResult(rows, out_dir, manifest.path, workers_per_video=workers_per_video)
        todo = _classify(rows, manifest)
        prog = _Progress(result, len(todo), progress)
        try:
            if removed:
                prog.log(f"removed {len(removed)} stale temporary file(s) of a killed run: {', '.join(removed)}")
            resuming = sum(1 for r in todo if r.spec.resume)
            prog.log(f"{result.total} rows: {result.skipped} already done, {result.failed} invalid, "
                     f"{len(todo)} to render ({resuming} resuming from a checkpoint)")
            if todo:
                _render_all(todo, result, manifest, prog, workers_per_video, address, max_in_flight)
        finally:
            prog.close()
    finally:
        manifest.close()
    result.elapsed = time.perf_counter() - t_start
    return result


def _classify(rows: list[RowResult], manifest: Manifest) -> list[RowResult]:
    """Record invalid rows as failed, skip finished ones; the rest (with ``resume`` set where a
    checkpoint exists) are returned to be rendered."""
    from .runtime.checkpoint import checkpoint_path

    todo = []
    for r in rows:
        if r.state == "failed":
            manifest.append({"id": r.id, "state": "failed", "line": r.line, "reason": r.reason})
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


def _render_all(todo: list[RowResult], result: BatchResult, manifest: Manifest, prog: _Progress,
                workers_per_video: int, address: str | None, max_in_flight: int | None) -> None:
    from .api import model_source
    from .runtime.ray_executor import ClusterError, RayExecutor, connect, ray

    if ray is None:
        raise RuntimeError("ray is not installed")
    owns_ray = False
    executors: list = []
    lock = threading.Lock()  # executors / stop: a lane placed late closes its own executor
    t0 = time.perf_counter()
    stop = threading.Event()
    try:
        # ours to shut down when we connected (for a joined cluster: disconnect; it keeps running)
        owns_ray = connect(address, quiet=not prog.enabled) is not None
        spec0 = todo[0].spec
        capacity, what = _capacity(ray, workers_per_video, spec0.device)
        m = min(capacity, max_in_flight or capacity, len(todo))
        source = model_source(spec0)
        family = spec0.resolved.family.name
        prog.log(f"{m} video(s) in flight, {workers_per_video} worker(s) each ({capacity} fit the "
                 f"cluster's {what})")

        jobs: queue.Queue = queue.Queue()
        for r in todo:
            jobs.put(r)
        errors: list[BaseException] = []
        first_ready: list[float] = []

        def lane():
            """Create one executor, then feed it from the queue (it starts as soon as it is placed)."""
            try:
                ex = RayExecutor(family, source, workers_per_video, device=spec0.device, dtype=spec0.dtype)
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
                    prog.begin()
            _drive(ex, jobs, manifest, prog, stop)

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
        if owns_ray and ray.is_initialized():
            ray.shutdown()


def _join(t: threading.Thread) -> None:
    while t.is_alive():  # short timeouts keep Ctrl-C responsive
        t.join(0.2)


def _healthy(ex) -> bool:
    from .runtime.ray_executor import ray

    try:
        ray.get([w.pid.remote() for w in ex.workers], timeout=60)
        return bool(ex.workers)
    except Exception:  # noqa: BLE001
        return False


def _drive(ex, jobs: queue.Queue, manifest: Manifest, prog: _Progress, stop: threading.Event) -> None:
    """One executor's driver thread: render queued rows until the queue is empty."""
    from .api import render
    from .runtime.checkpoint import CheckpointError, checkpoint_path

    while not stop.is_set():
        try:
            r = jobs.get_nowait()
        except queue.Empty:
            return
        r.state = "running"
        prog.started()
        manifest.append({"id": r.id, "state": "running", "line": r.line, "out": os.path.basename(r.out),
                         "resume": r.spec.resume})
        try:
            try:
                res = render(r.spec, executor=ex, progress=False)
            except CheckpointError as e:  # a checkpoint of other settings (the row was edited)
                prog.log(f"{r.id!r}: {e}; rendering from the start")
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(checkpoint_path(r.out))
                r.spec = replace(r.spec, resume=False)
                res = render(r.spec, executor=ex, progress=False)
        except Exception as e:  # noqa: BLE001 - recorded; the batch goes on
            if stop.is_set():  # interrupted: stays "running", resumes next time
                return
            r.state, r.reason = "failed", f"render failed: {type(e).__name__}: {e}"
            manifest.append({"id": r.id, "state": "failed", "line": r.line, "reason": r.reason})
            prog.finished(r)
            if not _healthy(ex):
                prog.log(f"an executor stopped working after {r.id!r}; the others go on")
                return
            continue
        side = finished(r.spec) or {}
        r.state, r.rendered = "done", True
        r.resumed_from_step = side.get("resumed_from_step")
        manifest.append({"id": r.id, "state": "done", "line": r.line, "out": os.path.basename(res.out),
                         "timings": res.timings, "resumed_from_step": r.resumed_from_step})
        prog.finished(r)


# -- CLI ----------------------------------------------------------------------------------------

def build_batch_parser() -> argparse.ArgumentParser:
    from .cli import _Parser, add_spec_args

    p = _Parser(prog=PROG, description="Render every prompt of a JSONL file into a directory, several videos at "
                                       "once on a Ray cluster; rerunning the same command resumes (finished "
                                       "videos are skipped, interrupted ones continue from their checkpoint).")
    p.add_argument("prompts", metavar="PROMPTS.jsonl",
                   help="one JSON object per line: id, prompt and optionally negative_prompt, frames, height, "
                        "width, seed, recipe, steps, guidance (the flags below give the defaults)")
    p.add_argument("--out-dir", required=True, metavar="DIR",
                   help="output directory (created if missing): DIR/<id>.mp4, DIR/<id>.mp4.json and "
                        "DIR/manifest.jsonl; ids are sanitized into safe file names")
    # The render flags, as defaults for every row (rows override them).
    add_spec_args(p, DEFAULT_KEYS)
    p.add_argument("--workers-per-video", type=int, default=1, metavar="K",
                   help="Ray workers per video (one GPU each; one CPU each on a CPU-only cluster) "
                        "(default: %(default)s)")
    p.add_argument("--max-in-flight", type=int, default=None, metavar="N",
                   help="at most N videos at once (default: as many as the cluster can host with K workers each)")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join and leave running (e.g. auto, or host:6379); default: $RAY_ADDRESS, "
                        "else a private local Ray instance started and stopped by this command")
    p.add_argument("--quiet", action="store_true", help="no progress bar or log lines (the summary is printed)")
    return p


def main_batch(argv: list[str] | None = None) -> int:
    """``longvid batch PROMPTS.jsonl --out-dir DIR [flags]``; exit 0 all done, 1 some failed, 2 bad input."""
    parser = build_batch_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    defaults = {k: getattr(args, k) for k in DEFAULT_KEYS}
    try:
        result = run_batch(args.prompts, args.out_dir, defaults, workers_per_video=args.workers_per_video,
                           address=args.address, max_in_flight=args.max_in_flight, progress=not args.quiet)
    except SpecError as e:
        print(f"{PROG}: error: --{e.field.replace('_', '-')}: {e.message}", file=sys.stderr)
        return 2
    except BatchInputError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    if result.error:
        print(f"{PROG}: error: {result.error}", file=sys.stderr)
    print(result.summary(), flush=True)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main_batch())
