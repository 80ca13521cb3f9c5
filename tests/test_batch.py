"""``longvid batch``: real CLI subprocesses on a private local Ray, real ffmpeg, the tiny model.

Each batch run starts its own local Ray (2 CPUs here -> 2 videos in flight with one worker
each). Unit tests cover id sanitization, the manifest (torn final line, the lock) and input
errors, which must fail in about a second with one line and exit code 2, before any Ray start.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from longvid_dist.batch import (
    MANIFEST,
    BatchInputError,
    Manifest,
    assign_names,
    clean_stale,
    read_manifest,
    run_batch,
    safe_name,
)
from longvid_dist.io.video import probe_video

_SCRIPT = Path(sys.executable).with_name("longvid")
LONGVID = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "longvid_dist.cli"]
SIZE = ["--height", "64", "--width", "64"]


def _env() -> dict:
    return {**os.environ, "COLUMNS": "80", "LONGVID_CACHE": os.environ["LONGVID_CACHE"], "OMP_NUM_THREADS": "1"}


def batch(*args, cwd, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run(LONGVID + ["batch", *map(str, args)], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def write_rows(path: Path, rows: list) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def manifest_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def sha8(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()[:8]


# -- ids -> file names -------------------------------------------------------------------------

@pytest.mark.parametrize("id_, expected", [
    ("cat", "cat"),
    ("A-b_c.9", "A-b_c.9"),
    ("../../etc/passwd", f"_.._etc_passwd-{sha8('../../etc/passwd')}"),
    ("a/b", f"a_b-{sha8('a/b')}"),
    ("a?b", f"a_b-{sha8('a?b')}"),
    ("café ü", f"caf___-{sha8('café ü')}"),
    ("", f"_-{sha8('')}"),
    (".hidden", f"hidden-{sha8('.hidden')}"),
    ("..", f"_-{sha8('..')}"),
])
def test_safe_name(id_, expected):
    name = safe_name(id_)
    assert name == expected
    assert not name.startswith(".") and "/" not in name and name not in (".", "..")
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in name)


def test_names_are_capped_stable_and_distinct():
    long = "x" * 300
    assert len(safe_name(long)) == 100 + 9 and safe_name(long) == safe_name(long)
    assert safe_name(long) != safe_name(long + "y")
    ids = ["a?b", "a_b", "a/b", "A", "a", "../evil", "evil", f"a_b-{sha8('a?b')}", "", "é", "è"]
    names = assign_names(ids)
    assert len({n.lower() for n in names.values()}) == len(ids)  # distinct, even case-insensitively
    assert names["a_b"] == "a_b" and names["evil"] == "evil"  # safe, unique ids keep their name
    assert names["A"] != "A" and names["a"] != "a"  # A/a would clash on a case-insensitive file system
    assert assign_names(ids) == names


# -- manifest ----------------------------------------------------------------------------------

def test_manifest_ignores_and_cuts_a_torn_final_line(tmp_path):
    path = tmp_path / MANIFEST
    good = [{"id": "a", "state": "running"}, {"id": "b", "state": "done"}, {"id": None, "state": "failed"},
            {"id": "a", "state": "done"}]
    path.write_text("".join(json.dumps(e) + "\n" for e in good) + '{"id": "b", "state": "fai')
    latest = read_manifest(str(path))
    assert {k: v["state"] for k, v in latest.items()} == {"a": "done", "b": "done"}

    m = Manifest(str(path))
    try:
        with pytest.raises(BatchInputError, match="another longvid batch is running"):
            Manifest(str(path))  # one batch per directory
        assert {k: v["state"] for k, v in m.latest.items()} == {"a": "done", "b": "done"}
        m.append({"id": "b", "state": "failed", "reason": "boom"})
    finally:
        m.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]  # every line whole again
    assert lines[:4] == good and lines[4]["state"] == "failed" and "time" in lines[4]
    assert read_manifest(str(path))["b"]["reason"] == "boom"
    assert read_manifest(str(tmp_path / "none.jsonl")) == {}


def test_clean_stale_removes_only_dead_writers_leftovers(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [f".cat.partial-{dead.pid}.mp4", f".frames.partial-{dead.pid}", ".ckpt-abc123", ".cat.mp4.json.x1y2.tmp"]
    live = f".dog.partial-{os.getppid()}.mp4"
    for name in stale[:1] + stale[2:] + [live, "cat.mp4", "cat.mp4.ckpt"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / stale[1]).mkdir()
    (tmp_path / stale[1] / "frame_000000.png").write_bytes(b"x")
    assert sorted(clean_stale(str(tmp_path))) == sorted(stale)
    assert sorted(os.listdir(tmp_path)) == sorted([live, "cat.mp4", "cat.mp4.ckpt"])


def test_coordinator_ends_when_its_driver_is_gone():
    """A killed batch's coordinator must not go on writing into the directory the next run owns."""
    driver = subprocess.Popen(["sleep", "600"])
    code = ("import sys, time; from longvid_dist.batch.coordinator import VideoCoordinator; "
            f"c = VideoCoordinator(driver_pid={driver.pid}, poll=0.05); print('up', flush=True); time.sleep(60)")
    coord = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert coord.stdout.readline().strip() == "up"
        time.sleep(0.3)
        assert coord.poll() is None  # the driver lives: so does its coordinator
        driver.kill()
        driver.wait()
        assert coord.wait(timeout=10) == 1
    finally:
        for p in (driver, coord):
            if p.poll() is None:
                p.kill()
                p.wait()


# -- bad input: one line, exit 2, nothing started ----------------------------------------------

def test_bad_input_is_one_line_exit_2(tmp_path):
    rows = tmp_path / "rows.jsonl"
    write_rows(rows, [{"id": "a", "prompt": "a cat"}])
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [
        (["missing.jsonl", "--out-dir", "o1"], "prompts file 'missing.jsonl' does not exist"),
        ([tmp_path, "--out-dir", "o2"], "is a directory"),
        ([rows, "--out-dir", afile], "exists and is not a directory"),
        ([rows, "--out-dir", afile / "sub"], "cannot create output directory"),
        ([rows, "--out-dir", "o3", "--frames", "40"], "--frames: must be 4k+1"),
        ([rows, "--out-dir", "o4", "--workers-per-video", "0"], "--workers-per-video: must be a positive integer"),
        ([rows, "--out-dir", "o5", "--max-in-flight", "-1"], "--max-in-flight: must be a positive integer"),
        ([rows], "the following arguments are required: --out-dir"),
    ]
    if os.geteuid() != 0:  # root reads and writes anything
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        secret = tmp_path / "secret.jsonl"
        secret.write_text("{}\n")
        secret.chmod(0)
        cases += [([rows, "--out-dir", locked], "is not writable"),
                  ([rows, "--out-dir", locked / "sub"], "cannot create output directory"),
                  ([secret, "--out-dir", "o6"], "is not readable")]
    for args, msg in cases:
        t0 = time.time()
        p = batch(*args, cwd=tmp_path, timeout=60)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2, (args, p.stderr)
        assert len(lines) == 1 and lines[0].startswith("longvid batch: error: ") and msg in lines[0], (args, lines)
        assert time.time() - t0 < 30
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 7))  # refused before creating anything

    # one batch per directory: a second one is refused while the first holds the manifest
    out = tmp_path / "busy"
    out.mkdir()
    held = Manifest(str(out / MANIFEST))
    try:
        p = batch(rows, "--out-dir", out, cwd=tmp_path, timeout=60)
    finally:
        held.close()
    assert p.returncode == 2 and "another longvid batch is running" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_cluster_too_small_is_one_error_and_renders_nothing(tmp_path):
    write_rows(tmp_path / "rows.jsonl", [{"id": "a", "prompt": "a cat", "frames": 41, "steps": 2}])
    k = (os.cpu_count() or 1) + 1
    p = batch("rows.jsonl", "--out-dir", "out", "--workers-per-video", k, "--quiet", cwd=tmp_path, timeout=120)
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and re.fullmatch(  # the runtime's capacity check, naming the batch's flag
        rf"longvid batch: error: --workers-per-video {k} needs {k} CPU \(1 CPU per worker\); "
        rf"the cluster has \d+ CPU(, .*)?", lines[0]), lines
    assert "0 done (0 rendered, 0 resumed, 0 skipped), 0 failed, 1 not rendered" in p.stdout
    assert os.listdir(tmp_path / "out") == [MANIFEST] and (tmp_path / "out" / MANIFEST).read_text() == ""


# -- a batch with bad rows, then the same command again ----------------------------------------

def test_batch_renders_valid_rows_records_bad_ones_and_reruns_nothing(tmp_path):
    rows = [
        {"id": "cat", "prompt": "a cat walks in the snow", "frames": 41},
        {"id": "dog", "prompt": "a dog runs on the beach", "frames": 81, "seed": 3, "steps": 3},
        "{not json",
        {"id": "cat", "prompt": "a second cat"},
        {"id": "x", "prompt": "a bird", "colour": "red"},
        {"id": "bad", "prompt": "a fish", "frames": 40},
        {"id": "../evil", "prompt": "an evil cat", "frames": 41},
        {"prompt": "a row without id"},
    ]
    write_rows(tmp_path / "prompts.jsonl", rows)
    args = ["prompts.jsonl", "--out-dir", "out", "--steps", "2", *SIZE, "--fps", "8"]
    out = tmp_path / "out"
    # a killed run's writer that is still dying when this batch starts (kept), dead before it ends (removed)
    dying = subprocess.Popen(["sleep", "600"])
    out.mkdir()
    (out / f".old.partial-{dying.pid}.mp4").write_bytes(b"x")

    def kill_once_rendering():
        deadline = time.time() + 240  # the batch's own timeout
        while time.time() < deadline and (not (out / MANIFEST).exists()
                                          or '"running"' not in (out / MANIFEST).read_text()):
            time.sleep(0.02)
        dying.kill()
        dying.wait()

    killer = threading.Thread(target=kill_once_rendering, daemon=True)
    killer.start()
    try:
        p = batch(*args, cwd=tmp_path)
    finally:
        dying.kill()  # no-op once killed; never left behind by a failing batch
        killer.join(timeout=5)
    assert p.returncode == 1, p.stderr
    assert f"removed 1 temporary file(s) of writers that died: .old.partial-{dying.pid}.mp4" in p.stdout + p.stderr
    evil = safe_name("../evil")
    videos = {"cat": 41, "dog": 81, evil: 41}
    assert tree(tmp_path) == {"prompts.jsonl", "out", "out/" + MANIFEST} | {
        f"out/{n}{ext}" for n in videos for ext in (".mp4", ".mp4.json")}  # nothing outside DIR, no temporaries
    for name, frames in videos.items():
        info = probe_video(str(out / f"{name}.mp4"))
        assert (info["frames"], info["width"], info["height"], info["fps"]) == (frames, 64, 64, 8)
        side = json.loads((out / f"{name}.mp4.json").read_text())
        assert side["frames"] == frames and side["executor"] == "RayExecutor"
    assert json.loads((out / "dog.mp4.json").read_text())["spec"]["steps"] == 3
    # a reused executor conditions each video on its own prompt (not the previous video's)
    assert json.loads((out / f"{evil}.mp4.json").read_text())["spec"]["prompt"] == "an evil cat"

    entries = manifest_lines(out)
    latest = read_manifest(str(out / MANIFEST))
    assert {i: e["state"] for i, e in latest.items()} == {
        "cat": "done", "dog": "done", "../evil": "done", "x": "failed", "bad": "failed"}
    assert latest["../evil"]["out"] == f"{evil}.mp4"
    assert "colour" in latest["x"]["reason"] and "unknown key" in latest["x"]["reason"]
    assert latest["bad"]["reason"].startswith("frames:") and "4k+1" in latest["bad"]["reason"]
    anonymous = {e["line"]: e["reason"] for e in entries if e["id"] is None}
    assert anonymous[3].startswith("malformed JSON")
    assert anonymous[4] == "duplicate id 'cat' (first on line 1)"
    assert anonymous[8] == "missing id"
    assert set(anonymous) == {3, 4, 8}
    assert "5 failed" in p.stdout and "3 rendered" in p.stdout
    for what in ("line 3: malformed JSON", "line 4: duplicate id 'cat'", "line 5 (id 'x'): unknown key 'colour'",
                 "line 6 (id 'bad'): frames:", "line 8: missing id"):
        assert what in p.stdout, p.stdout
    assert "[longvid batch] 3/8 done, 5 failed, 0 in flight, eta 0s" in p.stderr  # plain lines when not a TTY

    mtimes = {f: os.stat(out / f).st_mtime_ns for f in os.listdir(out) if f != MANIFEST}
    p = batch(*args, cwd=tmp_path, timeout=60)  # the same command: nothing to render, no Ray started
    assert p.returncode == 1, p.stderr
    assert "3 done (0 rendered, 0 resumed, 3 skipped), 5 failed" in p.stdout
    assert "Ray" not in p.stderr
    assert {f: os.stat(out / f).st_mtime_ns for f in os.listdir(out) if f != MANIFEST} == mtimes
    again = manifest_lines(out)[len(entries):]
    assert {e["state"] for e in again} == {"failed"} and len(again) == 5  # the same bad rows, and only them

    # the Python API on the same directory
    res = run_batch(str(tmp_path / "prompts.jsonl"), str(out), {"steps": 2, "height": 64, "width": 64, "fps": 8},
                    progress=False)
    assert (res.rendered, res.skipped, res.done, res.failed, res.exit_code) == (0, 3, 3, 5, 1)
    assert res.states == {"cat": "done", "dog": "done", "../evil": "done", "line 3": "failed",
                          "line 4": "failed", "x": "failed", "bad": "failed", "line 8": "failed"}
    assert {f: os.stat(out / f).st_mtime_ns for f in os.listdir(out) if f != MANIFEST} == mtimes

    # killed after cat's sidecar was written but before its "done" line (and its checkpoint removal):
    # the finished video is taken as done, not rendered again
    with open(out / MANIFEST, "a") as f:
        f.write(json.dumps({"id": "cat", "state": "running", "line": 1}) + "\n")
    (out / "cat.mp4.ckpt").write_bytes(b"stale")
    res = run_batch(str(tmp_path / "prompts.jsonl"), str(out), {"steps": 2, "height": 64, "width": 64, "fps": 8},
                    progress=False)
    assert (res.rendered, res.skipped) == (0, 3)
    assert read_manifest(str(out / MANIFEST))["cat"]["state"] == "done" and not (out / "cat.mp4.ckpt").exists()
    assert {f: os.stat(out / f).st_mtime_ns for f in os.listdir(out) if f != MANIFEST} == mtimes

    # a finished video counts only for the settings it was rendered with
    from dataclasses import replace

    from longvid_dist import RenderSpec
    from longvid_dist.batch import finished

    spec = RenderSpec(prompt="a cat walks in the snow", frames=41, steps=2, height=64, width=64, fps=8.0,
                      out=str(out / "cat.mp4"))
    assert finished(spec) is not None and finished(replace(spec, fps=8, decode_chunk=2)) is not None
    for change in ({"prompt": "a dog"}, {"seed": 1}, {"steps": 3}, {"fps": 16.0}, {"out": str(out / "dog.mp4")}):
        assert finished(replace(spec, **change)) is None, change


# -- crash and resume --------------------------------------------------------------------------

def test_killed_batch_resumes_without_rendering_anything_twice(tmp_path):
    rows = [{"id": "quick", "prompt": "a quick fox", "steps": 4},
            {"id": "slow1", "prompt": "a slow turtle"},
            {"id": "slow2", "prompt": "a red car at night", "seed": 2},
            {"id": "slow3", "prompt": "snow in the forest", "seed": 3}]
    write_rows(tmp_path / "prompts.jsonl", rows)
    args = ["prompts.jsonl", "--out-dir", "out", "--frames", "81", "--steps", "30", *SIZE,
            "--checkpoint-every", "3", "--workers-per-video", "1"]
    out = tmp_path / "out"

    def states() -> dict:
        return {k: v["state"] for k, v in read_manifest(str(out / MANIFEST)).items()}

    def in_flight_ckpts() -> set:
        st = states()
        return {p.name[:-len(".mp4.ckpt")] for p in out.glob("*.mp4.ckpt")} - {k for k, v in st.items() if v == "done"}

    p = subprocess.Popen(LONGVID + ["batch", *args], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 150
        while p.poll() is None and time.time() < deadline:
            if "done" in states().values() and in_flight_ckpts():
                break
            time.sleep(0.02)
        assert p.poll() is None, f"the batch ended before it could be killed:\n{p.stderr.read()}"
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)  # the CLI and the Ray processes it started
        p.wait()
    import torch

    done_before = {k for k, v in states().items() if v == "done"}
    # finished = sidecar written (the video is renamed into place before it), whatever the manifest says
    complete = {r["id"] for r in rows if (out / f"{r['id']}.mp4.json").exists()}
    interrupted = {k: json.loads(torch.load(out / f"{k}.mp4.ckpt", weights_only=True)["meta"])["next_step"]
                   for k in in_flight_ckpts() if k not in complete}
    assert "quick" in done_before and done_before <= complete and interrupted
    finished = {f: os.stat(out / f).st_mtime_ns for k in complete for f in (f"{k}.mp4", f"{k}.mp4.json")}
    n_before = len(manifest_lines(out))

    q = batch(*args, cwd=tmp_path, timeout=240)
    assert q.returncode == 0, q.stderr
    summary = f"4 done ({4 - len(complete)} rendered, {len(interrupted)} resumed, {len(complete)} skipped), 0 failed"
    assert summary in q.stdout, q.stdout
    assert {f: os.stat(out / f).st_mtime_ns for f in finished} == finished  # finished ones untouched
    assert not {e["id"] for e in manifest_lines(out)[n_before:] if e["state"] == "running"} & complete
    for r in rows:
        side = json.loads((out / f"{r['id']}.mp4.json").read_text())
        assert probe_video(str(out / f"{r['id']}.mp4"))["frames"] == side["frames"] == 81
        if r["id"] in interrupted:  # continued from its checkpoint, not from step 0
            assert side["resumed_from_step"] == interrupted[r["id"]] and 0 < side["resumed_from_step"] < 30
        elif r["id"] not in complete:
            assert side["resumed_from_step"] is None
    assert sorted(os.listdir(out)) == sorted([MANIFEST] + [f"{r['id']}{e}" for r in rows for e in (".mp4", ".mp4.json")])
    assert not any(".partial-" in f or ".ckpt" in f for f in os.listdir(out))
