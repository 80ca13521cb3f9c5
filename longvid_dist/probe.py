"""``longvid probe``: FreeLOC layer probing (paper 001/003) -> a per-layer VRPR / VRPR+TSA profile.

For every self-attention layer, on a sample of query tokens of one forward pass (the layer's
output is left stock, so each layer is probed alone, in the context the model really gives it):

- position sensitivity: shift the temporal RoPE position of the keys by s in {+-20, +-40}
  frames and measure the mean absolute change of the attention logits, relative to their mean
  magnitude;
- context sensitivity: restrict each query to keys within ``window`` frames (sliding window)
  and measure the relative change of the attention entropy ``|H_probe - H_orig| / |H_orig|``.

Layers are ranked by context sensitivity: the least sensitive ``tsa_fraction`` of them get
VRPR+TSA (they tolerate sparse, tiered context), the others VRPR only. The default fraction is
the published Wan2.1-1.3B split (17 of 30 layers). Metrics are averaged over a few timesteps.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field

import torch

from .models.hooks import AttentionPatch, AttnContext, sdpa

SHIFTS = (-40, -20, 20, 40)
PUBLISHED_TSA_FRACTION = 17 / 30


@dataclass
class LayerProbe(AttentionPatch):
    """Stock attention that also records the probing metrics of each layer (cond branch)."""

    queries: int = 256
    """Query tokens sampled per layer (seeded)."""
    window: int = 8
    """Sliding-window half width in frames for the context restriction."""
    seed: int = 0
    """Seed of the query sample."""
    metrics: dict = field(default_factory=dict)
    """layer -> lists of (logit change, entropy change), one entry per forward."""
    raw_qk = True
    name = "probe"

    def attend(self, q, k, v, ctx: AttnContext) -> torch.Tensor:
        f = ctx.grid[0]
        base = max(SHIFTS)  # keep every shifted position >= 0; RoPE logits are relative
        pos = torch.arange(f) + base
        qr, kr = ctx.rotate(q, pos), ctx.rotate(k, pos)
        if ctx.branch == "cond":
            self._measure(q, k, qr, kr, ctx)
        return sdpa(qr, kr, v)

    @torch.no_grad()
    def _measure(self, q, k, qr, kr, ctx: AttnContext) -> None:
        f = ctx.grid[0]
        tpf = ctx.tokens_per_frame
        s = q.shape[1]
        g = torch.Generator().manual_seed(self.seed)
        idx = torch.randperm(s, generator=g)[: min(self.queries, s)].sort().values
        scale = 1 / math.sqrt(q.shape[-1])
        qs = qr[:, idx].float().transpose(1, 2)  # [B, S, H, D] -> [B, H, n, D]
        logits = qs @ kr.float().transpose(1, 2).transpose(-1, -2) * scale  # [B, H, n, S]
        ref = logits.abs().mean()
        base = max(SHIFTS)
        diffs = []
        for sh in SHIFTS:
            ks = ctx.rotate(k, torch.arange(f) + base + sh).float().transpose(1, 2)
            diffs.append(((qs @ ks.transpose(-1, -2) * scale) - logits).abs().mean() / ref)
        p = logits.softmax(-1)
        h_orig = -(p * p.clamp_min(1e-30).log()).sum(-1)  # [B, H, n]
        qf = (idx // tpf).view(-1, 1)
        kf = (torch.arange(s) // tpf).view(1, -1)
        masked = logits.masked_fill(((qf - kf).abs() > self.window).view(1, 1, *qf.shape[:1], -1), float("-inf"))
        pm = masked.softmax(-1)
        h_win = -(pm * pm.clamp_min(1e-30).log()).sum(-1)
        ent = ((h_win - h_orig).abs() / h_orig.abs().clamp_min(1e-12)).mean()
        self.metrics.setdefault(ctx.layer, []).append((float(torch.stack(diffs).mean()), float(ent)))


def assign(metrics: dict[int, tuple[float, float]], tsa_fraction: float) -> dict[int, str]:
    """Rank layers by context sensitivity; the least sensitive fraction gets VRPR+TSA."""
    order = sorted(metrics, key=lambda layer: (metrics[layer][1], layer))
    n_tsa = round(tsa_fraction * len(order))
    return {layer: ("vrpr+tsa" if r < n_tsa else "vrpr") for r, layer in enumerate(order)}


def probe(adapter, frames: int, height: int, width: int, timesteps=(900, 500, 100), seed: int = 0,
          queries: int = 256, window: int = 8, tsa_fraction: float = PUBLISHED_TSA_FRACTION,
          prompt: str = "a video") -> dict:
    """Probe every layer of ``adapter``'s transformer; returns the profile dict."""
    from .sampling.rng import keyed_generator

    patch = LayerProbe(queries=queries, window=window, seed=seed)
    adapter.install(patch, None)
    try:
        cond = adapter.encode_prompt(prompt, "", 1.0)  # one branch is enough for probing
        z = adapter.init_noise(keyed_generator(seed, "probe"), frames, height, width)
        for t in timesteps:
            adapter.predict(z, torch.tensor(float(t)), cond)
    finally:
        adapter.install(None, None)
    metrics = {layer: tuple(sum(v) / len(v) for v in zip(*vals)) for layer, vals in patch.metrics.items()}
    layers = assign(metrics, tsa_fraction)
    return {
        "num_layers": len(metrics),
        "latent_frames": int(z.shape[1]),
        "rule": f"rank by relative attention-entropy change under a +-{window}-frame sliding window; "
                f"the least sensitive {tsa_fraction:.3f} of layers get vrpr+tsa",
        "layers": {str(k): layers[k] for k in sorted(layers)},
        "metrics": {str(k): {"logit_change": m[0], "entropy_change": m[1]} for k, m in sorted(metrics.items())},
    }


def main_probe(argv: list[str] | None = None) -> int:
    from .cli import _Parser
    from .config import RenderSpec, SpecError, flag_name
    from .io.video import write_json_atomic

    p = _Parser(prog="longvid probe", description="Measure each self-attention layer's sensitivity to "
                "temporal position shifts and context restriction, and write a FreeLOC profile.")
    p.add_argument("--model", default="tiny-wan", help="model name or folder (default: %(default)s)")
    p.add_argument("--frames", type=int, default=161, help="pixel frames of the probe video, 4k+1 (default: 161)")
    p.add_argument("--height", type=int, default=None, help="frame height (default: the model's)")
    p.add_argument("--width", type=int, default=None, help="frame width (default: the model's)")
    p.add_argument("--out", required=True, help="profile JSON to write")
    p.add_argument("--queries", type=int, default=256, help="query tokens sampled per layer (default: 256)")
    p.add_argument("--window", type=int, default=8, help="sliding-window half width in frames (default: 8)")
    p.add_argument("--tsa-fraction", type=float, default=PUBLISHED_TSA_FRACTION,
                   help="fraction of layers given VRPR+TSA (default: 17/30, the published Wan2.1-1.3B split)")
    p.add_argument("--seed", type=int, default=0, help="seed of the probe noise and query sample")
    a = p.parse_args(argv)
    try:
        spec = RenderSpec(prompt="probe", model=a.model, frames=a.frames, height=a.height, width=a.width,
                          out=a.out + ".unused.mp4", recipe="direct")
    except SpecError as e:
        flag = flag_name(e.field)
        print(f"longvid probe: error: {flag}: {e.message}", file=sys.stderr)
        return 2
    if not a.out.endswith(".json"):
        print("longvid probe: error: --out: must be a .json file", file=sys.stderr)
        return 2
    for name, v, ok in (("--queries", a.queries, a.queries >= 1), ("--window", a.window, a.window >= 1),
                        ("--tsa-fraction", a.tsa_fraction, 0 <= a.tsa_fraction <= 1)):
        if not ok:
            print(f"longvid probe: error: {name}: out of range, got {v}", file=sys.stderr)
            return 2
    from .api import load_adapter

    adapter = load_adapter(spec)
    profile = probe(adapter, a.frames, spec.height, spec.width, seed=a.seed, queries=a.queries,
                    window=a.window, tsa_fraction=a.tsa_fraction)
    profile["model"] = a.model
    write_json_atomic(a.out, profile)
    tsa = [k for k, v in profile["layers"].items() if v == "vrpr+tsa"]
    print(f"wrote {a.out}: {profile['num_layers']} layers, vrpr+tsa on {', '.join(tsa) or 'none'}")
    return 0
