"""Merging window predictions into one prediction for the whole latent.

Gen-L-Video (Wang et al. 2023) and GLC-Diffusion (Ma et al., paper 004, Eq. 3) pose the
step as a weighted least-squares problem over overlapping windows; its closed form is the
weighted average below. GLC's path fusion (Eq. 9) then mixes the global and local merges.
We merge *predictions* and step the scheduler once (DESIGN decision 1).
"""

from __future__ import annotations

import math

import torch

from .windows import Window


def wls_merge(preds: list[torch.Tensor], windows: list[Window], num_frames: int,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """Closed-form WLS merge (GLC Eq. 3): ``merged[f] = sum_i W_i[f] pred_i[f] / sum_i W_i[f]``.

    ``preds[i]`` is ``[C, len(windows[i]), h, w]``; returns ``[C, num_frames, h, w]`` in fp32.
    Windows are summed in list order, so the result does not depend on who computed them.
    A single window covering every frame once with weight 1 is returned unchanged (bit-exact
    with direct sampling). Raises if a frame is left uncovered.

    ``out``: a buffer of the result's shape (fp32, on the predictions' device) to merge into in
    place instead of a fresh one; a caller that reuses it across steps pays no page faults on a
    new buffer. Predictions are read where they are (zero-copy views of what the workers sent):
    only weighted windows make a temporary.
    """
    if len(windows) == 1 and windows[0].frames == tuple(range(num_frames)) and set(windows[0].weights) == {1.0}:
        return preds[0].float()
    c, _, h, w = preds[0].shape
    if out is not None and out.shape == (c, num_frames, h, w) and out.dtype == torch.float32 \
            and out.device == preds[0].device:
        num = out.zero_()
    else:
        num = torch.zeros(c, num_frames, h, w, dtype=torch.float32, device=preds[0].device)
    den = torch.zeros(num_frames, dtype=torch.float32, device=preds[0].device)
    for pred, win in zip(preds, windows):
        idx = torch.tensor(win.frames, device=pred.device)
        wt = torch.tensor(win.weights, dtype=torch.float32, device=pred.device)
        if set(win.weights) <= {0.0, 1.0}:  # uniform (+ padding): add the weight-1 frames as they are
            keep = [j for j, x in enumerate(win.weights) if x]
            if keep and keep == list(range(keep[0], keep[-1] + 1)):  # one run (padding at the ends): a view
                num.index_add_(1, idx[keep[0]:keep[-1] + 1], pred.float().narrow(1, keep[0], len(keep)))
            elif keep:
                sel = torch.tensor(keep, device=pred.device)
                num.index_add_(1, idx[sel], pred.float().index_select(1, sel))
        else:
            num.index_add_(1, idx, pred.float() * wt.view(1, -1, 1, 1))  # [C, L, h, w] scattered on F
        den.index_add_(0, idx, wt)
    if bool((den <= 0).any()):
        missing = torch.nonzero(den <= 0).flatten().tolist()
        raise ValueError(f"latent frames {missing[:10]} are covered by no window")
    return num.div_(den.view(1, -1, 1, 1))


def glc_gamma(t: float, gamma0: float = 0.005, beta: float = 0.0005) -> float:
    """GLC annealing coefficient (Ma et al., "GLC-Diffusion: Global-Local Collaborative
    Diffusion for Long Video Generation", §3.2 Eq. 9, defaults from §7):
    ``gamma = gamma0 * exp(beta * t)``, ``t`` the scheduler timestep on the 0..1000 scale.

    The paper contradicts itself on the direction: its prose speaks of a transition from local
    to global, while Eq. 9 with its defaults gives the global path 0.5-0.8% that *falls* as
    denoising proceeds (t decreasing). We follow the equation (METHODS.md §7): gamma grows with
    t, so the global path weighs most at high noise."""
    return gamma0 * math.exp(beta * float(t))


def fuse_paths(global_pred: torch.Tensor, local_pred: torch.Tensor, gamma: float) -> torch.Tensor:
    """GLC path fusion (Eq. 9): ``gamma * T_global + (1 - gamma) * T_local``. Overwrites
    both inputs (the merged path predictions, which nothing else holds) to avoid temporaries."""
    return local_pred.mul_(1.0 - gamma).add_(global_pred.mul_(gamma))
