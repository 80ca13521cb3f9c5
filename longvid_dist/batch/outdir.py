"""The output directory of a batch: made ready and checked writable, cleaned of what killed
writers left there, and asked whether a row's video is already finished for the same settings
(its sidecar records the same :func:`~longvid_dist.config.output_key`)."""

from __future__ import annotations

import json
import os
import re

from ..config import RenderSpec, output_key
from .results import BatchInputError

_PARTIAL = re.compile(r"^\..+\.partial-(\d+)(\.[A-Za-z0-9]+)?$")
_JSON_TMP = re.compile(r"^\..+\.json\..+\.tmp$")


def prepare_out_dir(out_dir: str) -> None:
    """Create ``out_dir`` if missing; :class:`BatchInputError` when it cannot hold the batch."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise BatchInputError(f"output directory {out_dir!r} exists and is not a directory")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise BatchInputError(f"cannot create output directory {out_dir!r}: {e.strerror or e}") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise BatchInputError(f"output directory {out_dir!r} is not writable")


def finished(spec: RenderSpec) -> dict | None:
    """The sidecar of ``spec.out`` when the video exists and its sidecar parses and was written for
    the same output-determining settings; ``None`` otherwise."""
    from ..io.video import sidecar_path

    try:
        if os.path.getsize(spec.out) <= 0:
            return None
        with open(sidecar_path(spec.out), encoding="utf-8") as f:
            side = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(side, dict) or not isinstance(side.get("spec"), dict):
        return None
    if output_key(side["spec"]) != spec.output_key() or side.get("frames") != spec.frames:
        return None
    return side


def pid_alive(pid: int) -> bool:
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
        stale = (m is not None and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1)))) \
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
