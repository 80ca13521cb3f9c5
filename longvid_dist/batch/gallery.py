"""The batch gallery ``DIR/index.html``: one card per id, a static page any file server can show.

Each card has the preview (``<name>.mp4.preview.png``), the prompt, the recipe, the state --
done, failed with its reason, or in flight -- the render's duration, how many times it was
attempted, and a link to the video and its sidecar. The page is rebuilt from ``manifest.jsonl``
and the sidecars, so ``longvid gallery DIR`` makes it for any batch directory; ``longvid batch
--gallery`` rewrites it (atomically) on every manifest line, and while the batch runs the page
reloads itself every 10 seconds. Everything is escaped; links are relative and URL-quoted.
"""

from __future__ import annotations

import html
import json
import os
import sys
from urllib.parse import quote

from .manifest import MANIFEST

INDEX = "index.html"

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#f4f4f4;color:#222}
h1{font-size:1.3em} .summary{margin-bottom:1em}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:1em}
.card{background:#fff;border-radius:6px;padding:.8em;box-shadow:0 1px 3px #0002;border-left:6px solid #999}
.card.done{border-color:#2a2} .card.failed{border-color:#c22} .card.running{border-color:#e90}
.card img{max-width:100%;display:block;margin:.4em 0;image-rendering:pixelated}
.id{font-weight:600;word-break:break-all} .state{float:right;font-size:.85em;text-transform:uppercase}
.prompt{margin:.3em 0;word-break:break-word} .meta{color:#555;font-size:.85em}
.reason{color:#a00;font-size:.85em;word-break:break-word}
"""


def _entries(out_dir: str) -> list[dict]:
    try:
        with open(os.path.join(out_dir, MANIFEST), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    out = []
    for raw in data.split(b"\n"):
        try:
            e = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            continue
        if isinstance(e, dict) and "state" in e:
            out.append(e)
    return out


def _sidecar(out_dir: str, out: str | None) -> dict:
    if not out:
        return {}
    try:
        with open(os.path.join(out_dir, out + ".json"), encoding="utf-8") as f:
            side = json.load(f)
        return side if isinstance(side, dict) else {}
    except (OSError, ValueError):
        return {}


def cards(out_dir: str) -> list[dict]:
    """One dict per id (and per id-less line) from the manifest: the latest state wins, with the
    prompt and recipe from the sidecar or the manifest, and the number of attempts."""
    by_key: dict[str, dict] = {}
    for e in _entries(out_dir):
        key = e["id"] if isinstance(e.get("id"), str) else f"line {e.get('line')}"
        c = by_key.setdefault(key, {"id": key, "attempts": 0, "prompt": None, "recipe": None, "out": None})
        if e["state"] == "running" or (e["state"] == "failed" and c.get("state") != "running"):
            c["attempts"] += 1  # a render started, or a row refused before starting
        for k in ("prompt", "recipe", "out"):
            c[k] = e.get(k) or c[k]
        c.update(state=e["state"], reason=e.get("reason"), time=e.get("time"), timings=e.get("timings"))
    for c in by_key.values():
        side = _sidecar(out_dir, c["out"]) if c["state"] == "done" else {}
        spec = side.get("spec") or {}
        c["prompt"] = spec.get("prompt", c["prompt"])
        c["recipe"] = spec.get("recipe", c["recipe"])
        total = (c.get("timings") or side.get("timings") or {}).get("total")
        c["duration"] = total
        prev = c["out"] and c["out"] + ".preview.png"
        c["preview"] = prev if prev and os.path.exists(os.path.join(out_dir, prev)) else None
        c["video"] = c["out"] if c["out"] and os.path.exists(os.path.join(out_dir, c["out"])) else None
    return list(by_key.values())


def _card_html(c: dict) -> str:
    e = html.escape
    state = {"done": "done", "failed": "failed", "running": "in flight"}.get(c["state"], c["state"])
    parts = [f'<div class="card {e(c["state"])}" data-id="{e(c["id"])}" data-state="{e(c["state"])}">',
             f'<span class="state">{e(state)}</span><div class="id">{e(c["id"])}</div>']
    if c["preview"]:
        parts.append(f'<img src="{quote(c["preview"])}" alt="preview of {e(c["id"])}">')
    parts.append(f'<div class="prompt">{e(c["prompt"] or "(no prompt)")}</div>')
    meta = [f"recipe {e(str(c['recipe']))}" if c["recipe"] else None,
            f"{c['duration']:.1f} s" if isinstance(c["duration"], (int, float)) else None,
            f"started {e(c['time'])}" if c["state"] == "running" and c.get("time") else None,
            f"{c['attempts']} attempts" if c["attempts"] > 1 else None]
    parts.append(f'<div class="meta">{" &middot; ".join(m for m in meta if m)}</div>')
    if c["state"] == "failed" and c.get("reason"):
        parts.append(f'<div class="reason">{e(c["reason"])}</div>')
    if c["video"]:
        v = quote(c["video"])
        parts.append(f'<div class="meta"><a class="video" href="{v}">video</a> &middot; '
                     f'<a class="sidecar" href="{v}.json">settings and timings</a></div>')
    parts.append("</div>")
    return "".join(parts)


def write_gallery(out_dir: str, live: bool = False) -> str:
    """Write ``DIR/index.html`` atomically; ``live`` pages reload every 10 s. Returns its path."""
    cs = cards(out_dir)
    counts = {s: sum(1 for c in cs if c["state"] == s) for s in ("done", "failed", "running")}
    title = f"longvid batch: {os.path.basename(os.path.abspath(out_dir))}"
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            + ('<meta http-equiv="refresh" content="10">' if live else "")
            + f'<link rel="icon" href="data:,"><title>{html.escape(title)}</title><style>{_CSS}</style></head>'
            f"<body><h1>{html.escape(title)}</h1><div class=\"summary\">{len(cs)} ids: {counts['done']} done, "
            f"{counts['failed']} failed, {counts['running']} in flight{' (this page refreshes)' if live else ''}"
            f'</div><div class="cards">' + "".join(_card_html(c) for c in cs) + "</div></body></html>\n")
    path = os.path.join(out_dir, INDEX)
    tmp = os.path.join(out_dir, f".{INDEX}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(tmp, path)
    return path


def main_gallery(argv: list[str] | None = None) -> int:
    """``longvid gallery OUT_DIR``: previews for finished videos that lack one, then index.html."""
    from ..cli import _Parser
    from ..io.preview import write_preview

    p = _Parser(prog="longvid gallery", description="Write OUT_DIR/index.html: one card per id of a batch "
                                                    "(preview, prompt, recipe, state, duration, video link).")
    p.add_argument("out_dir", metavar="OUT_DIR", help="a `longvid batch` output directory (holds manifest.jsonl)")
    p.add_argument("--no-previews", action="store_true", help="do not make missing previews of finished videos")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if not os.path.isfile(os.path.join(args.out_dir, MANIFEST)):
        print(f"longvid gallery: error: OUT_DIR: {args.out_dir!r} holds no {MANIFEST} (not a batch output directory)",
              file=sys.stderr)
        return 2
    if not os.access(args.out_dir, os.W_OK):
        print(f"longvid gallery: error: OUT_DIR: {args.out_dir!r} is not writable", file=sys.stderr)
        return 2
    if not args.no_previews:
        for c in cards(args.out_dir):
            if c["state"] == "done" and c["video"] and not c["preview"]:
                try:
                    write_preview(os.path.join(args.out_dir, c["video"]))
                except Exception as e:  # noqa: BLE001 - a card without a picture is still a card
                    print(f"longvid gallery: no preview for {c['id']!r}: {e}", file=sys.stderr)
    print(f"wrote {write_gallery(args.out_dir)}")
    return 0
