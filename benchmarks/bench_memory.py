"""Worker memory before and after freeing the text encoders (issue 13, item 5).

For each model, a fresh process loads a Worker's replica, encodes the prompt, then renders a
few denoising steps; it reports the worker's resident memory (RSS, psutil) while denoising
with the text encoder kept (before this change) and freed (now), and the ratio. Two models:
``tiny-wan`` and a random-weight Wan whose UMT5 text encoder has d_model 512 (8 layers, ~25M
parameters), closer to the real balance where the text encoder (UMT5-XXL, 5.7B) outweighs much
of the rest. Figures, not assertions: ``python benchmarks/bench_memory.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

BIG_TEXT = dict(d_model=512, d_kv=64, d_ff=2048, num_layers=8, num_heads=8, relative_attention_num_buckets=32,
                pad_token_id=0, eos_token_id=1)


def build_big(path: str) -> None:
    """A tiny-wan pipeline with a d_model-512 text encoder (the transformer's text_dim follows)."""
    import torch
    from diffusers import WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from longvid_dist.models.tiny import TINY_WAN_CONFIGS, build_tiny_wan

    pipe = build_tiny_wan()
    torch.manual_seed(0)
    pipe.text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(pipe.tokenizer), **BIG_TEXT)).eval()
    pipe.transformer = WanTransformer3DModel(**{**TINY_WAN_CONFIGS["transformer"], "text_dim": 512}).eval()
    pipe.save_pretrained(path)


def measure(source: str, keep: bool) -> dict:
    """Run in a fresh process: RSS after load, after encoding, and while denoising."""
    import psutil
    import torch

    torch.set_num_threads(1)
    from longvid_dist.api import render
    from longvid_dist.config import RenderSpec
    from longvid_dist.runtime.executor import LocalExecutor
    from longvid_dist.runtime.worker import Worker
    from longvid_dist.models.base import free_memory

    proc = psutil.Process()
    rss = lambda: proc.memory_info().rss / 2**20  # noqa: E731
    w = Worker("wan", source, keep_text_encoders=keep)
    adapter = w.load()
    free_memory()
    out = {"load_mib": rss()}

    class Ex(LocalExecutor):
        def __init__(self):
            super().__init__(adapter)
            self.worker = w
            self.denoise_mib = 0.0

        def predict(self, latent, windows):
            self.denoise_mib = max(self.denoise_mib, rss())
            return super().predict(latent, windows)

    ex = Ex()
    with tempfile.TemporaryDirectory() as d:
        spec = RenderSpec(prompt="a red car drives in the city", frames=81, height=32, width=48, steps=2,
                          recipe="glc", out=os.path.join(d, "v.mkv"), checkpoint_every=0)
        render(spec, executor=ex, progress=False)
    out["denoise_mib"] = ex.denoise_mib
    out["text_encoder_params_m"] = sum(p.numel() for p in
                                       __import__("transformers").UMT5EncoderModel.from_pretrained(
                                           source, subfolder="text_encoder").parameters()) / 1e6
    return out


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(measure(sys.argv[2], sys.argv[3] == "keep")))
        return 0
    from longvid_dist.models.tiny import tiny_model_path

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as d:
        big = os.path.join(d, "wan-text512")
        build_big(big)
        print(f"{'model':14s} {'text enc':>9s} {'load':>9s} {'denoise, kept':>14s} {'denoise, freed':>15s} {'ratio':>6s}")
        for name, src in (("tiny-wan", str(tiny_model_path("tiny-wan"))), ("wan-text512", big)):
            r = {}
            for mode in ("keep", "free"):
                res = subprocess.run([sys.executable, __file__, "--child", src, mode], env=env, capture_output=True,
                                     text=True, check=True)
                r[mode] = json.loads(res.stdout.strip().splitlines()[-1])
            k, f = r["keep"]["denoise_mib"], r["free"]["denoise_mib"]
            print(f"{name:14s} {r['keep']['text_encoder_params_m']:8.2f}M {r['keep']['load_mib']:8.0f}M "
                  f"{k:13.0f}M {f:14.0f}M {f / k:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
