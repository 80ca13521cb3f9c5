"""``longvid batch PROMPTS.jsonl --out-dir DIR``: render many videos on a Ray cluster, resumably.

Input: one JSON object per line with ``id`` and ``prompt`` and optionally ``negative_prompt``,
``frames``, ``height``, ``width``, ``seed``, ``recipe``, ``steps``, ``guidance``; the command's
flags give the defaults. Blank lines are ignored. Each row is validated with the same rules as
``longvid render`` (a :class:`RenderSpec` is built; its :class:`SpecError` names the key).

Scheduling: ``M = floor(capacity / K)`` executors of ``K = --workers-per-video`` workers each
(``api.make_executor(spec, ParallelConfig(workers=K, address=...))``: Ray executors) are created
once (capacity = the cluster's GPUs, or CPUs on a CPU-only cluster, one per worker; capped by
``--max-in-flight`` and by the number of videos to render) and reused across videos: each is fed
from a shared queue by one driver thread calling ``render(spec, executor=ex)``, which leaves it
open; they are closed at the end. The rows' specs say what to render; the parallel layout is the
batch's, not the rows'. Without ``--address``/``RAY_ADDRESS`` a private local Ray is started and
shut down at the end; with one the cluster is joined and left running (only this driver
disconnects); a Ray already initialized in the calling process (``run_batch`` from a job) is used
as is and left initialized.

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
only come from a dead writer while the lock is held. The same cleaning runs again when the batch
ends: a killed run's writers are Ray actors outside its process group, and may still be dying when
the next run starts. So ``DIR`` is meant to belong to the batch.

Modules, one concern each: :mod:`.rows` (the prompts file -> specs, ids -> file names),
:mod:`.manifest` (``manifest.jsonl``), :mod:`.outdir` (the directory: finished videos, stale
temporaries), :mod:`.pool` (executors and their driver threads), :mod:`.progress`,
:mod:`.results`, :mod:`.run` (:func:`run_batch`) and :mod:`.cli` (:func:`main_batch`).

Exit codes: 2 for bad input (missing/unreadable prompts file, output directory not creatable or
not writable, bad flags, another batch running in ``DIR``) with one line
``longvid batch: error: ...`` before any Ray start; 1 when any row failed (a summary lists them)
or the cluster is unusable; 130 when interrupted; 0 when every row is done.
"""

from .cli import build_batch_parser, main_batch
from .manifest import MANIFEST, Manifest, read_manifest
from .outdir import clean_stale, finished
from .results import PROG, BatchInputError, BatchResult, RowResult
from .rows import DEFAULT_KEYS, ROW_KEYS, assign_names, parse_rows, safe_name
from .run import run_batch

__all__ = ["DEFAULT_KEYS", "MANIFEST", "PROG", "ROW_KEYS", "BatchInputError", "BatchResult", "Manifest", "RowResult",
           "assign_names", "build_batch_parser", "clean_stale", "finished", "main_batch", "parse_rows",
           "read_manifest", "run_batch", "safe_name"]
