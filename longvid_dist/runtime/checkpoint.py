"""Atomic checkpoints of the coordinator's state, so a killed render resumes exactly.

A checkpoint holds the latent after step ``i``, the sampler state (schedulers: multistep
solvers keep a history of model outputs) as tensors plus JSON, the next step index and the
output key of the spec. It is written with ``torch.save`` of plain tensors and strings and read
with ``torch.load(weights_only=True)``: a foreign or tampered file is refused, and nothing in it
is ever executed (no pickle of objects). There is no generator state to save: every random
draw after the initial noise comes from a generator keyed by (seed, purpose, step) (DESIGN
decision 3).
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import warnings

import torch

from ..config import output_fields

FORMAT = "longvid-checkpoint"
VERSION = 2


class CheckpointError(ValueError):
    """No usable checkpoint for this spec."""


def checkpoint_path(out: str) -> str:
    """``<out>.ckpt`` beside the output (``dir.ckpt`` for a PNG directory ``dir/``)."""
    return out.rstrip("/") + ".ckpt"


def save(path: str, spec, next_step: int, latent: torch.Tensor, state: tuple[dict, dict]) -> None:
    """Write the checkpoint (``state`` = the sampler's ``(tensors, meta)``) to a temporary file,
    fsync it and rename it over ``path``."""
    tensors, meta = state
    blob = {"format": FORMAT, "version": VERSION,
            "meta": json.dumps({"output_key": spec.output_key(), "spec": spec.to_dict(), "next_step": next_step,
                                "state": meta}),
            "latent": latent.detach().clone(), "tensors": tensors}
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".ckpt-", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(blob, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path: str, spec) -> dict:
    """``{"latent", "next_step", "tensors", "state"}`` of a checkpoint written for ``spec``;
    :class:`CheckpointError` (one line) for a missing, foreign, tampered or other-spec file."""
    if not os.path.exists(path):
        raise CheckpointError(f"--resume: no checkpoint {path!r} for output {spec.out!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ck = torch.load(path, weights_only=True)  # refuses pickled objects: nothing is executed
        ok = isinstance(ck, dict) and ck.get("format") == FORMAT and ck.get("version") == VERSION
        meta = json.loads(ck["meta"]) if ok else None
    except Exception as e:  # truncated, foreign or tampered file
        reason = ("it holds objects other than tensors and plain data" if isinstance(e, pickle.UnpicklingError)
                  else f"{type(e).__name__}: {str(e).strip()[:120]}")
        raise CheckpointError(f"--resume: {path!r} is not a readable longvid checkpoint ({reason}); refused "
                              f"without running it") from None
    if meta is None:
        raise CheckpointError(f"--resume: {path!r} is not a longvid checkpoint (version {VERSION}); refused")
    if meta.get("output_key") != spec.output_key():
        old, new = meta.get("spec", {}), spec.to_dict()
        diff = [k for k in dict.fromkeys(output_fields(old) + output_fields(new)) if old.get(k) != new.get(k)]
        raise CheckpointError(f"--resume: checkpoint {path!r} was written for a different render "
                              f"(differs in: {', '.join(diff) or 'unknown fields'}); rerun without --resume "
                              f"or with the same settings")
    return {"latent": ck["latent"], "next_step": int(meta["next_step"]), "tensors": ck["tensors"],
            "state": meta["state"]}
