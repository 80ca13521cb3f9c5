"""Know before, see after: ``--dry-run`` plans, the memory pre-flight, bounds on seeds and
numbers, prompt-length warnings, previews and ``eval --plot`` -- through the real CLI.

Wall-clock estimates are never asserted; only their presence and structure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

_SCRIPT = Path(sys.executable).with_name("longvid")
LONGVID = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "longvid_dist.cli"]


def run(args, cwd, **env) -> subprocess.CompletedProcess:
    e = {**os.environ, "COLUMNS": "80", "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(LONGVID + list(map(str, args)), cwd=cwd, env=e, capture_output=True, text=True,
                          timeout=300)


def test_dry_run_prints_the_plan_without_loading_weights(tmp_path):
    cache = tmp_path / "cache"  # a fresh model cache: loading the tiny model would build it here
    r = run(["render", "--prompt", "a cat", "--dry-run", "--frames", "961", "--recipe", "glc", "--workers", "8",
             "--out", tmp_path / "o.mp4"], tmp_path, LONGVID_CACHE=str(cache))
    assert r.returncode == 0, r.stderr
    for what in ("latent       16 x 241 x 8 x 8", "windows", "forwards", "per step through the coordinator",
                 "peak per worker", "window activations", "decode chunk", "wall time", "8 Ray worker(s)"):
        assert what in r.stdout, what
    assert not cache.exists() and not (tmp_path / "o.mp4").exists()
    assert sorted(os.listdir(tmp_path)) == []


def test_dry_run_json_counts_windows_of_the_planner(tmp_path):
    r = run(["render", "--prompt", "a cat", "--dry-run", "--json", "--frames", "121", "--recipe", "sliding",
             "--steps", "3", "--guidance", "1"], tmp_path)
    assert r.returncode == 0, r.stderr
    p = json.loads(r.stdout)
    F, L = 31, 21
    n = len([k for k in range(F) if k * (L // 2) < F - L]) + 1  # as tests/test_cli.py counts sliding windows
    assert p["latent_shape"] == [16, 31, 8, 8] and p["windows_per_step"] == [n, n]
    assert p["windows_total"] == 3 * n and p["forwards_total"] == 3 * n  # guidance off: one forward each
    assert p["bytes_per_step"] == 0 and p["workers"] == 1 and p["fits"] is True
    assert p["seconds"]["total"] > 0 and set(p["worker_memory"]) == {"weights", "latent", "activations", "decode"}
    r8 = json.loads(run(["render", "--prompt", "a cat", "--dry-run", "--json", "--frames", "121", "--recipe",
                         "sliding", "--steps", "3", "--workers", "2"], tmp_path).stdout)
    assert r8["bytes_per_step"] > 0 and r8["forwards_total"] == 2 * 3 * n


@pytest.mark.parametrize("args,flag", [
    (["--frames", "400001", "--height", "16000", "--width", "16000"], "--frames"),
    (["--frames", "121", "--height", "4096", "--width", "4096"], None),
])
def test_impossible_request_is_refused_before_loading_with_both_numbers(tmp_path, args, flag):
    cache = tmp_path / "cache"
    out = tmp_path / "out"
    out.mkdir()
    r = run(["render", "--prompt", "a cat", "--steps", "1", "--out", out / "o.mp4", *args], tmp_path,
            LONGVID_CACHE=str(cache), LONGVID_DEVICE_MEMORY="1GiB")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "does not fit in memory" in lines[0], r.stderr
    assert "needs ~" in lines[0] and "available: 1.0 GiB" in lines[0]
    assert "would fit:" in lines[0]
    if flag:
        assert lines[0].startswith(f"longvid render: error: {flag}:")
    assert not cache.exists() and os.listdir(out) == []


def test_preflight_suggests_what_fits(tmp_path):
    # decode of 16 latent frames at 1024x1024 dominates: a smaller decode chunk fits
    r = run(["render", "--prompt", "a cat", "--dry-run", "--json", "--frames", "121", "--height", "1024", "--width",
             "1024", "--decode-chunk", "31"], tmp_path, LONGVID_DEVICE_MEMORY="3GiB")
    p = json.loads(r.stdout)
    assert p["fits"] is False and "--decode-chunk 1" in p["suggestions"]
    r = run(["render", "--prompt", "a cat", "--frames", "121", "--height", "1024", "--width", "1024",
             "--decode-chunk", "31", "--out", tmp_path / "o.mp4"], tmp_path, LONGVID_DEVICE_MEMORY="3GiB")
    assert r.returncode == 2 and r.stderr.startswith("longvid render: error: --decode-chunk:")
    assert "--decode-chunk 1" in r.stderr


@pytest.mark.parametrize("flag,value,bound", [
    ("--seed", "123456789012345678901", "18446744073709551615"),
    ("--seed", "-1", "from 0"),
    ("--frames", str(2**40 + 1), "2147483647"),
    ("--steps", str(10**30), "2147483647"),
    ("--decode-chunk", str(2**63), "2147483647"),
    ("--checkpoint-every", str(2**64), "2147483647"),
    ("--guidance", "1e300", "1e6"),
    ("--fps", "inf", "1000"),
    ("--workers", str(2**70), "2147483647"),
])
def test_numbers_out_of_range_are_one_line(tmp_path, flag, value, bound):
    r = run(["render", "--prompt", "a cat", "--out", tmp_path / "o.mp4", flag, value], tmp_path,
            LONGVID_CACHE=str(tmp_path / "cache"))
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"longvid render: error: {flag}:") and bound in lines[0], r.stderr
    assert "Overflow" not in r.stderr and len(lines[0]) < 300
    assert sorted(os.listdir(tmp_path)) == []


def test_long_prompt_is_warned_with_token_counts(tmp_path):
    prompt = "a red car drives in the city at night " * 300
    r = run(["render", "--prompt", prompt, "--dry-run", "--json"], tmp_path)
    p = json.loads(r.stdout)
    assert p["prompt_tokens"] > 512 and p["warnings"]
    assert f"{p['prompt_tokens']} tokens" in p["warnings"][0] and "first 512" in p["warnings"][0]


def test_render_with_preview_and_long_prompt_warning(tmp_path):
    prompt = "a cat on the beach " * 200
    r = run(["render", "--prompt", prompt, "--frames", "17", "--steps", "1", "--height", "64", "--width", "64",
             "--recipe", "direct", "--preview", "--out", tmp_path / "o.mp4", "--quiet"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "warning: --prompt:" in r.stderr and "tokens" in r.stderr
    sheet = tmp_path / "o.mp4.preview.png"
    assert sheet.exists()
    from PIL import Image

    img = Image.open(sheet)
    assert img.size[0] > 8 * 150 and img.size[1] > 160  # 8 frames with their numbers under them
    from longvid_dist.io.preview import pick_frames

    assert pick_frames(17) == [0, 2, 5, 7, 9, 11, 14, 16] and pick_frames(3) == [0, 1, 2]


def test_batch_dry_run_per_row_and_total(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps(r) for r in [
        {"id": "a", "prompt": "a cat", "frames": 121},
        {"id": "b", "prompt": "a dog", "frames": 40},
        {"id": "c", "prompt": "a bird", "frames": 241, "steps": 4},
    ]) + "\n")
    r = run(["batch", rows, "--out-dir", tmp_path / "out", "--dry-run", "--json", "--workers-per-video", "2"],
            tmp_path)
    assert r.returncode == 0, r.stderr
    bp = json.loads(r.stdout)
    assert [o["valid"] for o in bp["rows"]] == [True, False, True]
    assert "4k+1" in bp["rows"][1]["reason"]
    assert bp["total"]["device_hours"] == pytest.approx(sum(o["device_hours"] for o in bp["rows"] if o["valid"]))
    assert bp["rows"][0]["workers"] == 2
    assert not (tmp_path / "out").exists()  # nothing created
    text = run(["batch", rows, "--out-dir", tmp_path / "out", "--dry-run"], tmp_path)
    assert text.returncode == 0 and "total: 2 of 3 rows valid" in text.stdout and "hours" in text.stdout


def test_json_without_dry_run_is_refused(tmp_path):
    r = run(["render", "--prompt", "a cat", "--json", "--out", tmp_path / "o.mp4"], tmp_path)
    assert r.returncode == 2 and "--dry-run" in r.stderr and len(r.stderr.splitlines()) == 1


def test_calibrate_measures_a_forward_and_is_used(tmp_path):
    cache = tmp_path / "cache"
    r = run(["render", "--prompt", "a cat", "--dry-run", "--json", "--calibrate"], tmp_path, LONGVID_CACHE=str(cache))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["calibration"] > 0
    again = run(["render", "--prompt", "a cat", "--dry-run", "--json"], tmp_path, LONGVID_CACHE=str(cache))
    assert json.loads(again.stdout)["calibration"] == json.loads(r.stdout)["calibration"]


def test_eval_plot_draws_one_figure_for_several_videos(tmp_path):
    import numpy as np

    from longvid_dist.io.video import VideoWriter

    paths = []
    for k in range(2):
        p = str(tmp_path / f"v{k}.mkv")
        rng = np.random.default_rng(k)
        with VideoWriter(p, 32, 32, 8) as w:
            w.write((rng.random((12, 32, 32, 3)) * 255).astype(np.uint8))
        paths.append(p)
    out = tmp_path / "plot.png"
    r = run(["eval", *paths, "--plot", out], tmp_path)
    assert r.returncode == 0, r.stderr
    from PIL import Image

    assert Image.open(out).size[0] >= 600
    bad = run(["eval", *paths, "--plot", tmp_path / "plot.jpg"], tmp_path)
    assert bad.returncode == 2 and "--plot" in bad.stderr
    from longvid_dist.eval.metrics import evaluate

    s = evaluate(paths[0], series=True)
    assert len(s["series"]["flicker"]) == 11 and np.mean(s["series"]["flicker"]) == pytest.approx(s["flicker_mad"])


def test_ray_job_entry_points_dry_run_without_a_cluster(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_ADDRESS": "127.0.0.1:1",  # nothing listens there
           "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "jobs.render", "--prompt", "a cat", "--dry-run", "--json",
                        "--frames", "961", "--workers", "8"], cwd=repo, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["workers"] == 8
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"id": "a", "prompt": "a cat"}) + "\n")
    r = subprocess.run([sys.executable, "-m", "jobs.batch", str(rows), "--out-dir", str(tmp_path / "o"), "--dry-run"],
                       cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "total: 1 of 1 rows valid" in r.stdout and not (tmp_path / "o").exists()
