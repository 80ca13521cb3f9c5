"""Golden renders: every builtin recipe's frames (and final latent) at a small fixed geometry on
``tiny-wan``, recorded as hashes (plus per-frame means, to say where a difference starts) and
compared bit for bit by ``tests/test_golden.py``.

The last bits of a float render depend on the machine's numerics (the CPU's instruction set and
the kernels MKL picks for it), not only on the code: the record holds one set of digests per
kind of machine it was made on, and a machine is held to the set whose ``direct`` render (the
stock sampler, no method) it reproduces. A refactor of the engine must leave every output
identical. An issue that changes a recipe's output on purpose re-records it
(``python -m tests.golden_recipes NAME ...``) in this machine's set and says so in its note; the
other sets cannot be re-made here and are dropped. ``--new-set LABEL`` records every recipe as
the set of a kind of machine new to the record (run it on an unchanged engine: ``git stash``).
Renders run in-process (``LocalExecutor``) with one torch thread.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

GOLDEN = Path(__file__).resolve().parent / "golden_recipes.json"
GEOMETRY = dict(prompt="a red car drives through a city at night", negative_prompt="blurry",
                frames=121, height=32, width=48, steps=3, guidance=5.0, seed=7)
"""31 latent frames: longer than Wan's 21-frame native clip, so every plan splits the video."""


def render_golden(name: str, adapter) -> dict:
    """Digest of recipe ``name``'s render: sha256 of the uint8 frames ``[N, H, W, 3]`` and of the
    final fp32 latent, and each frame's mean level."""
    from longvid_dist import RenderSpec
    from longvid_dist.api import render
    from longvid_dist.io.video import read_frames
    from longvid_dist.runtime.executor import LocalExecutor

    class Capture(LocalExecutor):
        def decode(self, latent, chunk):
            self.latent_hash = hashlib.sha256(latent.float().contiguous().numpy().tobytes()).hexdigest()
            return super().decode(latent, chunk)

    with tempfile.TemporaryDirectory() as d:
        spec = RenderSpec(recipe=name, out=str(Path(d) / "out.mkv"), checkpoint_every=0, **GEOMETRY)
        ex = Capture(adapter)
        try:
            render(spec, executor=ex, progress=False)
        finally:
            adapter.install(None, None)
        frames = read_frames(spec.out)
    return {"shape": list(frames.shape), "frames_sha256": hashlib.sha256(frames.tobytes()).hexdigest(),
            "latent_sha256": ex.latent_hash,
            "frame_means": [round(float(m), 4) for m in frames.reshape(len(frames), -1).mean(1)]}


def matching_set(sets: list[dict], adapter) -> int | None:
    """Index of the set whose ``direct`` digest this machine reproduces, or None."""
    got = render_golden("direct", adapter)
    return next((i for i, st in enumerate(sets) if st["recipes"]["direct"] == got), None)


def main(argv: list[str]) -> int:
    import argparse

    import torch

    torch.set_num_threads(1)
    from longvid_dist.methods.recipes import builtin_names
    from longvid_dist.models.tiny import tiny_model_path
    from longvid_dist.models.wan import WanAdapter

    p = argparse.ArgumentParser(prog="python -m tests.golden_recipes")
    p.add_argument("names", nargs="*", help="recipes to re-record in this machine's set (default: all)")
    p.add_argument("--new-set", metavar="LABEL", help="record every recipe as a new set for this machine's numerics")
    a = p.parse_args(argv)
    adapter = WanAdapter.load(str(tiny_model_path("tiny-wan")))
    data = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {"sets": []}
    data["geometry"] = GEOMETRY
    if a.new_set:
        if matching_set(data["sets"], adapter) is not None:
            print("this machine already reproduces a recorded set; nothing added", file=sys.stderr)
            return 2
        data["sets"].append({"recorded_on": a.new_set, "recipes": {}})
        mine, names = data["sets"][-1], builtin_names()
    else:
        k = matching_set(data["sets"], adapter) if data["sets"] else None
        if k is None and data["sets"]:
            print("no recorded set reproduces 'direct' here: record this machine with --new-set LABEL", file=sys.stderr)
            return 2
        if k is None:
            data["sets"].append({"recorded_on": "first record", "recipes": {}})
            k = 0
        mine, names = data["sets"][k], a.names or builtin_names()
        dropped = [st["recorded_on"] for st in data["sets"] if st is not mine]
        if dropped:
            print(f"dropping the sets of other machines (they cannot be re-made here): {dropped}", file=sys.stderr)
        data["sets"] = [mine]
    for name in names:
        mine["recipes"][name] = render_golden(name, adapter)
        print(name, mine["recipes"][name]["frames_sha256"][:12], flush=True)
    GOLDEN.write_text(json.dumps(data, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
