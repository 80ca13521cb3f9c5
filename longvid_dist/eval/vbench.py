"""Optional VBench scores for ``longvid eval --vbench``: is it usable here, and running it.

One concern: the third-party VBench benchmark ("VBench: Comprehensive Benchmark Suite for
Video Generative Models", Huang et al., https://github.com/Vchitect/VBench).
:func:`vbench_status` says whether the package and the weights of :data:`VBENCH_DIMENSIONS`
are present (listing what is missing, nothing imported or downloaded), and :func:`run_vbench`
runs its custom-input mode on local weights when they are.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from typing import Optional, Sequence

import torch

from ..io.video import VideoWriter, check_video, iter_frames
from .metrics import CHUNK_FRAMES

__all__ = ["VBENCH_DIMENSIONS", "VBENCH_WEIGHTS", "vbench_cache_dir", "vbench_status", "run_vbench"]

VBENCH_DIMENSIONS: tuple[str, ...] = (
    "subject_consistency", "background_consistency", "motion_smoothness",
    "temporal_flickering", "imaging_quality",
)
"""The VBench dimensions long-video papers report, in the order :func:`run_vbench` runs them."""

VBENCH_WEIGHTS: dict[str, list[tuple[str, str]]] = {
    # dimension -> [(path under VBench's cache dir, what it is)], as vbench.utils.init_submodules
    # expects them in local mode (local mode is what run_vbench uses: no downloads at run time)
    "subject_consistency": [
        ("dino_model/dino_vitbase16_pretrain.pth", "DINO ViT-B/16 weights"),
        ("dino_model/facebookresearch_dino_main/hubconf.py", "clone of github.com/facebookresearch/dino"),
    ],
    "background_consistency": [("clip_model/ViT-B-32.pt", "CLIP ViT-B/32 weights")],
    "motion_smoothness": [("amt_model/amt-s.pth", "AMT-S checkpoint")],
    "temporal_flickering": [],
    "imaging_quality": [("pyiqa_model/musiq_spaq_ckpt-358bb6af.pth", "MUSIQ (SPAQ) checkpoint")],
}


def vbench_cache_dir() -> str:
    """Where VBench keeps its models: ``$VBENCH_CACHE_DIR``, else ``~/.cache/vbench``."""
    return os.environ.get("VBENCH_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "vbench")


def _weights_list() -> str:
    return "; ".join(f"{d}: " + (", ".join(p for p, _ in VBENCH_WEIGHTS[d]) or "no weights")
                     for d in VBENCH_DIMENSIONS)


def vbench_status(dimensions: Sequence[str] = VBENCH_DIMENSIONS) -> tuple[bool, str]:
    """``(available, reason)``: can :func:`run_vbench` run ``dimensions`` here, and if not, why.

    Checks that the ``vbench`` package (and its torchvision / decord imports) is installed and
    that every weight file the dimensions need is in :func:`vbench_cache_dir`. Nothing is
    imported or downloaded.
    """
    unknown = [d for d in dimensions if d not in VBENCH_WEIGHTS]
    if unknown:
        return False, f"unsupported VBench dimension(s) {', '.join(unknown)}; supported: {', '.join(VBENCH_DIMENSIONS)}"
    cache = vbench_cache_dir()
    if importlib.util.find_spec("vbench") is None:
        return False, (
            "VBench is not installed: `pip install vbench` (it also pulls torchvision, decord and others); "
            "its model weights download from the internet (Hugging Face / GitHub / OpenAI) on first use, "
            f"so an offline machine needs them placed under {cache} ($VBENCH_CACHE_DIR or ~/.cache/vbench) "
            f"beforehand: {_weights_list()}"
        )
    missing_mods = [m for m in ("torchvision", "decord") if importlib.util.find_spec(m) is None]
    if missing_mods:
        return False, f"VBench is installed but its dependencies are missing: {', '.join(missing_mods)}"
    missing = [f"{d}: {os.path.join(cache, p)} ({what})"
               for d in dimensions for p, what in VBENCH_WEIGHTS[d]
               if not os.path.exists(os.path.join(cache, p))]
    if missing:
        return False, (f"VBench is installed but weights are missing from its cache dir {cache} "
                       f"($VBENCH_CACHE_DIR or ~/.cache/vbench): " + "; ".join(missing))
    return True, f"VBench installed; weights for {', '.join(dimensions)} found in {cache}"


def run_vbench(paths: Sequence[str], dimensions: Sequence[str] = VBENCH_DIMENSIONS,
               device: Optional[str] = None) -> dict:
    """Run VBench's custom-input mode (local weights only) on each video.

    Raises RuntimeError with :func:`vbench_status`'s reason when it cannot run. VBench reads
    ``.mp4`` only, so other inputs (``.mkv``, PNG directories) are re-encoded to a temporary
    H.264 ``.mp4`` first (cropped to even size). Returns ``{"available": True, "dimensions":
    [...], "results": {path: {dimension: score}}}``.
    """
    ok, reason = vbench_status(dimensions)
    if not ok:
        raise RuntimeError(reason)
    import json

    import vbench  # noqa: F401  (optional dependency, checked above)
    from vbench import VBench

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    full_info = os.path.join(os.path.dirname(vbench.__file__), "VBench_full_info.json")
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="longvid-vbench-") as tmp:
        for i, path in enumerate(paths):
            src = path
            if not (os.path.isfile(path) and path.lower().endswith(".mp4")):
                info = check_video(path)
                w2, h2 = info["width"] // 2 * 2, info["height"] // 2 * 2
                src = os.path.join(tmp, f"video{i}.mp4")
                with VideoWriter(src, w2, h2, info["fps"] or 16.0) as w:
                    for chunk in iter_frames(path, CHUNK_FRAMES):
                        w.write(chunk[:, :h2, :w2])
            out = os.path.join(tmp, f"out{i}")
            VBench(device, full_info, out).evaluate(videos_path=src, name=f"video{i}", dimension_list=list(dimensions),
                                                   local=True, mode="custom_input")
            with open(os.path.join(out, f"video{i}_eval_results.json"), encoding="utf-8") as f:
                raw = json.load(f)
            results[path] = {d: (v[0] if isinstance(v, (list, tuple)) else v) for d, v in raw.items()}
    return {"available": True, "dimensions": list(dimensions), "results": results}
