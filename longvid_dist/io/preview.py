"""Previews: a contact sheet ``<out>.preview.png`` of evenly spaced frames with their numbers.

:class:`PreviewSheet` picks the frames while a render streams its decode (no second pass, only
the picked frames are kept); :func:`write_preview` makes one from a finished video. Segment
boundaries (storyboard segments, once they exist) are marked by a coloured bar under the
first frame of each segment shown (the first picked frame at or after the segment's start).
"""

from __future__ import annotations

import os

import numpy as np

PREVIEW_FRAMES = 8
"""Frames on a contact sheet."""
THUMB = 160
"""Longest side of a frame on the sheet, in pixels."""


def preview_path(out: str) -> str:
    """``<out>.preview.png`` (``dir.preview.png`` for a PNG directory ``dir/``)."""
    return out.rstrip("/" + os.sep) + ".preview.png"


def pick_frames(total: int, n: int = PREVIEW_FRAMES) -> list[int]:
    """``n`` evenly spaced frame numbers of ``total`` (first and last included)."""
    if total <= n:
        return list(range(total))
    return sorted({round(i * (total - 1) / (n - 1)) for i in range(n)})


class PreviewSheet:
    """Collects the picked frames from a stream of ``[n, H, W, 3]`` chunks (uint8 or [0, 1])."""

    def __init__(self, total: int, n: int = PREVIEW_FRAMES, boundaries: list[int] | None = None):
        self.wanted = pick_frames(total, n)
        self.boundaries = set(boundaries or [])
        """First pixel frame of each segment after the first."""
        starts = sorted(self.boundaries) + [total]
        self.marked = set()
        """Picked frames that are the first shown of their segment (they get the bar)."""
        for b, end in zip(starts, starts[1:]):
            shown = [i for i in self.wanted if b <= i < end]
            if shown:
                self.marked.add(shown[0])
        self.frames: dict[int, np.ndarray] = {}
        self.seen = 0

    def feed(self, chunk: np.ndarray) -> None:
        for i in self.wanted:
            if self.seen <= i < self.seen + len(chunk):
                f = chunk[i - self.seen]
                self.frames[i] = f if f.dtype == np.uint8 else (np.clip(f, 0, 1) * 255 + 0.5).astype(np.uint8)
        self.seen += len(chunk)

    def write(self, path: str) -> str:
        """Write the sheet (atomically) and return its path."""
        from PIL import Image, ImageDraw

        idx = sorted(self.frames)
        if not idx:
            raise ValueError("no frames to preview")
        h, w = self.frames[idx[0]].shape[:2]
        s = THUMB / max(h, w)
        tw, th = max(1, round(w * s)), max(1, round(h * s))
        label, pad = 16, 4
        sheet = Image.new("RGB", (len(idx) * (tw + pad) + pad, th + label + 2 * pad), (24, 24, 24))
        draw = ImageDraw.Draw(sheet)
        for k, i in enumerate(idx):
            x = pad + k * (tw + pad)
            sheet.paste(Image.fromarray(self.frames[i]).resize((tw, th), Image.BILINEAR), (x, pad))
            draw.text((x + 2, pad + th + 2), f"#{i}", fill=(230, 230, 230))
            if i in self.marked:
                draw.rectangle((x, pad + th, x + tw - 1, pad + th + 1), fill=(255, 160, 0))
        tmp = f"{path}.{os.getpid()}.tmp"
        sheet.save(tmp, format="PNG")
        os.replace(tmp, path)
        return path


def write_preview(video: str, path: str | None = None, n: int = PREVIEW_FRAMES) -> str:
    """Contact sheet of a finished video (file or PNG directory); returns its path."""
    from .video import iter_frames, probe_video

    total = probe_video(video)["frames"]
    sheet = PreviewSheet(total, n)
    for chunk in iter_frames(video, 32):
        sheet.feed(chunk)
    return sheet.write(path or preview_path(video))
