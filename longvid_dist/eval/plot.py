"""``longvid eval ... --plot out.png``: per-frame metrics over time, one line per video.

Three panels share the frame axis: flicker (mean absolute difference of frame t and t+1),
motion magnitude (optical flow, px/frame) and feature consistency (cosine of consecutive
frames' features, and of every frame against the first one, dashed). A seam at a window
boundary shows as a spike in flicker and a dip in consistency; drift as a falling dashed line.
Where a video has a sidecar from ``longvid render``, its window edges (latent frames ``k *
stride`` and ``k * stride + window`` of a sliding layout, as pixel frames) are drawn as faint
vertical lines. Drawn with matplotlib's non-interactive Agg backend.
"""

from __future__ import annotations

import json
import os

PANELS = (("flicker", "flicker (MAD, 0..1)"), ("motion", "motion (px/frame)"),
          ("consistency", "feature consistency (cosine)"))


def window_edges(video: str) -> list[int]:
    """Pixel frames at the window edges recorded by the video's sidecar ([] when there is none)."""
    side_path = video.rstrip("/" + os.sep) + ".json"
    try:
        with open(side_path, encoding="utf-8") as f:
            side = json.load(f)
        plan = side["recipe"]["plan"]
        F = int(side["latent_frames"])
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if plan.get("kind") == "direct":
        return []
    window = plan.get("window") or side.get("spec", {}).get("window") or 21
    stride = plan.get("stride") or side.get("spec", {}).get("stride") or max(window // 2, 1)
    if F <= window:
        return []
    edges = set()
    for s in range(0, F - window + 1, stride):
        edges.update((s, s + window))
    return sorted(1 + 4 * (e - 1) for e in edges if 0 < e < F)


def plot_series(results: list[dict], out: str) -> str:
    """Write the figure of ``evaluate(..., series=True)`` results to ``out`` (PNG); returns it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(PANELS), 1, figsize=(10, 7.5), sharex=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for n, r in enumerate(results):
        c = colours[n % len(colours)]
        label = os.path.basename(str(r["path"]).rstrip("/")) or str(r["path"])
        s = r.get("series") or {}
        for ax, (key, _) in zip(axes, PANELS):
            ys = s.get(key) or []
            ax.plot(range(1, len(ys) + 1), ys, color=c, lw=1.2, label=label)
            if key == "consistency" and s.get("consistency_first"):
                ys = s["consistency_first"]
                ax.plot(range(1, len(ys) + 1), ys, color=c, lw=1, ls="--", label=f"{label} vs frame 0")
        for e in window_edges(str(r["path"])):
            for ax in axes:
                ax.axvline(e, color=c, alpha=0.2, lw=0.8)
    for ax, (_, title) in zip(axes, PANELS):
        ax.set_ylabel(title, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="upper right")
    axes[-1].set_xlabel("frame t (pair t-1, t)")
    fig.suptitle("per-frame temporal metrics" + (" (faint lines: window edges)" if any(
        window_edges(str(r["path"])) for r in results) else ""), fontsize=10)
    fig.tight_layout()
    tmp = f"{out}.{os.getpid()}.tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out)
    return out
