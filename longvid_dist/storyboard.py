"""Storyboards: a video told as segments with their own prompts (``--storyboard story.json``).

    {"global": "optional prompt for the whole video",
     "segments": [{"prompt": "a cat walks", "frames": 41}, {"prompt": "a cat sleeps", "frames": 40}]}

Segment ``frames`` are pixel frames and sum to the spec's ``frames``. :class:`Storyboard` is the
validated file (plain data, no torch: :class:`~longvid_dist.config.RenderSpec` checks it on
construction); :class:`StoryboardConds` maps it onto latent frames and gives each window its
conditioning id (``Window.cond``):

- a window inside one segment gets that segment's prompt id (one id per distinct prompt, so each
  prompt is encoded once per render);
- a window straddling a boundary gets a *blend id* ``blend:sb0=9,sb1=3``: the embeddings of the
  prompts it covers, weighted by how many of the window's pixel frames fall in each segment. The
  worker computes a blend from the encoded embeddings (:func:`parse_blend`), once per id.
  Blending embeddings rather than mixing two forwards (Gen-L-Video's multi-text co-denoising
  runs one prompt per window) keeps one model call per window whatever the storyboard, and the
  linear interpolation of neighbouring prompts' embeddings is what FreeNoise (Qiu et al. 2023,
  "FreeNoise: Tuning-Free Longer Video Diffusion via Noise Rescheduling", multi-prompt) uses for
  smooth transitions; the windows' overlap-weighted merge then smooths across the boundary too;
- GLC's global path and ABAM anchors get the global prompt (id ``global``) when there is one;
  without one they blend what they cover like any other window.

Diffusion-forcing / causal plans switch prompts per chunk with :meth:`StoryboardConds.cond_for`
(the chunk's latent frames) or :meth:`StoryboardConds.cond_at` (one latent frame).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from .config import SpecError

SEGMENT_KEYS = ("prompt", "frames")
STORYBOARD_KEYS = ("global", "segments")
BLEND_PREFIX = "blend:"
GLOBAL_ID = "global"


@dataclass(frozen=True)
class Segment:
    """One storyboard segment."""

    prompt: str
    """Its prompt (non-empty)."""
    frames: int
    """Its length in pixel frames."""


@dataclass(frozen=True)
class Storyboard:
    """A validated storyboard: segments in order, and an optional prompt for the whole video."""

    segments: tuple[Segment, ...]
    global_prompt: str | None = None

    @classmethod
    def parse(cls, obj, frames: int, field: str = "storyboard") -> "Storyboard":
        """A storyboard from its JSON object (or a path to a JSON file, or a Storyboard), checked
        against the video's ``frames``; :class:`SpecError` naming the offending key
        (``storyboard.segments[1].frames``) otherwise."""
        if isinstance(obj, Storyboard):
            obj = obj.to_dict()
        if isinstance(obj, (str, os.PathLike)):
            obj = _read(os.fspath(obj), field)
        if not isinstance(obj, dict):
            raise SpecError(field, f"must be a JSON object with {', '.join(STORYBOARD_KEYS)}, "
                                   f"got {type(obj).__name__}")
        for k in obj:
            if k not in STORYBOARD_KEYS:
                raise SpecError(f"{field}.{k}", f"unknown key (allowed: {', '.join(STORYBOARD_KEYS)})")
        glob = obj.get("global")
        if glob is not None and (not isinstance(glob, str) or not glob.strip()):
            raise SpecError(f"{field}.global", f"must be a non-empty string (or left out), got {glob!r}")
        segs = obj.get("segments")
        if not isinstance(segs, list) or not segs:
            raise SpecError(f"{field}.segments", f"must be a non-empty list of {{prompt, frames}} objects, "
                                                 f"got {_short(segs)}")
        out = []
        for i, s in enumerate(segs):
            name = f"{field}.segments[{i}]"
            if not isinstance(s, dict):
                raise SpecError(name, f"must be an object with prompt and frames, got {_short(s)}")
            for k in s:
                if k not in SEGMENT_KEYS:
                    raise SpecError(f"{name}.{k}", f"unknown key (allowed: {', '.join(SEGMENT_KEYS)})")
            p = s.get("prompt")
            if not isinstance(p, str) or not p.strip():
                raise SpecError(f"{name}.prompt", f"must be a non-empty string, got {_short(p)}")
            n = s.get("frames")
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise SpecError(f"{name}.frames", f"must be a positive integer (pixel frames), got {_short(n)}")
            out.append(Segment(p, n))
        total = sum(s.frames for s in out)
        if total != frames:
            last = out[-1].frames + frames - total
            fix = f"; make this one {last}" if last >= 1 else ""
            raise SpecError(f"{field}.segments[{len(out) - 1}].frames",
                            f"the segments' frames sum to {total} ({'+'.join(str(s.frames) for s in out)}), "
                            f"but the video has {frames} frames (--frames){fix}")
        return cls(tuple(out), glob)

    def to_dict(self) -> dict:
        """The JSON form (what the sidecar records and :meth:`parse` reads back)."""
        d: dict = {}
        if self.global_prompt is not None:
            d["global"] = self.global_prompt
        d["segments"] = [{"prompt": s.prompt, "frames": s.frames} for s in self.segments]
        return d

    def starts(self) -> list[int]:
        """First pixel frame of each segment."""
        out, a = [], 0
        for s in self.segments:
            out.append(a)
            a += s.frames
        return out

    def prompt_ids(self) -> list[str]:
        """Conditioning id of each segment: ``sb<k>``, one per distinct prompt, in order of first use."""
        ids: dict[str, str] = {}
        return [ids.setdefault(s.prompt, f"sb{len(ids)}") for s in self.segments]


def _read(path: str, field: str):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise SpecError(field, f"cannot read {path!r}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise SpecError(field, f"{path!r} is not UTF-8 text") from None
    try:
        return json.loads(text)
    except ValueError as e:
        raise SpecError(field, f"{path!r} is not valid JSON: {e}") from None


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


# -- conditioning ids ----------------------------------------------------------------------------

def blend_id(counts: dict[str, int]) -> str:
    """The id of a blend of prompt ids weighted by ``counts`` (pixel frames); a single prompt's
    own id when only one has frames."""
    parts = [(k, int(n)) for k, n in counts.items() if n > 0]
    if len(parts) == 1:
        return parts[0][0]
    return BLEND_PREFIX + ",".join(f"{k}={n}" for k, n in parts)


def parse_blend(cond_id: str) -> list[tuple[str, float]] | None:
    """``[(prompt id, weight), ...]`` (weights summing to 1, in the id's order) of a blend id;
    None for a plain id."""
    if not cond_id.startswith(BLEND_PREFIX):
        return None
    parts = [p.rpartition("=") for p in cond_id[len(BLEND_PREFIX):].split(",")]
    counts = [(k, int(n)) for k, _, n in parts]
    total = sum(n for _, n in counts)
    return [(k, n / total) for k, n in counts]


class StoryboardConds:
    """A storyboard on a latent of ``latent_frames`` frames (latent frame 0 decodes to one pixel
    frame, each later one to ``temporal``): the conditions to encode and each window's id."""

    def __init__(self, board: Storyboard, latent_frames: int, temporal: int, negative: str = ""):
        self.board, self.latent_frames, self.temporal, self.negative = board, latent_frames, temporal, negative
        self.segment_ids = board.prompt_ids()
        self.global_id = None
        if board.global_prompt is not None:
            same = [i for s, i in zip(board.segments, self.segment_ids) if s.prompt == board.global_prompt]
            self.global_id = same[0] if same else GLOBAL_ID
        starts = board.starts() + [sum(s.frames for s in board.segments)]
        # pixel frames of each latent frame in each prompt id
        self.shares: list[dict[str, int]] = []
        for f in range(latent_frames):
            a, b = (0, 1) if f == 0 else (1 + temporal * (f - 1), 1 + temporal * f)
            c: dict[str, int] = {}
            for k, sid in enumerate(self.segment_ids):
                n = max(0, min(b, starts[k + 1]) - max(a, starts[k]))
                if n:
                    c[sid] = c.get(sid, 0) + n
            self.shares.append(c)

    def conditions(self) -> dict[str, tuple[str, str]]:
        """``{id: (prompt, negative prompt)}``: each distinct prompt once."""
        out = {sid: (s.prompt, self.negative) for s, sid in zip(self.board.segments, self.segment_ids)}
        if self.global_id == GLOBAL_ID:
            out[GLOBAL_ID] = (self.board.global_prompt, self.negative)
        return out

    def cond_for(self, frames, weights=None, path: str = "full", role: str = "plain") -> str:
        """Conditioning id of a window (or a diffusion-forcing chunk) over latent ``frames``:
        the global prompt for a global-path or anchor window when the storyboard has one, else
        the prompts of the frames with nonzero ``weights`` blended by pixel frames."""
        if self.global_id is not None and (path == "global" or role == "anchor"):
            return self.global_id
        real = [f for j, f in enumerate(frames) if weights is None or weights[j] > 0] or list(frames)
        counts: dict[str, int] = {sid: 0 for sid in dict.fromkeys(self.segment_ids)}
        for f in dict.fromkeys(real):  # a frame counts once even if a window lists it twice
            for sid, n in self.shares[f].items():
                counts[sid] += n
        return blend_id(counts)

    def cond_at(self, latent_frame: int) -> str:
        """Conditioning id of one latent frame (a blend when it straddles a boundary)."""
        return self.cond_for([latent_frame])

    def prompt_at(self, latent_frame: int) -> str:
        """The prompt of the segment holding most of ``latent_frame``'s pixel frames."""
        c = self.shares[latent_frame]
        sid = max(c, key=lambda k: c[k])
        return self.board.segments[self.segment_ids.index(sid)].prompt

    def describe(self) -> dict:
        """Plain data for the sidecar: the segments with their pixel and latent frames and ids."""
        def latent(p: int) -> int:
            return 0 if p == 0 else (p - 1) // self.temporal + 1

        segs = [{"prompt": s.prompt, "frames": s.frames, "pixel_frames": [a, a + s.frames],
                 "latent_frames": [latent(a), latent(a + s.frames - 1) + 1], "cond": sid}
                for s, a, sid in zip(self.board.segments, self.board.starts(), self.segment_ids)]
        return {"global": self.board.global_prompt, "global_cond": self.global_id, "segments": segs,
                "conditions": {k: p for k, (p, _) in self.conditions().items()}}
