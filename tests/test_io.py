"""Tests for longvid_dist.io: real ffmpeg round trips, no mocks."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from longvid_dist.io import (
    SUPPORTED_OUTPUTS,
    VideoInputError,
    VideoWriter,
    check_output_path,
    iter_frames,
    output_kind,
    probe_video,
    read_frames,
    sidecar_path,
    write_json_atomic,
)
from longvid_dist.io import video as video_mod

W, H, FPS = 64, 48, 12


def make_frames(n: int, width: int = W, height: int = H) -> np.ndarray:
    """Deterministic RGB frames: colour gradients plus a moving white square."""
    y, x = np.mgrid[0:height, 0:width]
    frames = np.empty((n, height, width, 3), np.uint8)
    for t in range(n):
        frames[t, ..., 0] = (x * 255 // (width - 1) + 3 * t) % 256
        frames[t, ..., 1] = y * 255 // (height - 1)
        frames[t, ..., 2] = (x + y + 7 * t) % 256
        sx, sy = (4 * t) % (width - 8), (2 * t) % (height - 8)
        frames[t, sy:sy + 8, sx:sx + 8] = 255
    return frames


def write_in_chunks(out: str, frames: np.ndarray, sizes: list[int]) -> VideoWriter:
    assert sum(sizes) == len(frames)
    with VideoWriter(out, frames.shape[2], frames.shape[1], FPS) as writer:
        start = 0
        for size in sizes:
            writer.write(frames[start:start + size])
            start += size
            assert writer.frames_written == start
    return writer


def test_mp4_streamed_in_chunks(tmp_path):
    frames = make_frames(37)
    out = str(tmp_path / "clip.mp4")
    writer = write_in_chunks(out, frames, [1, 5, 10, 7, 14])
    assert writer.frames_written == 37
    assert os.listdir(tmp_path) == ["clip.mp4"]  # no partial file left

    info = probe_video(out)
    assert info["frames"] == 37
    assert (info["width"], info["height"]) == (W, H)
    assert info["fps"] == pytest.approx(FPS)

    decoded = read_frames(out)  # lossy, but channels must be in RGB order
    assert decoded.shape == frames.shape
    assert np.abs(decoded.astype(int) - frames.astype(int)).mean() < 8


def test_mkv_ffv1_is_bit_exact(tmp_path):
    frames = make_frames(20)
    out = str(tmp_path / "clip.MKV")
    write_in_chunks(out, frames, [3, 17])
    assert os.listdir(tmp_path) == ["clip.MKV"]
    assert np.array_equal(read_frames(out), frames)
    assert probe_video(out)["frames"] == 20


@pytest.mark.parametrize("pre_create", [False, True])
def test_png_directory_is_numbered_and_bit_exact(tmp_path, pre_create):
    frames = make_frames(12)
    out_dir = tmp_path / "frames"
    if pre_create:
        out_dir.mkdir()  # an existing empty directory is fine
    write_in_chunks(f"{out_dir}/", frames, [5, 7])
    assert os.listdir(tmp_path) == ["frames"]
    assert sorted(os.listdir(out_dir)) == [f"frame_{i:06d}.png" for i in range(12)]
    assert np.array_equal(read_frames(str(out_dir)), frames)


@pytest.mark.parametrize("name", ["clip.mkv", "frames/"])
def test_iter_frames_chunks_make_read_frames(tmp_path, name):
    """The chunked reader read_frames is built on: fixed-size chunks (last one short), same frames."""
    frames = make_frames(23)
    out = f"{tmp_path}/{name}"
    write_in_chunks(out, frames, [23])
    chunks = list(iter_frames(out, 5))
    assert [len(c) for c in chunks] == [5, 5, 5, 5, 3]
    assert all(c.dtype == np.uint8 and c.shape[1:] == (H, W, 3) for c in chunks)
    assert np.array_equal(np.concatenate(chunks), read_frames(out))
    assert np.array_equal(np.concatenate(chunks), frames)
    assert [len(c) for c in iter_frames(out, 100)] == [23]
    missing = str(tmp_path / "nope.mkv")
    with pytest.raises(VideoInputError, match="no such file") as err:
        next(iter_frames(missing, 5))
    assert str(err.value) == f"{missing}: no such file or directory"


@pytest.mark.parametrize("name", ["clip.mp4", "clip.mkv", "frames/"])
def test_exception_in_block_leaves_nothing(tmp_path, name):
    out = f"{tmp_path}/{name}"
    with pytest.raises(KeyError, match="boom"):
        with VideoWriter(out, W, H, FPS) as writer:
            writer.write(make_frames(9))
            raise KeyError("boom")
    assert os.listdir(tmp_path) == []


def test_ffmpeg_failure_raises_with_stderr_and_cleans_up(tmp_path):
    writer = VideoWriter(f"{tmp_path}/frames/", W, H, FPS)
    shutil.rmtree(writer._tmp)  # make the real ffmpeg fail to write its PNGs
    with pytest.raises(RuntimeError, match="ffmpeg") as err:
        with writer:
            for _ in range(20):
                writer.write(make_frames(8))
    assert "frame_000000.png" in str(err.value)  # ffmpeg's own message is surfaced
    assert writer._proc.poll() is not None
    assert os.listdir(tmp_path) == []


def test_closing_without_frames_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="no frames"):
        with VideoWriter(str(tmp_path / "clip.mp4"), W, H, FPS):
            pass
    assert os.listdir(tmp_path) == []


def test_write_validates_frames(tmp_path):
    with pytest.raises(RuntimeError, match="no frames"):
        with VideoWriter(str(tmp_path / "clip.mkv"), W, H, FPS) as writer:
            with pytest.raises(ValueError, match="uint8"):
                writer.write(make_frames(2).astype(np.float32))
            with pytest.raises(ValueError, match="shape"):
                writer.write(make_frames(2, width=W + 16))
            with pytest.raises(ValueError, match="shape"):
                writer.write(make_frames(1)[0])
            assert writer.frames_written == 0
    assert os.listdir(tmp_path) == []


def test_odd_size_mp4_rejected(tmp_path):
    with pytest.raises(ValueError, match="even"):
        VideoWriter(str(tmp_path / "clip.mp4"), 63, 48, FPS)
    assert os.listdir(tmp_path) == []


def test_output_kind():
    assert output_kind("a/b.mp4") == "mp4"
    assert output_kind("B.MKV") == "mkv"
    assert output_kind("frames/") == "png"
    for bad in ["clip.avi", "clip", "frames", ""]:
        with pytest.raises(ValueError, match="unsupported output") as err:
            output_kind(bad)
        assert SUPPORTED_OUTPUTS in str(err.value)


def test_check_output_path_accepts_good_paths(tmp_path):
    check_output_path(str(tmp_path / "clip.mp4"))
    check_output_path(f"{tmp_path}/new_frames/")
    (tmp_path / "empty").mkdir()
    check_output_path(f"{tmp_path}/empty/")


def test_check_output_path_errors(tmp_path):
    with pytest.raises(ValueError, match="unsupported output"):
        check_output_path(str(tmp_path / "clip.avi"))
    with pytest.raises(ValueError, match="does not exist"):
        check_output_path(str(tmp_path / "nope" / "clip.mp4"))
    with pytest.raises(ValueError, match="does not exist"):
        check_output_path(f"{tmp_path}/nope/frames/")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        check_output_path(str(tmp_path / "file" / "clip.mp4"))
    with pytest.raises(ValueError, match="not a directory"):
        check_output_path(f"{tmp_path}/file/")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.png").write_bytes(b"")
    with pytest.raises(ValueError, match="not empty"):
        check_output_path(f"{tmp_path}/full/")
    with pytest.raises(ValueError, match="not empty"):
        VideoWriter(f"{tmp_path}/full/", W, H, FPS)


def test_check_output_path_non_writable(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.geteuid() == 0 and os.access(locked, os.W_OK | os.X_OK):
            pytest.skip("running as root: os.access reports every directory writable")
        with pytest.raises(ValueError, match="not writable"):
            check_output_path(str(locked / "clip.mp4"))
    finally:
        locked.chmod(0o700)


def test_sidecar_path():
    assert sidecar_path("out/clip.mp4") == "out/clip.mp4.json"
    assert sidecar_path("out/frames/") == "out/frames.json"


def test_write_json_atomic(tmp_path):
    path = str(tmp_path / "clip.mp4.json")
    data = {"frames": 37, "prompt": "a cat", "nested": {"fps": 12.0}, "path": tmp_path}
    write_json_atomic(path, data)
    write_json_atomic(path, data)  # overwriting is fine
    assert os.listdir(tmp_path) == ["clip.mp4.json"]
    with open(path) as f:
        assert json.load(f) == {**data, "path": str(tmp_path)}


def test_probe_decode_fallback(tmp_path):
    """The no-ffprobe path, called directly whether or not ffprobe is installed."""
    frames = make_frames(23)
    out = str(tmp_path / "clip.mp4")
    write_in_chunks(out, frames, [23])
    info = video_mod._probe_decode(out)
    assert info == {"frames": 23, "width": W, "height": H, "fps": pytest.approx(FPS)}

    write_in_chunks(f"{tmp_path}/frames/", frames[:4], [4])
    assert video_mod._probe_decode(str(tmp_path / "frames"))["frames"] == 4


@pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffprobe not on PATH")
def test_probe_ffprobe(tmp_path):
    out = str(tmp_path / "clip.mkv")
    write_in_chunks(out, make_frames(11), [11])
    info = video_mod._probe_ffprobe(out, shutil.which("ffprobe"))
    assert info == {"frames": 11, "width": W, "height": H, "fps": pytest.approx(FPS)}
