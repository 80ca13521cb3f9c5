"""Atomic checkpoints of the coordinator's state, so a killed render resumes exactly.

A checkpoint holds the latent after step ``i``, the scheduler object (multistep solvers keep a
history of model outputs in it), the next step index, and the key of the spec fields that
determine the output. There is no generator state to save: every random draw after the initial
noise comes from a generator keyed by (seed, purpose, step) (DESIGN decision 3).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

import torch

# Spec fields that change the latent; the others (output path, workers, decode chunk...) may
# differ between the killed run and the resumed one.
OUTPUT_FIELDS = ("prompt", "negative_prompt", "model", "frames", "height", "width", "steps", "guidance",
                 "recipe", "window", "stride", "seed", "dtype")


def checkpoint_path(out: str) -> str:
    """``<out>.ckpt`` beside the output (``dir.ckpt`` for a PNG directory ``dir/``)."""
    return out.rstrip("/") + ".ckpt"


def spec_key(spec) -> str:
    """Hash of the output-determining fields of a spec."""
    d = spec.to_dict()
    # numbers by value: guidance 5 (JSON) and 5.0 (CLI) are the same render
    norm = {k: float(d[k]) if isinstance(d[k], (int, float)) and not isinstance(d[k], bool) else d[k]
            for k in OUTPUT_FIELDS}
    blob = json.dumps(norm, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save(path: str, spec, next_step: int, latent: torch.Tensor, scheduler) -> None:
    """Write the checkpoint to a temporary file and rename it over ``path``."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".ckpt-", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"version": 1, "spec_key": spec_key(spec), "spec": spec.to_dict(),
                        "next_step": next_step, "latent": latent.clone(), "scheduler": scheduler}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class CheckpointError(ValueError):
    """No usable checkpoint for this spec."""


def load(path: str, spec) -> dict:
    """Read a checkpoint written for ``spec``; refuse one from a different spec."""
    if not os.path.exists(path):
        raise CheckpointError(f"--resume: no checkpoint {path!r} for output {spec.out!r}")
    try:
        ck = torch.load(path, weights_only=False)
    except Exception as e:  # truncated or foreign file
        raise CheckpointError(f"--resume: checkpoint {path!r} is unreadable ({e})") from None
    if ck.get("spec_key") != spec_key(spec):
        old = ck.get("spec", {})
        diff = [k for k in OUTPUT_FIELDS if old.get(k) != spec.to_dict()[k]]
        raise CheckpointError(f"--resume: checkpoint {path!r} was written for a different render "
                              f"(differs in: {', '.join(diff) or 'unknown fields'}); rerun without --resume "
                              f"or with the same settings")
    return ck
