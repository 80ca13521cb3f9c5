"""FreeLOC layer probing -> a per-layer VRPR+TSA / VRPR / none profile; the ``longvid probe``
CLI is :mod:`longvid_dist.probe`. After Tian et al., "Free-Lunch Long Video Generation via
Layer-Adaptive O.O.D Correction" (FreeLOC), Method, "Layer-wise Probing Mechanism".

For every self-attention layer, on a sample of query tokens of one forward pass (the layer's
output is left stock, so each layer is probed alone, in the context the model really gives it):

- position sensitivity: shift the temporal RoPE position of the keys by s in {+-20, +-40}
  frames and measure the mean absolute change of the attention logits, relative to their mean
  magnitude (the paper's attention-logits difference; ``logit_change``);
- context sensitivity: restrict each query to keys within ``window`` frames (sliding window)
  and measure the relative change of the attention entropy
  ``S_i = |H_probe - H_orig| / |H_orig|`` (``entropy_change``).

Assignment (:func:`assign`), the paper's rule: the *most* context-sensitive ``tsa_fraction``
of the layers (largest ``S_i``) get VRPR+TSA; of the others, the position-sensitive ones
(``logit_change >= position_threshold``) get VRPR, the rest nothing. The paper applies VRPR to
position-sensitive layers and VRPR+TSA to context-sensitive ones but publishes no cut-offs:
the default fraction is the published Wan2.1-1.3B split (17 of 30 layers) and the default
position threshold, 5% of the mean logit magnitude, is ours (in that published split every
layer gets at least VRPR). Metrics are averaged over a few timesteps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..models.hooks import AttentionPatch, AttnContext, sdpa

SHIFTS = (-40, -20, 20, 40)
PUBLISHED_TSA_FRACTION = 17 / 30


@dataclass
class LayerProbe(AttentionPatch):
    """Stock attention (under the model's own mask, if any) that also records the probing
    metrics of each layer (cond branch; the metrics are measured on unmasked logits)."""

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
        return sdpa(qr, kr, v, ctx.mask)

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


POSITION_THRESHOLD = 0.05
"""Default ``logit_change`` from which a layer counts as position-sensitive (ours; the paper
gives none)."""


def assign(metrics: dict[int, tuple[float, float]], tsa_fraction: float,
           position_threshold: float = POSITION_THRESHOLD) -> dict[int, str]:
    """FreeLOC's layer rule on ``layer -> (logit_change, entropy_change)``: the
    ``round(tsa_fraction * n)`` layers with the largest entropy change (context-sensitive; ties
    to the lower layer) get ``vrpr+tsa``; of the rest, those with ``logit_change >=
    position_threshold`` (position-sensitive) get ``vrpr``, the others ``none``."""
    order = sorted(metrics, key=lambda layer: (-metrics[layer][1], layer))
    n_tsa = round(tsa_fraction * len(order))
    return {layer: ("vrpr+tsa" if r < n_tsa else "vrpr" if metrics[layer][0] >= position_threshold else "none")
            for r, layer in enumerate(order)}


def probe(adapter, frames: int, height: int, width: int, generator: torch.Generator,
          timesteps=(900, 500, 100), seed: int = 0, queries: int = 256, window: int = 8,
          tsa_fraction: float = PUBLISHED_TSA_FRACTION, position_threshold: float = POSITION_THRESHOLD,
          prompt: str = "a video") -> dict:
    """Probe every layer of ``adapter``'s transformer on noise drawn from ``generator``
    (the CLI passes the render's keyed "probe" generator); returns the profile dict.
    ``seed`` seeds the query sample."""
    patch = LayerProbe(queries=queries, window=window, seed=seed)
    adapter.install(patch, None)
    try:
        cond = adapter.encode_prompt(prompt, "", 1.0)  # one branch is enough for probing
        z = adapter.space.init_noise(generator, frames, height, width)
        for t in timesteps:
            adapter.predict(z, torch.tensor(float(t)), cond)
    finally:
        adapter.install(None, None)
    metrics = {layer: tuple(sum(v) / len(v) for v in zip(*vals)) for layer, vals in patch.metrics.items()}
    layers = assign(metrics, tsa_fraction, position_threshold)
    return {
        "num_layers": len(metrics),
        "latent_frames": int(z.shape[1]),
        "rule": f"rank by relative attention-entropy change under a +-{window}-frame sliding window; "
                f"the most sensitive {tsa_fraction:.3f} of layers get vrpr+tsa; of the rest, layers whose "
                f"attention logits change by >= {position_threshold:g} of their mean magnitude under "
                f"+-20/+-40-frame key shifts get vrpr, the others none",
        "layers": {str(k): layers[k] for k in sorted(layers)},
        "metrics": {str(k): {"logit_change": m[0], "entropy_change": m[1]} for k, m in sorted(metrics.items())},
    }
