"""``longvid eval`` metrics on synthetic videos written and decoded by real ffmpeg (lossless .mkv)."""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np
import pytest
import torch

from longvid_dist.eval.cli import format_table, main_eval
from longvid_dist.eval.flow import FLOW_MAX_SIDE, motion_magnitude, optical_flow
from longvid_dist.eval.frames import _as_float_frames, _luma
from longvid_dist.eval.metrics import CHUNK_FRAMES, evaluate, flicker, temporal_consistency
from longvid_dist.eval.vbench import run_vbench, vbench_cache_dir, vbench_status
from longvid_dist.io.video import VideoWriter, read_frames

H = W = 64
SHIFT = (1, 2)  # (dy, dx) pixels per frame
TRUE_SPEED = math.hypot(*SHIFT)  # sqrt(5)


def texture(h: int = H, w: int = W, seed: int = 0, sigma: float = 2.0, tint=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Smooth periodic random texture: white noise blurred by a Gaussian (circularly, via FFT)."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((h, w, 3))
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    gauss = np.exp(-2 * (math.pi * sigma) ** 2 * (fx ** 2 + fy ** 2))[..., None]
    x = np.real(np.fft.ifft2(np.fft.fft2(noise, axes=(0, 1)) * gauss, axes=(0, 1)))
    x = (x - x.mean()) / x.std()
    return np.clip((128 + 45 * x) * np.asarray(tint), 0, 255).astype(np.uint8)


def translating(n: int, h: int = H, w: int = W) -> np.ndarray:
    tex = texture(h, w)
    return np.stack([np.roll(tex, (t * SHIFT[0], t * SHIFT[1]), axis=(0, 1)) for t in range(n)])


def write(path, frames: np.ndarray, fps: float = 16.0) -> str:
    path = str(path)
    with VideoWriter(path, frames.shape[2], frames.shape[1], fps) as w:
        w.write(frames)
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("eval")
    tex = texture()
    n = 33
    alt = np.stack([np.clip(tex.astype(int) + (60 if t % 2 else -60), 0, 255).astype(np.uint8) for t in range(n)])
    smooth = np.stack([np.clip(tex.astype(int) - 16 + t, 0, 255).astype(np.uint8) for t in range(n)])
    other = texture(seed=1, tint=(1.3, 0.8, 0.6))
    abrupt = np.stack([tex if t < n // 2 else other for t in range(n)])
    return {
        "static": write(d / "static.mkv", np.repeat(tex[None], n, 0)),
        "translate": write(d / "translate.mkv", translating(121)),
        "alternating": write(d / "alternating.mkv", alt),
        "smooth": write(d / "smooth.mkv", smooth),
        "abrupt": write(d / "abrupt.mkv", abrupt),
    }


@pytest.fixture(scope="module")
def results(videos) -> dict[str, dict]:
    return {name: evaluate(path) for name, path in videos.items()}


def test_static_video(results):
    r = results["static"]
    assert r["frames"] == 33 and (r["width"], r["height"]) == (W, H) and r["fps"] == pytest.approx(16.0)
    assert r["flicker_mad"] == 0.0 and r["temporal_flickering"] == 1.0
    assert r["motion"] < 0.01
    assert r["consistency"] == pytest.approx(1.0, abs=1e-5)
    assert r["consistency_first"] == pytest.approx(1.0, abs=1e-5)


def test_translation_flow_within_15_percent(results):
    r = results["translate"]
    assert r["frames"] == 121
    assert abs(r["motion"] - TRUE_SPEED) / TRUE_SPEED < 0.15, r["motion"]
    assert r["flicker_mad"] > 0.01  # content moves, so frames differ


def test_flow_direction_and_magnitude():
    g = _luma(_as_float_frames(translating(2)))
    flow = optical_flow(g[:1], g[1:])
    dx, dy = (float(v) for v in flow[0, :, 8:-8, 8:-8].mean(dim=(1, 2)))
    assert dx == pytest.approx(SHIFT[1], rel=0.05) and dy == pytest.approx(SHIFT[0], rel=0.05)


def test_motion_on_large_frames_is_rescaled():
    """Frames wider than FLOW_MAX_SIDE are downsampled for flow; the magnitude is in original pixels."""
    frames = translating(5, 288, 512)
    assert max(frames.shape[1:3]) > FLOW_MAX_SIDE
    m = motion_magnitude(frames)
    assert abs(m - TRUE_SPEED) / TRUE_SPEED < 0.15, m


def test_motion_speed_121_frames_one_core():
    frames = translating(121)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        motion_magnitude(frames[:3])  # warm-up
        t0 = time.process_time()
        motion_magnitude(frames)
        cpu = time.process_time() - t0
    finally:
        torch.set_num_threads(threads)
    assert cpu < 2.0, f"motion on 121 64x64 frames took {cpu:.2f}s CPU"


def test_flicker_alternating_vs_smooth(results):
    alt, smooth = results["alternating"], results["smooth"]
    assert alt["flicker_mad"] > 0.3
    assert alt["flicker_mad"] > 10 * smooth["flicker_mad"]
    assert alt["temporal_flickering"] < smooth["temporal_flickering"]
    assert smooth["flicker_mad"] == pytest.approx(1 / 255, rel=0.05)
    assert alt["temporal_flickering"] == pytest.approx(1 - alt["flicker_mad"])
    # flow runs on per-frame standardized luma: global brightness changes are not motion
    assert smooth["motion"] < 0.05 and alt["motion"] < 1.0


def test_abrupt_change_lowers_first_frame_consistency(results):
    static, abrupt = results["static"], results["abrupt"]
    assert abrupt["consistency_first"] < static["consistency_first"] - 0.2
    # one jump among 32 steps: consecutive consistency stays much higher than long-range
    assert abrupt["consistency"] > abrupt["consistency_first"]


def test_array_functions_match_streaming(videos, results):
    """evaluate() streams in CHUNK_FRAMES chunks; pairs across chunk borders must be counted."""
    frames = read_frames(videos["translate"])
    assert frames.shape[0] > CHUNK_FRAMES
    r = results["translate"]
    fl, tc = flicker(frames), temporal_consistency(frames)
    assert r["flicker_mad"] == pytest.approx(fl["flicker_mad"], rel=1e-5)
    assert r["motion"] == pytest.approx(motion_magnitude(frames), rel=1e-4)
    assert r["consistency"] == pytest.approx(tc["consistency"], rel=1e-5)
    assert r["consistency_first"] == pytest.approx(tc["consistency_first"], rel=1e-5)


def test_single_frame_and_png_dir(tmp_path):
    d = write(str(tmp_path / "pngs") + "/", translating(3))
    r = evaluate(d)
    assert r["fps"] is None and r["frames"] == 3
    one = evaluate(write(tmp_path / "one.mkv", texture()[None]))
    assert one["frames"] == 1 and one["motion"] is None and one["flicker_mad"] is None
    assert "-" in format_table([one])


def test_format_table_aligned(results):
    table = format_table([results["static"], results["translate"]])
    lines = table.splitlines()
    assert len(lines) == 3 and lines[0].startswith("video")
    assert len({len(line) for line in lines}) == 1  # right-aligned numeric columns line up


def test_main_eval_table_and_json(videos, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    code = main_eval([videos["static"], videos["translate"], "--json", str(out)])
    captured = capsys.readouterr()
    assert code == 0
    assert videos["static"] in captured.out and videos["translate"] in captured.out
    assert "motion" in captured.out.splitlines()[0]
    data = json.loads(out.read_text())
    assert set(data) == {"videos", "metrics", "vbench"}
    assert [v["path"] for v in data["videos"]] == [videos["static"], videos["translate"]]
    keys = {"path", "frames", "width", "height", "fps", "flicker_mad", "temporal_flickering", "motion",
            "consistency", "consistency_first"}
    assert all(set(v) == keys for v in data["videos"])
    assert set(data["metrics"]) == keys - {"path", "frames", "width", "height", "fps"}
    assert data["vbench"]["requested"] is False and "available" in data["vbench"] and data["vbench"]["reason"]
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_vbench_unavailable_still_reports(videos, tmp_path, monkeypatch, capsys):
    # an empty cache dir: VBench is unavailable whether or not the package is installed
    monkeypatch.setenv("VBENCH_CACHE_DIR", str(tmp_path / "empty-vbench-cache"))
    out = tmp_path / "m.json"
    code = main_eval([videos["static"], "--vbench", "--json", str(out)])
    captured = capsys.readouterr()
    assert code == 0
    assert videos["static"] in captured.out  # the model-free table is printed
    assert "VBench not run" in captured.err
    assert str(tmp_path / "empty-vbench-cache") in captured.err
    import importlib.util

    if importlib.util.find_spec("vbench") is None:
        assert "pip install vbench" in captured.err
    else:
        assert "missing" in captured.err
    vb = json.loads(out.read_text())["vbench"]
    assert vb["requested"] is True and vb["available"] is False and vb["reason"] in captured.err


def test_missing_path_exits_2_before_computing(videos, tmp_path, capsys):
    missing = str(tmp_path / "nope.mp4")
    out = tmp_path / "m.json"
    code = main_eval([videos["static"], missing, "--json", str(out)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""  # nothing computed or printed
    assert captured.err.count("\n") == 1
    assert captured.err == f"longvid eval: error: {missing}: no such file or directory\n"
    assert not out.exists()


def test_not_a_video_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video\n")
    empty_dir = tmp_path / "frames"
    empty_dir.mkdir()
    for path in (str(bad), str(empty_dir)):
        assert main_eval([path]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"longvid eval: error: {path}: ")


def test_parser_errors_are_one_line(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main_eval([])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("longvid eval: error: ")
    assert main_eval([str(tmp_path), "--json", str(tmp_path / "no" / "x.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("longvid eval: error: --json: ")


def test_vbench_status_reason_lists_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("VBENCH_CACHE_DIR", str(tmp_path))
    ok, reason = vbench_status()
    assert ok is False and str(tmp_path) in reason
    assert "amt-s.pth" in reason and "musiq_spaq_ckpt" in reason and "ViT-B-32.pt" in reason
    assert vbench_cache_dir() == str(tmp_path)
    with pytest.raises(RuntimeError):
        run_vbench(["x.mp4"])


def test_longvid_eval_dispatches_to_the_eval_package(videos, capsys):
    from longvid_dist.cli import main as longvid_main

    assert longvid_main(["eval", videos["static"]]) == 0
    assert videos["static"] in capsys.readouterr().out
