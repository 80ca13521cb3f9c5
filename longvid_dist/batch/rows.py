"""The prompts file: one JSON object per line parsed into a :class:`RenderSpec` (the command's
flags as defaults, the same rules as ``longvid render``), ids sanitized into distinct file names,
and every unusable row recorded with its reason instead of stopping the batch."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile

from ..config import RenderSpec, SpecError
from .results import BatchInputError, RowResult

ROW_KEYS = ("id", "prompt", "negative_prompt", "frames", "height", "width", "seed", "recipe", "steps", "guidance",
            "storyboard")
"""Keys a prompts row may have (``storyboard``: an inline storyboard object or the path of its JSON
file, as ``longvid render --storyboard``; ``prompt`` may then be left out)."""
DEFAULT_KEYS = ("model", "lora", "negative_prompt", "frames", "height", "width", "fps", "steps", "guidance", "recipe",
                "seed", "device", "dtype", "offload", "decode_chunk", "checkpoint_every")
"""Keys of ``run_batch``'s ``defaults`` (the render flags ``longvid batch`` takes). ``model`` and
``lora`` are per run, not per row: a batch's workers load one model once."""
MAX_NAME = 100
"""Longest sanitized id (before the hash suffix)."""
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


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


# -- defaults and the prompts file ------------------------------------------------------------

def _type_problem(row: dict) -> str | None:
    for key in ("prompt", "negative_prompt", "recipe"):
        if key in row and not isinstance(row[key], str):
            return f"{key}: must be a string, got {row[key]!r}"
    return None


def check_defaults(defaults: dict) -> dict:
    """The defaults without unset values, checked with ``longvid render``'s rules (raises
    :class:`BatchInputError` for unknown keys, :class:`SpecError` naming a bad field)."""
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


def read_prompts(path: str) -> list[str]:
    """The lines of the prompts file (UTF-8, a BOM allowed); :class:`BatchInputError` when unusable."""
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


# -- rows ---------------------------------------------------------------------------------------

def parse_rows(lines: list[str], out_dir: str, defaults: dict) -> list[RowResult]:
    """One :class:`RowResult` per non-blank line: with its ``spec`` (output ``out_dir/<name>.mp4``)
    when valid, failed with a ``reason`` otherwise. The parallel layout is not part of a row."""
    rows: list[RowResult] = []
    first: dict[str, int] = {}
    parsed: list[tuple[RowResult, dict]] = []
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
        if "prompt" not in obj and obj.get("storyboard") is None:
            problem = "missing prompt"
        elif unknown:
            problem = (f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                       f"(allowed: {', '.join(ROW_KEYS)})")
        else:
            problem = _type_problem(obj)
        if problem is None:
            kw = {**defaults, **{k: v for k, v in obj.items() if k != "id"}, "out": r.out}
            try:
                r.spec = RenderSpec(**kw)
            except SpecError as e:
                problem = f"{e.field}: {e.message}"
            except (TypeError, ValueError) as e:
                problem = f"invalid row: {e}"
        if problem:
            r.state, r.reason = "failed", problem
    return rows
