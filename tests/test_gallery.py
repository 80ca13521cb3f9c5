"""The batch gallery in a real headless browser: ``longvid batch --gallery`` on a batch with
failures (an invalid row, a malformed line, a row refused by the memory pre-flight) and a rerun,
plus an id left in flight, served by a plain HTTP file server and loaded by Chromium through
playwright. Skipped, with the reason, only where no browser can be found or installed
(``.ci/run`` installs the distribution's chromium)."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from longvid_dist.batch import MANIFEST, Manifest

_SCRIPT = Path(sys.executable).with_name("longvid")
LONGVID = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "longvid_dist.cli"]


def _browser() -> tuple[str | None, str]:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return None, "playwright is not installed (pip install -e '.[test]')"
    for exe in (os.environ.get("LONGVID_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser",
                shutil.which("chromium"), shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if exe and os.path.exists(exe):
            return exe, ""
    return None, "no chromium on this machine (.ci/run installs it with apt-get; set LONGVID_CHROMIUM)"


def _env() -> dict:
    return {**os.environ, "COLUMNS": "80", "LONGVID_CACHE": os.environ["LONGVID_CACHE"], "OMP_NUM_THREADS": "1"}


def _batch(rows: Path, out: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(LONGVID + ["batch", str(rows), "--out-dir", str(out), "--steps", "1", "--height", "64",
                                     "--width", "64", "--gallery", "--quiet"],
                          cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)


@pytest.fixture()
def server(tmp_path):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(tmp_path))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_gallery_of_a_batch_with_failures_and_reruns_in_a_real_browser(tmp_path, server):
    exe, why = _browser()
    if exe is None:
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    rows = tmp_path / "rows.jsonl"
    out = tmp_path / "out"
    good = {"id": "cat", "prompt": "a cat", "frames": 9}
    tricky = {"id": "<b>x&y</b> ü", "prompt": "tag <i>soup</i>", "frames": 5}
    huge = {"id": "huge", "prompt": "a huge video", "frames": 400001, "height": 16000, "width": 16000}
    rows.write_text("\n".join([json.dumps(good), json.dumps({"id": "dog", "prompt": "a dog", "frames": 40}),
                               json.dumps(huge), "not json", json.dumps(tricky)]) + "\n")
    first = _batch(rows, out, tmp_path)
    assert first.returncode == 1, first.stderr  # some rows failed
    # the rerun: dog fixed, the rest unchanged (cat is skipped, the bad rows fail again)
    rows.write_text("\n".join([json.dumps(good), json.dumps({"id": "dog", "prompt": "a dog", "frames": 9}),
                               json.dumps(huge), "not json", json.dumps(tricky)]) + "\n")
    second = _batch(rows, out, tmp_path)
    assert second.returncode == 1, second.stderr
    # a video left in flight (as a killed batch leaves it), then the page rebuilt from the directory
    m = Manifest(str(out / MANIFEST))
    m.append({"id": "late", "state": "running", "line": 6, "out": "late.mp4", "prompt": "a late bird"})
    m.close()
    r = subprocess.run(LONGVID + ["gallery", str(out)], env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr

    ids = {"cat", "dog", "huge", "line 4", tricky["id"], "late"}
    expect_state = {"cat": "done", "dog": "done", "huge": "failed", "line 4": "failed", tricky["id"]: "done",
                    "late": "running"}
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        page = browser.new_page()
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        resp = page.goto(f"{server}/out/index.html")
        assert resp is not None and resp.ok
        page.wait_for_load_state("load")
        cards = page.locator(".card")
        shown = {cards.nth(i).get_attribute("data-id"): cards.nth(i).get_attribute("data-state")
                 for i in range(cards.count())}
        assert shown == expect_state
        dog = page.locator('.card[data-id="dog"]')
        assert "2 attempts" in dog.inner_text()  # failed, then rerun and done
        assert "4k+1" not in dog.inner_text()  # the old failure is not shown on a done card
        huge_text = page.locator('.card[data-id="huge"]').inner_text()
        assert "does not fit in memory" in huge_text and "GiB" in huge_text
        assert "in flight" in page.locator('.card[data-id="late"]').inner_text().lower()
        tricky_card = page.locator(".card").filter(has_text="tag <i>soup</i>")  # escaped, shown as text
        assert tricky_card.count() == 1
        # every preview image decoded, every link resolves on the plain file server
        imgs = page.locator("img")
        assert imgs.count() == 3
        for i in range(imgs.count()):
            assert page.evaluate("(img) => img.complete && img.naturalWidth > 0", imgs.nth(i).element_handle())
        hrefs = page.eval_on_selector_all("a", "els => els.map(e => e.href)")
        assert len(hrefs) == 6  # video + sidecar for each done id
        for href in hrefs:
            with urllib.request.urlopen(href) as got:
                assert got.status == 200 and got.read(1)
        browser.close()
    assert not errors, errors
    assert ids == set(shown)
