"""FreeSpec: spectrum-level fusion of a global and a local branch (paper 000).

FreeSpec (Chen et al., "FreeSpec: Training-Free Long Video Generation via Singular-Spectrum
Reconstruction", ``papers/000``) observes that enlarged self-attention windows concentrate the
spectral energy of the features into a few low-rank singular directions. It keeps those
directions from the *global* branch (long-range consistency) and takes everything else from
the *local* branch (detail and motion). The paper's equations are not public; the formulation
here is this project's, fixed in ``METHODS.md`` §3 ("FreeSpec" and "FreeSpec at the
coordinator"):

    feature level   G, L: [tokens, channels];  V_k = top-k right singular vectors of G
                    out = G V_k V_k^T + L (I - V_k V_k^T) = L + (G - L) V_k V_k^T
    coordinator     Yg, Yl: [F, C*h*w];         U_k = top-k left singular vectors of Yg
                    Y = U_k U_k^T Yg + (I - U_k U_k^T) Yl = Yl + U_k U_k^T (Yg - Yl)

k is the smallest rank holding a fraction ``tau`` of the guiding matrix's spectral energy
(:func:`energy_rank`). Subspaces come from the small Gram matrix (``eigh`` in float64) or a
randomized range finder; a full SVD of the token matrix is never taken outside of tests and
benchmarks (``method="exact"``).

Everything here is a pure tensor function of its inputs (no model state, any device), so the
coordinator can run :func:`freespec_fuse_paths` on its CPU latent in place of GLC's scalar
path fusion (:func:`longvid_dist.methods.merge.fuse_paths`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.hooks import AttentionPatch, AttnContext, sdpa
from .attention import BAND, SPECTRAL_MIX, banded_attention, refuse_mask, resolve_band
from .registry import INT_OR_NULL, LAYERS, NUM, Param, num_range, register

METHODS = ("gram", "randomized", "exact")
"""Ways to get a singular subspace: Gram-matrix eigh, randomized range finder, full SVD."""

OVERSAMPLE = 10
"""Randomized range finder oversampling p (Halko, Martinsson & Tropp 2011, §4)."""
POWER_ITERS = 2
"""Randomized range finder power (subspace) iterations q (Halko et al. §4.5)."""
GRAM_CHUNK = 4096
"""Rows of the tall matrix converted to float64 at a time while accumulating its Gram matrix."""


def energy_rank(singular_values: torch.Tensor, tau: float) -> int:
    """Smallest k with ``sum_{i<k} s_i^2 >= tau * sum_i s_i^2`` (FreeSpec's energy threshold,
    paper 000; METHODS.md §3).

    ``singular_values`` need not be sorted (they are sorted descending here). ``tau`` is in
    [0, 1]: ``tau = 0`` gives 0, ``tau = 1`` gives the full rank, i.e. the number of nonzero
    singular values. A matrix with no energy gives 0.
    """
    tau = float(tau)
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must be in [0, 1], got {tau}")
    s = singular_values.detach().reshape(-1).abs().to(torch.float64).sort(descending=True).values
    nonzero = int((s > 0).sum())
    if tau == 0.0 or nonzero == 0:
        return 0
    if tau == 1.0:
        return nonzero
    cum = torch.cumsum(s * s, 0)
    k = int(torch.searchsorted(cum, tau * cum[-1]).item()) + 1  # first index with cum >= target
    return min(k, nonzero)


def _resolve_rank(s: torch.Tensor, tau: float | None, k: int | None, limit: int) -> int:
    if k is not None:
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        return min(int(k), limit)
    if tau is None:
        raise ValueError("give tau or k")
    return energy_rank(s, tau)


def _compute_dtype(*ts: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (bf16 / fp16 features are fused in fp32)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


def _gram(m: torch.Tensor) -> torch.Tensor:
    """``M^T M`` in float64 for a tall ``[n, c]`` matrix, accumulated over row chunks so the
    float64 copy never exceeds ``GRAM_CHUNK x c``."""
    n, c = m.shape
    if n <= GRAM_CHUNK:
        m64 = m.to(torch.float64)
        return m64.mT @ m64
    gram = torch.zeros(c, c, dtype=torch.float64, device=m.device)
    for i in range(0, n, GRAM_CHUNK):
        blk = m[i:i + GRAM_CHUNK].to(torch.float64)
        gram.addmm_(blk.mT, blk)
    return gram


def _subspace_gram(m: torch.Tensor, tau, k) -> tuple[torch.Tensor, torch.Tensor]:
    evals, evecs = torch.linalg.eigh(_gram(m))  # ascending
    evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)  # descending; round-off negatives -> 0
    s = evals.sqrt()
    r = _resolve_rank(s, tau, k, m.shape[1])
    return evecs[:, :r], s


def _subspace_exact(m: torch.Tensor, tau, k) -> tuple[torch.Tensor, torch.Tensor]:
    _, s, vh = torch.linalg.svd(m, full_matrices=False)
    r = _resolve_rank(s, tau, k, vh.shape[0])
    return vh[:r].mT, s


def _range_finder(m: torch.Tensor, rank: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Halko et al. Alg. 4.4 (randomized subspace iteration) with ``rank`` columns; returns the
    right singular vectors ``[c, rank]`` and singular values of ``B = Q^T M``."""
    n, c = m.shape
    omega = torch.randn(c, rank, generator=gen, dtype=m.dtype, device=m.device)
    q = torch.linalg.qr(m @ omega).Q  # [n, rank]
    for _ in range(POWER_ITERS):  # re-orthonormalised at every half step for stability
        z = torch.linalg.qr(m.mT @ q).Q  # [c, rank]
        q = torch.linalg.qr(m @ z).Q
    b = (q.mT @ m).to(torch.float64)  # [rank, c], small
    _, s, vh = torch.linalg.svd(b, full_matrices=False)
    return vh.mT.to(m.dtype), s


def _subspace_randomized(m: torch.Tensor, tau, k, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    n, c = m.shape
    full = min(n, c)
    gen = torch.Generator(device=m.device).manual_seed(int(seed))
    if k is not None:
        r = min(int(k), full)
        if r == 0:
            return m.new_zeros(c, 0), m.new_zeros(0, dtype=torch.float64)
        v, s = _range_finder(m, min(r + OVERSAMPLE, full), gen)
        return v[:, :r], s
    if tau is None:
        raise ValueError("give tau or k")
    # tau with unknown k: the true total energy ||M||_F^2 is cheap, so grow the sketch until
    # its leading singular values hold tau of it with OVERSAMPLE spare columns (sketched
    # singular values never exceed the true ones, so k is never underestimated).
    total = float(torch.linalg.vector_norm(m, dtype=torch.float64) ** 2)
    if tau == 0.0 or total == 0.0:
        return m.new_zeros(c, 0), m.new_zeros(0, dtype=torch.float64)
    width = min(full, 32 + OVERSAMPLE)
    while True:
        v, s = _range_finder(m, width, gen)
        cum = torch.cumsum(s * s, 0)
        if width == full:  # the sketch spans M's whole row space: its spectrum is M's
            return v[:, :energy_rank(s, tau)], s
        hit = torch.nonzero(cum >= tau * total)
        if len(hit) and int(hit[0]) + 1 + OVERSAMPLE <= width:
            return v[:, :int(hit[0]) + 1], s
        width = min(full, 2 * width)


def _subspace(m: torch.Tensor, tau=None, k=None, method: str = "gram", seed: int = 0):
    if m.ndim != 2:
        raise ValueError(f"expected a matrix, got shape {tuple(m.shape)}")
    if k is None and tau is None:
        raise ValueError("give tau or k")
    if k is None and not 0.0 <= float(tau) <= 1.0:
        raise ValueError(f"tau must be in [0, 1], got {tau}")
    m = m.to(_compute_dtype(m))
    if method == "gram":
        v, s = _subspace_gram(m, tau, k)
    elif method == "randomized":
        v, s = _subspace_randomized(m, tau, k, seed)
    elif method == "exact":
        v, s = _subspace_exact(m, tau, k)
    else:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    return v.to(m.dtype), s


def top_right_subspace(m: torch.Tensor, tau: float | None = None, k: int | None = None,
                       method: str = "gram", seed: int = 0) -> torch.Tensor:
    """Orthonormal basis ``V_k [c, k]`` of the top-k right singular subspace of ``M [n, c]``
    (FreeSpec's low-rank guidance subspace, paper 000; METHODS.md §3).

    ``k`` wins over ``tau``; with ``tau`` only, k = :func:`energy_rank` of M's spectrum.
    Methods (none takes a full SVD of M except ``exact``, kept for tests and benchmarks):

    - ``gram``: ``eigh(M^T M)`` in float64 (c x c; M converted chunk by chunk) -- exact up to
      round-off, cost ``n c^2``; the choice when c is small (Wan2.1-1.3B: c = 1536).
    - ``randomized``: Halko et al.'s range finder on M, oversampling p = 10, 2 power
      iterations, Gaussian test matrix from a generator seeded with ``seed`` (deterministic).
      With ``tau`` the sketch width doubles until its energy reaches ``tau * ||M||_F^2``.
    - ``exact``: ``torch.linalg.svd(M, full_matrices=False)``.

    Returned in float32 (float64 if M is float64).
    """
    return _subspace(m, tau, k, method, seed)[0]


def top_left_subspace(m: torch.Tensor, tau: float | None = None, k: int | None = None,
                      method: str = "gram", seed: int = 0) -> torch.Tensor:
    """Orthonormal basis ``U_k [n, k]`` of the top-k left singular subspace of ``M [n, m]``
    (FreeSpec at the coordinator, paper 000; METHODS.md §3): the right subspace of ``M^T``,
    so ``gram`` eigendecomposes the n x n Gram ``M M^T`` -- cheap when n is small (the
    coordinator case: n = F latent frames). See :func:`top_right_subspace` for ``tau``, ``k``,
    ``method`` and ``seed``."""
    return _subspace(m.mT, tau, k, method, seed)[0]


def subspace_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Projector distance ``||P_a - P_b||_2`` of the column spans of orthonormal ``a``, ``b``
    (``[c, k]``): the sine of the largest principal angle; 1 if the dimensions differ."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    if a.shape[1] != b.shape[1]:
        return 1.0
    if a.shape[1] == 0:
        return 0.0
    a, b = torch.linalg.qr(a).Q, torch.linalg.qr(b).Q  # re-orthonormalise fp32 round-off in fp64
    # ||(I - P_b) a||_2 = sin of the largest principal angle (accurate for small angles,
    # unlike sqrt(1 - cos^2))
    return float(torch.linalg.matrix_norm(a - b @ (b.mT @ a), ord=2))


def freespec_fuse(g: torch.Tensor, l: torch.Tensor, tau: float = 0.9, k: int | None = None,
                  method: str = "gram", seed: int = 0) -> torch.Tensor:
    """Feature-level FreeSpec fusion (paper 000; formulation of METHODS.md §3 "FreeSpec").

    ``G``, ``L``: global- and local-branch features ``[tokens, channels]``. ``V_k`` = top-k
    right singular vectors of G (:func:`top_right_subspace` with ``tau``/``k``/``method``),
    and

        out = G V_k V_k^T + L (I - V_k V_k^T),   computed as   L + ((G - L) V_k) V_k^T

    (same value, two thin matmuls, no c x c projector): G's low-rank spectral guidance,
    L's high-rank detail. ``k = 0`` (or ``tau = 0``) returns L exactly; ``tau = 1`` keeps every
    direction of nonzero energy, so for G of full column rank it returns G up to round-off.
    Computed in float32 (float64 if an input is), returned in the promoted input dtype.
    """
    if g.shape != l.shape or g.ndim != 2:
        raise ValueError(f"G and L must be matrices of one shape, got {tuple(g.shape)} and {tuple(l.shape)}")
    out_dtype = torch.promote_types(g.dtype, l.dtype)
    v = top_right_subspace(g, tau, k, method, seed)  # [c, k]
    if v.shape[1] == 0:
        return l.to(out_dtype, copy=True)
    cd = _compute_dtype(g, l)
    lc = l.to(cd)
    out = lc + ((g.to(cd) - lc) @ v.to(cd)) @ v.to(cd).mT  # [n, c] + ([n, c] @ [c, k]) @ [k, c]
    return out.to(out_dtype)


def freespec_fuse_paths(yg: torch.Tensor, yl: torch.Tensor, tau: float = 0.9, k: int | None = None,
                        method: str = "gram") -> torch.Tensor:
    """Coordinator-level FreeSpec path fusion (paper 000; METHODS.md §3 "FreeSpec at the
    coordinator"): the spectral drop-in for GLC's scalar ``fuse_paths(global, local, gamma)``.

    ``Yg``, ``Yl``: global- and local-path latent predictions ``[C, F, h, w]``, viewed as
    ``[F, C*h*w]`` (one row per latent frame). ``U_k`` = top-k left singular vectors of Yg from
    the F x F Gram matrix ``Yg Yg^T`` (eigh in float64), and

        Y = U_k U_k^T Yg + (I - U_k U_k^T) Yl  =  Yl + U_k (U_k^T (Yg - Yl))

    ``k = 0`` returns Yl; ``tau = 1`` (Yg of full row rank F) returns Yg up to round-off.
    Pure tensor function on the coordinator's latent (CPU or not); returns ``[C, F, h, w]``
    float32 (float64 if an input is float64).
    """
    if yg.shape != yl.shape or yg.ndim != 4:
        raise ValueError(f"Yg and Yl must be [C, F, h, w] of one shape, got {tuple(yg.shape)} and {tuple(yl.shape)}")
    c, f, h, w = yg.shape
    cd = _compute_dtype(yg, yl)
    mg = yg.to(cd).permute(1, 0, 2, 3).reshape(f, c * h * w)  # [C, F, h, w] -> [F, C*h*w]
    ml = yl.to(cd).permute(1, 0, 2, 3).reshape(f, c * h * w)
    u = top_left_subspace(mg, tau, k, method)  # [F, k]
    if u.shape[1] == 0:
        out = ml
    else:
        u = u.to(cd)
        out = ml + u @ (u.mT @ (mg - ml))  # [F, k] @ ([k, F] @ [F, C*h*w])
    return out.reshape(f, c, h, w).permute(1, 0, 2, 3).contiguous()  # [F, C*h*w] -> [C, F, h, w]


@dataclass
class FreeSpecAttention(AttentionPatch):
    """FreeSpec's spectral fusion of global and local attention (paper 000; METHODS.md §3).

    Global branch: ``sdpa(q, k, v)`` over the whole (enlarged) window. Local branch:
    :func:`banded_attention` with a temporal band ``|i - j| <= band`` frames. Per batch
    element each branch is viewed as ``[S, H*D]`` and fused with :func:`freespec_fuse`
    (subspace from the global branch):
    ``out = G V_k V_k^T + L (I - V_k V_k^T)``.

    Where the paper is silent: FreeSpec ("FreeSpec: Training-Free Long Video Generation via
    Singular-Spectrum Reconstruction", abstract and method overview; its equations are not
    public) says it decomposes "global and local features" by SVD; we take the SVD of the
    *global* branch only and project the local branch onto the complement of its subspace
    (METHODS.md §7, a named assumption). ``band`` null in a recipe resolves to half the
    model's native clip (:func:`~.attention.default_band`). When the band covers the window
    (``frames <= band + 1``) both branches are the same and the global one is returned.
    ``k`` overrides ``tau`` with a fixed rank (``k = 0`` returns the local branch).
    """

    tau: float = 0.9
    """Spectral energy fraction the global branch's subspace holds (picks k)."""
    band: int = 10
    """Local branch: temporal band half-width in frames (recipes: half the native clip, 10 for Wan)."""
    layers: tuple[int, ...] | None = None
    """Layers patched (None: all)."""
    method: str = "gram"
    """How the subspace is found: ``gram``, ``randomized`` or ``exact`` (:data:`METHODS`)."""
    k: int | None = None
    """A fixed rank instead of ``tau`` (None: from ``tau``)."""
    seed: int = 0
    """Seed of the randomized range finder."""
    name = "freespec"
    all_heads = True  # the SVD is over [tokens, heads * dim]: every head of a token

    def attend(self, q, k, v, ctx: AttnContext) -> torch.Tensor:
        refuse_mask(self, ctx)
        frames = ctx.grid[0]
        g = sdpa(q, k, v)
        if frames <= self.band + 1:  # the band covers the window: both branches are the same
            return g
        loc = banded_attention(q, k, v, ctx.tokens_per_frame, self.band)
        b, s, nh, d = g.shape
        out = torch.empty_like(g)
        for i in range(b):  # [S, H, D] -> [S, H*D], fused, -> [S, H, D]
            fused = freespec_fuse(g[i].reshape(s, nh * d), loc[i].reshape(s, nh * d),
                                  self.tau, self.k, self.method, self.seed)
            out[i] = fused.reshape(s, nh, d).to(g.dtype)
        return out


register("attention", "freespec", lambda params, model_info: FreeSpecAttention(**params),
         {"tau": Param(NUM, 0.9, "a number in [0, 1]", num_range(0, 1)),
          "k": Param(INT_OR_NULL, None, "null (from tau) or a rank >= 0", lambda v: v >= 0),
          "band": BAND,
          "method": Param((str,), "gram", "gram or randomized", lambda v: v in ("gram", "randomized")),
          "layers": LAYERS},
         requires=("attention_patches",), resolve=resolve_band, mask_refusal=SPECTRAL_MIX)
