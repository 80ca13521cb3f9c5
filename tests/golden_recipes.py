"""Golden renders: every builtin recipe's frames (and final latent) at a small fixed geometry on
``tiny-wan``, recorded once as hashes (plus per-frame means, to say where a difference starts)
and compared bit for bit by ``tests/test_golden.py``.

A refactor of the engine must leave every output identical; an issue that changes a recipe's
output on purpose regenerates that recipe's entry (``python -m tests.golden_recipes NAME ...``) and
says so in its note. Renders run in-process (``LocalExecutor``) with one torch thread.
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


def main(argv: list[str]) -> int:
    import torch

    torch.set_num_threads(1)
    from longvid_dist.methods.recipes import builtin_names
    from longvid_dist.models.tiny import tiny_model_path
    from longvid_dist.models.wan import WanAdapter

    adapter = WanAdapter.load(str(tiny_model_path("tiny-wan")))
    names = argv or builtin_names()
    data = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    data["geometry"] = GEOMETRY
    for name in names:
        data.setdefault("recipes", {})[name] = render_golden(name, adapter)
        print(name, data["recipes"][name]["frames_sha256"][:12], flush=True)
    GOLDEN.write_text(json.dumps(data, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
