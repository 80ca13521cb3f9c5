"""Attention-level patches: what a self-attention layer computes inside one window forward.

Each patch implements the model-owned :class:`~longvid_dist.models.hooks.AttentionPatch`
protocol: the adapter computes the layer's query, key and value (after its norms and RoPE) and
calls ``patch.attend(q, k, v, ctx)`` with ``[B, S, H, D]`` tensors, ``S = frames *
tokens_per_frame`` in frame-major order; ``ctx`` says which layer, guidance branch and window
role this call is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.hooks import AttentionPatch, AttnContext, sdpa
from . import registry
from .lse_attention import banded_attention
from .noise import lowpass_filter
from .registry import CUTOFF, INT_OR_NULL, LAYERS, NUM, Param, num_range, register


@dataclass
class ABAM(AttentionPatch):
    """GLC-Diffusion's anchor-based attention (Ma et al., "GLC-Diffusion: Global-Local
    Collaborative Diffusion for Long Video Generation", §3.2, Eq. 10).

    The first window of a path is its anchor; in every other window of that path,
    self-attention uses ``K = lam * K_orig + (1 - lam) * K_anchor`` and ``V`` likewise,
    frame-aligned (token t of the window mixes with token t of the anchor). The paper's
    appendix default is lam = 0.1. lam = 1 is exactly plain attention. The model's own mask
    (``ctx.mask``) applies to the mixed keys as to the window's own.
    """

    lam: float = 0.1
    """Weight of the window's own keys/values (1 = plain attention)."""
    layers: tuple[int, ...] | None = None
    """Layers patched (None: all)."""
    name = "abam"

    def attend(self, q, k, v, ctx: AttnContext) -> torch.Tensor:
        if ctx.role == "anchor":
            ctx.store[(ctx.anchor_key, ctx.layer, ctx.branch)] = (k, v)
        elif ctx.role == "follow":
            ka, va = ctx.store[(ctx.anchor_key, ctx.layer, ctx.branch)]
            n = min(k.shape[1], ka.shape[1])  # a shorter window aligns with the anchor's first frames
            k, v = k.clone(), v.clone()
            k[:, :n] = self.lam * k[:, :n] + (1 - self.lam) * ka[:, :n]
            v[:, :n] = self.lam * v[:, :n] + (1 - self.lam) * va[:, :n]
        return sdpa(q, k, v, ctx.mask)


@dataclass
class SpectralBlend(AttentionPatch):
    """FreeLong's SpectralBlend attention (Lu et al., NeurIPS 2024, "FreeLong: Training-Free
    Long Video Generation with SpectralBlend Temporal Attention", §3.2), for full 3D attention.

    Global branch: attention over the whole window. Local branch: attention restricted to a
    temporal band ``|i - j| <= band`` frames. Output: low frequencies of the global branch and
    high frequencies of the local one, ``IFFT3D(FFT3D(g) * H + FFT3D(l) * (1 - H))`` over
    (frames, height, width), H a Gaussian low-pass with cut-offs ``d_s``, ``d_t``. The paper's
    band is its 16-frame UNets' clip; for other models the recipe's null band resolves to half
    the native latent clip (:func:`default_band`, METHODS.md §7). Per head channel, the
    frame-major tokens ``s = (f * h + y) * w + x`` are viewed as a field ``[F, h, w]``.
    ``lowpass`` may be forced to a constant (1 returns the global branch) for checks.
    """

    band: int = 10
    """Local branch: temporal band half-width in frames (recipes: half the native clip, 10 for
    Wan; FreeLong's own 8 is half its 16-frame UNets' clip)."""
    d_s: float = 0.25
    """Spatial cut-off of the low-pass, as a fraction of Nyquist."""
    d_t: float = 0.25
    """Temporal cut-off of the low-pass, as a fraction of Nyquist."""
    layers: tuple[int, ...] | None = None
    """Layers patched (None: all)."""
    lowpass: float | None = None
    """A constant filter instead of the Gaussian (checks only); None: the Gaussian."""
    name = "freelong"

    def attend(self, q, k, v, ctx: AttnContext) -> torch.Tensor:
        refuse_mask(self, ctx)
        f, h, w = ctx.grid
        g = sdpa(q, k, v)
        if f <= self.band + 1:  # the band covers the window: both branches are the same
            return g
        loc = banded_attention(q, k, v, ctx.tokens_per_frame, self.band)
        b, s, nh, d = g.shape
        gg = g.float().reshape(b, f, h, w, nh * d)  # [B, S, H, D] -> [B, F, h, w, H*D]
        ll = loc.float().reshape(b, f, h, w, nh * d)
        if self.lowpass is None:
            lp = lowpass_filter(f, h, w, "gaussian", self.d_s, self.d_t, dtype=torch.float32,
                                device=g.device).view(1, f, h, w, 1)
        else:
            lp = torch.full((1, f, h, w, 1), float(self.lowpass), device=g.device)
        spec = torch.fft.fftn(gg, dim=(1, 2, 3)) * lp + torch.fft.fftn(ll, dim=(1, 2, 3)) * (1 - lp)
        out = torch.fft.ifftn(spec, dim=(1, 2, 3)).real
        return out.reshape(b, s, nh, d).to(g.dtype)  # [B, F, h, w, H*D] -> [B, S, H, D]


class LayerDispatch(AttentionPatch):
    """Several patches on disjoint layer sets (e.g. ABAM on some layers, FreeLOC on others).
    Two patches claiming the same layer are refused: each would compute the attention."""

    name = "composite"

    def __init__(self, patches: list[AttentionPatch], num_layers: int):
        self.patches = patches
        self.by_layer: dict[int, AttentionPatch] = {}
        for p in patches:
            for layer in range(num_layers):
                if p.applies(layer):
                    if layer in self.by_layer:
                        raise ValueError(f"conflicting attention patches on layer {layer}: "
                                         f"{self.by_layer[layer].name} and {p.name}; give them disjoint 'layers'")
                    self.by_layer[layer] = p
        self.layers = tuple(sorted(self.by_layer))

    def wants_raw(self, layer: int) -> bool:
        return self.by_layer[layer].wants_raw(layer)

    def for_layer(self, layer: int) -> AttentionPatch:
        return self.by_layer[layer]

    def attend(self, q, k, v, ctx: AttnContext) -> torch.Tensor:
        return self.by_layer[ctx.layer].attend(q, k, v, ctx)


def refuse_mask(patch: AttentionPatch, ctx: AttnContext) -> None:
    """Raise when a patch that cannot honour the model's own mask (``mask_refusal``) gets one
    (recipes refuse the combination first; this guards direct use)."""
    if ctx.mask is not None:
        raise ValueError(f"attention {patch.name} cannot honour the model's attention mask "
                         f"({registry.get('attention', patch.name).mask_refusal})")


SPECTRAL_MIX = ("its fusion mixes every frame's output into every other's (FFT over frames, SVD over tokens), "
                "so earlier blocks would see later ones")
"""Why FreeLong and FreeSpec refuse a block-causal mask (``mask_refusal``)."""


def _abam_check(recipe, section) -> str | None:
    kind = recipe.plan.kind
    if kind == "direct" or registry.get("plan", kind).chunked:  # chunks have no anchor windows
        return f"attention abam needs several windows (plan sliding or glc), plan is {kind}"
    return None


register("attention", "abam", lambda params, model_info: ABAM(**params),
         {"lam": Param(NUM, 0.1, "a number in [0, 1]", num_range(0, 1)), "layers": LAYERS},
         requires=("attention_patches",), check=_abam_check, anchor_windows=True)
BAND = Param(INT_OR_NULL, None, "a positive integer (latent frames) or null for half the model's native clip",
             lambda v: v >= 1)
"""The local branch's temporal band of FreeLong and FreeSpec (null: :func:`default_band`)."""


def default_band(native_window: int) -> int:
    """The local band for a model whose native clip is ``native_window`` latent frames: half of
    it (10 for Wan's 21). FreeLong's band is the 16-frame training clip of its UNets, so the
    local branch sees one native clip (``|i - j| <= band``, ``2 band + 1`` frames); its 8 only
    carries that meaning for 16-frame models (METHODS.md §7)."""
    return max(native_window // 2, 1)


def resolve_band(params: dict, geometry) -> dict:
    """A ``band`` of null resolved to :func:`default_band` of the model's native clip."""
    return {**params, "band": params.get("band") or default_band(geometry.native_window)}


register("attention", "freelong", lambda params, model_info: SpectralBlend(**params),
         {"band": BAND, "d_s": CUTOFF, "d_t": CUTOFF, "layers": LAYERS},
         requires=("attention_patches",), resolve=resolve_band, mask_refusal=SPECTRAL_MIX)
