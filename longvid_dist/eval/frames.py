"""Frame conversion shared by the eval metrics and optical flow.

One concern: turn decoded RGB frames (uint8 on 0..255, or float on [0, 1], ``[n, H, W, 3]``)
into the float32 ``[n, 3, H, W]`` tensors the metrics work on, and those into ITU-R BT.601
luma (the grayscale both the optical flow and the structural features use).
"""

from __future__ import annotations

import numpy as np
import torch

_LUMA = (0.299, 0.587, 0.114)


def _as_float_frames(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [n,H,W,3] (0..255) or float [n,H,W,3] (0..1) -> float32 tensor [n,3,H,W] on [0,1]."""
    t = torch.as_tensor(np.asarray(frames)) if not isinstance(frames, torch.Tensor) else frames
    if t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"frames must have shape [n, H, W, 3], got {list(t.shape)}")
    if t.dtype == torch.uint8:
        t = t.float().div_(255.0)
    else:
        t = t.float()
    return t.permute(0, 3, 1, 2).contiguous()


def _luma(x: torch.Tensor) -> torch.Tensor:
    """[n,3,H,W] RGB -> [n,1,H,W] BT.601 luma."""
    w = torch.tensor(_LUMA, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)
