"""Video files through a real ffmpeg process: the streaming writer and the one reader.

Frames are piped to ffmpeg's stdin as they are produced (raw ``rgb24``), so the
pixel memory held in Python does not grow with the length of the video: a
10-minute render needs no more frame memory than a 10-frame one.

Outputs are written under a temporary name in the destination directory and
only renamed onto the requested name once ffmpeg has exited cleanly, so a
crashed or interrupted render never leaves a truncated file behind.

Reading goes through one decoder: :func:`iter_frames` reads a video file or PNG-frame directory
in fixed-size chunks (so memory does not grow with the video's length); :func:`read_frames`,
:func:`check_video` (first frame only) and :func:`probe_video`'s fallback are built on the
same decoder, and every bad input raises one-line :class:`VideoInputError` naming the path.

The ffmpeg binary is the system ``ffmpeg`` when it is on ``PATH``, otherwise the
one shipped with ``imageio-ffmpeg``.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import shutil
import tempfile
import threading
from fractions import Fraction
from types import TracebackType
from typing import IO, Any, Deque, Iterator, Optional, Type

import ffmpeg
import imageio_ffmpeg
import numpy as np

__all__ = [
    "SUPPORTED_OUTPUTS",
    "output_kind",
    "check_output_path",
    "sidecar_path",
    "write_json_atomic",
    "VideoWriter",
    "VideoInputError",
    "check_video",
    "iter_frames",
    "probe_video",
    "read_frames",
]

SUPPORTED_OUTPUTS: str = (
    "'.mp4' (H.264 yuv420p), '.mkv' (lossless FFV1), "
    "or a directory path ending in '/' (numbered PNG frames)"
)

PNG_PATTERN = "frame_%06d.png"
_STDERR_TAIL_BYTES = 8192
_READ_CHUNK = 64  # frames per chunk when read_frames decodes a whole video


def _ffmpeg_exe() -> str:
    """The ffmpeg binary to run: system ``ffmpeg`` if on PATH, else imageio-ffmpeg's."""
    return shutil.which("ffmpeg") or imageio_ffmpeg.get_ffmpeg_exe()


def _is_dir_output(out: str) -> bool:
    return out.endswith("/") or out.endswith(os.sep)


def output_kind(out: str) -> str:
    """Return ``'mp4'``, ``'mkv'`` or ``'png'`` for an output path.

    A path ending in ``'/'`` means a directory of numbered PNG frames; otherwise
    the (case-insensitive) extension decides. Anything else raises ValueError.
    """
    if out and _is_dir_output(out):
        return "png"
    ext = os.path.splitext(out)[1].lower()
    if ext in (".mp4", ".mkv"):
        return ext[1:]
    raise ValueError(f"unsupported output {out!r}: use {SUPPORTED_OUTPUTS}")


def _check_parent_dir(parent: str) -> None:
    if not os.path.exists(parent):
        raise ValueError(f"output directory {parent!r} does not exist")
    if not os.path.isdir(parent):
        raise ValueError(f"output directory {parent!r} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"output directory {parent!r} is not writable")


def check_output_path(out: str) -> None:
    """Validate an output path before any heavy work starts.

    Checks the kind is supported, the parent directory exists, is a directory
    and is writable. For a PNG directory ``'frames/'`` the parent of
    ``frames`` is checked, and ``frames`` itself, if it already exists, must be
    an empty directory. Raises ValueError with one sentence naming the problem.
    """
    kind = output_kind(out)
    target = out.rstrip("/" + os.sep) if kind == "png" else out
    _check_parent_dir(os.path.dirname(target) or ".")
    if kind == "png":
        if os.path.exists(target):
            if not os.path.isdir(target):
                raise ValueError(f"output path {target!r} exists and is not a directory")
            if os.listdir(target):
                raise ValueError(f"output directory {target!r} already exists and is not empty")
    elif os.path.isdir(target):
        raise ValueError(f"output path {target!r} is an existing directory")


def sidecar_path(out: str) -> str:
    """Path of the JSON sidecar for an output: ``'<out>.json'``, or ``'dir.json'`` for ``'dir/'``."""
    return out.rstrip("/" + os.sep) + ".json" if _is_dir_output(out) else out + ".json"


def write_json_atomic(path: str, data: dict) -> None:
    """Write ``data`` as JSON to ``path`` atomically.

    The JSON (indent=2, ``default=str``) goes to a temporary file in the same
    directory, which is fsync'ed and then ``os.replace``'d onto ``path``.
    """
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=False, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _fps_arg(fps: float) -> str:
    """fps as an exact ffmpeg rate string ('12', '30000/1001', ...)."""
    rate = Fraction(fps).limit_denominator(1001)
    return str(rate.numerator) if rate.denominator == 1 else f"{rate.numerator}/{rate.denominator}"


class _StderrTail:
    """Drains a pipe on a background thread, keeping only its last bytes."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self._pipe = pipe
        self._chunks: Deque[bytes] = collections.deque()
        self._size = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        for chunk in iter(lambda: self._pipe.read1(4096), b""):
            with self._lock:
                self._chunks.append(chunk)
                self._size += len(chunk)
                while self._size - len(self._chunks[0]) >= _STDERR_TAIL_BYTES:
                    self._size -= len(self._chunks.popleft())
        self._pipe.close()

    def text(self, timeout: float = 5.0) -> str:
        """The tail of the stream once it has ended (or after ``timeout``)."""
        self._thread.join(timeout)
        with self._lock:
            tail = b"".join(self._chunks)[-_STDERR_TAIL_BYTES:]
        return tail.decode("utf-8", errors="replace").strip()


class VideoWriter:
    """Stream RGB frames to a video file (or PNG directory) through ffmpeg.

    Use as a context manager::

        with VideoWriter("out.mp4", width, height, fps) as w:
            for chunk in chunks:          # uint8 [n, height, width, 3] RGB
                w.write(chunk)

    Frames go straight to ffmpeg's stdin; nothing is accumulated in Python.
    ffmpeg writes to a temporary name next to the output (``.<name>.partial-<pid>``
    keeping the extension, or a temporary directory for PNG). A clean exit
    closes stdin, waits for ffmpeg, checks its return code (RuntimeError with
    the tail of its stderr otherwise) and renames the temporary onto ``out``.
    An exception in the block, or a failure while closing, kills ffmpeg and
    removes the temporary, so nothing is left under either name.

    Encodings: ``.mp4`` -> libx264, yuv420p, crf 18, preset medium, faststart;
    ``.mkv`` -> FFV1 storing RGB losslessly; ``dir/`` -> ``frame_000000.png``, ...
    """

    def __init__(self, out: str, width: int, height: int, fps: float) -> None:
        check_output_path(out)
        self.kind = output_kind(out)
        if int(width) != width or int(height) != height or width <= 0 or height <= 0:
            raise ValueError(f"frame size must be positive integers, got {width}x{height}")
        if self.kind == "mp4" and (width % 2 or height % 2):
            raise ValueError(
                f"'.mp4' (yuv420p) needs an even width and height, got {width}x{height}"
            )
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.out = out.rstrip("/" + os.sep) if self.kind == "png" else out
        self.width, self.height, self.fps = int(width), int(height), float(fps)
        self._frames_written = 0
        self._closed = False

        directory, name = os.path.split(self.out)
        stem, ext = os.path.splitext(name)
        if self.kind == "png":
            self._tmp = os.path.join(directory, f".{name}.partial-{os.getpid()}")
            os.mkdir(self._tmp)
            target = os.path.join(self._tmp, PNG_PATTERN)
        else:
            self._tmp = os.path.join(directory, f".{stem}.partial-{os.getpid()}{ext}")
            target = self._tmp

        rate = _fps_arg(self.fps)
        if self.kind == "mp4":
            opts: dict[str, Any] = dict(
                vcodec="libx264", pix_fmt="yuv420p", r=rate, crf=18,
                preset="medium", movflags="+faststart",
            )
        elif self.kind == "mkv":
            opts = dict(vcodec="ffv1", pix_fmt="bgr0")
        else:
            opts = dict(vcodec="png", pix_fmt="rgb24", format="image2", start_number=0)
        stream = (
            ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24",
                         s=f"{self.width}x{self.height}", framerate=rate)
            .output(target, **opts)
            .global_args("-hide_banner", "-nostats", "-loglevel", "error")
        )
        try:
            self._proc = ffmpeg.run_async(
                stream, cmd=_ffmpeg_exe(), pipe_stdin=True, pipe_stderr=True,
                overwrite_output=True,
            )
        except BaseException:
            self._remove_tmp()
            raise
        self._stderr = _StderrTail(self._proc.stderr)

    @property
    def frames_written(self) -> int:
        """Number of frames handed to ffmpeg so far."""
        return self._frames_written

    def write(self, frames: np.ndarray) -> None:
        """Send ``frames`` (uint8 RGB, shape ``[n, height, width, 3]``) to ffmpeg."""
        if self._closed:
            raise RuntimeError(f"VideoWriter for {self.out!r} is already closed")
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
            got = getattr(frames, "dtype", type(frames).__name__)
            raise ValueError(f"frames must be a uint8 numpy array, got {got}")
        expected = (self.height, self.width, 3)
        if frames.ndim != 4 or frames.shape[1:] != expected:
            raise ValueError(
                f"frames must have shape [n, {self.height}, {self.width}, 3], "
                f"got {list(frames.shape)}"
            )
        if frames.shape[0] == 0:
            return
        try:
            self._proc.stdin.write(np.ascontiguousarray(frames).data)
        except BrokenPipeError:
            code = self._proc.wait()
            self.abort()
            raise RuntimeError(
                f"ffmpeg exited early (code {code}) while writing {self.out!r}:\n"
                f"{self._stderr.text()}"
            ) from None
        self._frames_written += frames.shape[0]

    def close(self) -> None:
        """Finish the video: flush ffmpeg, check its exit code and move the output into place.

        Raises RuntimeError (after removing the temporary) if no frames were
        written or ffmpeg failed.
        """
        if self._closed:
            return
        try:
            if self._frames_written == 0:
                raise RuntimeError(f"no frames were written to {self.out!r}")
            try:
                self._proc.stdin.close()
            except BrokenPipeError:
                pass
            code = self._proc.wait()
            if code != 0:
                raise RuntimeError(
                    f"ffmpeg failed (code {code}) writing {self.out!r}:\n{self._stderr.text()}"
                )
            self._stderr.text()
            if self.kind == "png":
                if os.path.isdir(self.out) and not os.listdir(self.out):
                    os.rmdir(self.out)
                os.rename(self._tmp, self.out)
            else:
                os.replace(self._tmp, self.out)
            self._closed = True
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Kill ffmpeg and delete the temporary output; nothing is left behind."""
        self._closed = True
        if self._proc.poll() is None:
            self._proc.kill()
        try:
            self._proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass
        self._proc.wait()
        self._stderr.text()
        self._remove_tmp()

    def _remove_tmp(self) -> None:
        if os.path.isdir(self._tmp):
            shutil.rmtree(self._tmp, ignore_errors=True)
        elif os.path.lexists(self._tmp):
            os.remove(self._tmp)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        # A writer dropped without close() must not leave ffmpeg or a partial file.
        if not getattr(self, "_closed", True) and hasattr(self, "_proc"):
            try:
                self.abort()
            except Exception:
                pass


class VideoInputError(ValueError):
    """A path is not a readable video or PNG-frame directory; the message is one line,
    ``'<path>: <what is wrong>'``."""


def _input_args(path: str) -> tuple[str, list[str]]:
    """ffmpeg input (path, extra input params): a PNG directory becomes an image2 pattern."""
    if os.path.isdir(path):
        return os.path.join(path, PNG_PATTERN), ["-f", "image2", "-start_number", "0"]
    return path, []


def _check_input(path: str) -> None:
    """Raise VideoInputError unless ``path`` exists and is readable (a directory: holds frame 0)."""
    if not os.path.exists(path):
        raise VideoInputError(f"{path}: no such file or directory")
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, PNG_PATTERN % 0)):
            raise VideoInputError(f"{path}: directory has no {PNG_PATTERN % 0} (not a PNG-frame video directory)")
    elif not os.access(path, os.R_OK):
        raise VideoInputError(f"{path}: not readable (permission denied)")


def _ffmpeg_reason(err: BaseException) -> str:
    """The last line of an imageio-ffmpeg error: ffmpeg's own reason, without the 'Error opening' prefix."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    last = lines[-1] if lines else type(err).__name__
    for prefix in ("Error opening input files: ", "Error opening input file "):
        if last.startswith(prefix):
            last = last[len(prefix):]
    return last


def _decode(path: str) -> Iterator[Any]:
    """The one ffmpeg reader: yields ``{'width', 'height', 'fps'}``, then each frame as uint8 RGB [H, W, 3].

    ``fps`` is the container's rate, 0.0 when it has none (image2 reports its default 25 for a
    PNG directory). A missing, unreadable or undecodable path, or one with no frames, raises
    :class:`VideoInputError` at the first ``next()``, before anything is yielded. Closing the
    generator stops ffmpeg.
    """
    _check_input(path)
    src, input_params = _input_args(path)
    gen = imageio_ffmpeg.read_frames(src, pix_fmt="rgb24", input_params=input_params)
    try:
        try:
            meta = next(gen)
            first = next(gen)
        except StopIteration:
            raise VideoInputError(f"{path}: not a video (no decodable frames)") from None
        except (OSError, RuntimeError) as e:
            raise VideoInputError(f"{path}: not a readable video ({_ffmpeg_reason(e)})") from None
        width, height = meta["size"]
        yield {"width": int(width), "height": int(height), "fps": float(meta.get("fps") or 0)}
        for b in itertools.chain((first,), gen):
            yield np.frombuffer(b, np.uint8).reshape(height, width, 3)
    finally:
        gen.close()


def check_video(path: str) -> dict:
    """Check cheaply that ``path`` is a decodable video or PNG-frame directory.

    Opens it with ffmpeg and decodes the first frame only. Returns ``{'width', 'height',
    'fps'}``, ``fps`` ``None`` for a PNG directory (image2 carries no frame rate) or a container
    without one. Raises :class:`VideoInputError` (``'<path>: <reason>'``) otherwise.
    """
    with contextlib.closing(_decode(path)) as dec:
        info = next(dec)
    return {**info, "fps": None if os.path.isdir(path) else info["fps"] or None}


def iter_frames(path: str, chunk: int) -> Iterator[np.ndarray]:
    """Decode a video file or PNG directory with ffmpeg, yielding uint8 RGB ``[n, H, W, 3]`` chunks.

    Every chunk has ``chunk`` frames except possibly the last, so the frame memory held does not
    grow with the video's length. Bad input raises :class:`VideoInputError` at the first
    iteration.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1 frame, got {chunk}")
    with contextlib.closing(_decode(path)) as dec:
        next(dec)
        buf: list[np.ndarray] = []
        for frame in dec:
            buf.append(frame)
            if len(buf) == chunk:
                yield np.stack(buf)
                buf = []
        if buf:
            yield np.stack(buf)


def _parse_rate(rate: str) -> float:
    num, _, den = rate.partition("/")
    return float(num) / float(den or 1) if float(den or 1) else 0.0


def _probe_ffprobe(path: str, ffprobe: str) -> dict:
    """probe_video via ffprobe (frames counted by decoding, ``-count_frames``)."""
    _check_input(path)
    src, input_params = _input_args(path)
    if input_params:
        info = ffmpeg.probe(src, cmd=ffprobe, f="image2", start_number=0,
                            count_frames=None, select_streams="v:0")
    else:
        info = ffmpeg.probe(src, cmd=ffprobe, count_frames=None, select_streams="v:0")
    stream = info["streams"][0]
    return {
        "frames": int(stream["nb_read_frames"]),
        "width": int(stream["width"]),
        "height": int(stream["height"]),
        "fps": _parse_rate(stream.get("avg_frame_rate", "0/0"))
        or _parse_rate(stream.get("r_frame_rate", "0/0")),
    }


def _probe_decode(path: str) -> dict:
    """probe_video without ffprobe: decode the whole video and count the frames."""
    with contextlib.closing(_decode(path)) as dec:
        info = next(dec)
        frames = sum(1 for _ in dec)
    return {"frames": frames, **info}


def probe_video(path: str) -> dict:
    """Return ``{'frames', 'width', 'height', 'fps'}`` for a video file (or PNG directory).

    Uses ``ffprobe -count_frames`` when ffprobe is on PATH, else decodes the
    whole video with imageio-ffmpeg and counts frames. For a PNG directory the
    fps is ffmpeg's image2 default (25) and carries no meaning.
    """
    ffprobe = shutil.which("ffprobe")
    return _probe_ffprobe(path, ffprobe) if ffprobe else _probe_decode(path)


def read_frames(path: str) -> np.ndarray:
    """Decode a whole video file or PNG directory to uint8 RGB ``[n, H, W, 3]`` (see :func:`iter_frames`)."""
    return np.concatenate(list(iter_frames(path, _READ_CHUNK)))
