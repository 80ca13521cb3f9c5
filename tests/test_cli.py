"""The real ``longvid`` console script, run as a subprocess: renders end to end through
ffmpeg, listings, help, and fail-fast refusal of bad input.

The renders are independent processes, so the module starts every render the selected tests
need at once (mostly single-threaded work on tiny tensors) and each test waits for its own.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from longvid_dist.io.video import PNG_PATTERN, probe_video, read_frames

_SCRIPT = Path(sys.executable).with_name("longvid")
LONGVID = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "longvid_dist.cli"]
SIZE_ARGS = ["--height", "64", "--width", "64", "--fps", "16"]
NATIVE_LATENT = 21  # Wan: 81 pixel frames -> 21 latent frames


def cli_env(**extra) -> dict:
    env = {**os.environ, "COLUMNS": "80"}
    env["LONGVID_CACHE"] = os.environ["LONGVID_CACHE"]  # set by conftest: the shared test cache
    env.update(extra)
    return env


def run_cli(args: list[str], cwd: Path | str | None = None, env: dict | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(LONGVID + args, cwd=cwd, env=env or cli_env(), capture_output=True,
                          text=True, timeout=timeout)


# -- renders, started together ----------------------------------------------------------------

# name -> (args given the render's own directory, output name inside it)
RENDERS = {
    # exactly the bare command: every default (tiny-wan, 121 frames, 50 steps, glc, out.mp4)
    "bare": (lambda d: ["render", "--prompt", "a cat"], "out.mp4"),
    "glc": (lambda d: ["render", "--prompt", "a red car drives in the city", "--frames", "121", *SIZE_ARGS,
                       "--steps", "3", "--guidance", "5", "--recipe", "glc", "--seed", "0",
                       "--out", f"{d}/out.mp4"], "out.mp4"),
    "direct": (lambda d: ["render", "--prompt", "a dog runs on the beach", "--frames", "121", *SIZE_ARGS,
                          "--steps", "2", "--recipe", "direct", "--out", f"{d}/direct.mp4"], "direct.mp4"),
    # sliding also covers the lossless FFV1 .mkv output
    "sliding": (lambda d: ["render", "--prompt", "a bird flies in the sky", "--frames", "121", *SIZE_ARGS,
                           "--steps", "2", "--recipe", "sliding", "--out", f"{d}/sliding.mkv"], "sliding.mkv"),
    "png": (lambda d: ["render", "--prompt", "snow in the forest", "--frames", "41", *SIZE_ARGS,
                       "--steps", "2", "--out", f"{d}/frames/"], "frames"),
}


@dataclass
class Rendered:
    returncode: int
    stdout: str
    stderr: str
    dir: Path
    """The render's working directory, holding nothing but its outputs."""
    out: Path

    def check_ok(self) -> None:
        assert self.returncode == 0, f"exit {self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"

    def sidecar(self) -> dict:
        with open(f"{self.out}.json") as f:
            return json.load(f)


class RenderPool:
    """CLI render subprocesses started up front; ``get`` waits for one."""

    def __init__(self, base: Path):
        self.base = base
        self.procs: dict[str, tuple[subprocess.Popen, Path]] = {}

    def start(self, name: str) -> None:
        if name in self.procs:
            return
        d = self.base / name
        d.mkdir()
        log = self.base / f"{name}.log"  # outside d, so d holds only what the render wrote
        args, _ = RENDERS[name]
        with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:
            proc = subprocess.Popen(LONGVID + args(d), cwd=d, env=cli_env(), stdout=out, stderr=err,
                                    stdin=subprocess.DEVNULL)
        self.procs[name] = (proc, log)

    def get(self, name: str, timeout: float = 600) -> Rendered:
        self.start(name)
        proc, log = self.procs[name]
        rc = proc.wait(timeout=timeout)
        d = self.base / name
        return Rendered(rc, Path(f"{log}.out").read_text(), Path(f"{log}.err").read_text(), d,
                        d / RENDERS[name][1])

    def close(self) -> None:
        for proc, _ in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def renders(request, tmp_path_factory):
    # The tiny model must exist before parallel renders start, so they share one build.
    from longvid_dist.models.tiny import tiny_model_path

    tiny_model_path("tiny-wan")
    pool = RenderPool(tmp_path_factory.mktemp("renders"))
    wanted = [m.args[0] for item in request.session.items if item.module is request.module
              for m in item.iter_markers("render")]
    for name in RENDERS:  # in RENDERS order: the longest first
        if name in wanted:
            pool.start(name)
    yield pool
    pool.close()


def check_sidecar_common(side: dict, rendered: Rendered, steps: int, recipe: str, frames: int) -> None:
    assert side["spec"]["frames"] == frames and side["frames"] == frames
    assert side["spec"]["steps"] == steps
    assert side["spec"]["recipe"] == recipe and side["recipe"]["name"] == recipe
    assert side["spec"]["model"] == "tiny-wan" and side["model"]["name"] == "tiny-wan"
    assert side["spec"]["seed"] == side["seed"]
    assert (side["spec"]["height"], side["spec"]["width"]) == (64, 64)
    assert side["latent_frames"] == (frames - 1) // 4 + 1
    versions = side["versions"]
    for pkg in ("python", "longvid_dist", "torch", "diffusers", "transformers", "numpy"):
        assert isinstance(versions[pkg], str) and versions[pkg], pkg
    timings = side["timings"]
    stages = ("load", "encode", "denoise", "decode_encode")
    for k in (*stages, "total"):
        assert isinstance(timings[k], float) and timings[k] >= 0, k
    # the stages are disjoint parts of the total
    assert timings["total"] >= sum(timings[k] for k in stages)
    per_step = timings["per_step"]
    assert [s["step"] for s in per_step] == list(range(steps))
    ts = [s["t"] for s in per_step]
    assert ts == sorted(ts, reverse=True) and len(set(ts)) == steps
    for s in per_step:
        assert s["predict"] >= 0 and s["merge"] >= 0 and s["sched"] >= 0
    assert "wrote" in rendered.stdout


def check_video(path: Path, frames: int, fps: float | None = 16.0) -> None:
    info = probe_video(str(path))
    assert info["frames"] == frames
    assert (info["width"], info["height"]) == (64, 64)
    if fps is not None:
        assert info["fps"] == pytest.approx(fps)


@pytest.mark.render("glc")
def test_render_glc_mp4(renders):
    r = renders.get("glc")
    r.check_ok()
    assert sorted(os.listdir(r.dir)) == ["out.mp4", "out.mp4.json"]  # no partial files
    check_video(r.out, 121)
    side = r.sidecar()
    check_sidecar_common(side, r, steps=3, recipe="glc", frames=121)
    assert side["seed"] == 0 and side["spec"]["guidance"] == 5.0 and side["spec"]["fps"] == 16.0
    assert side["spec"]["out"] == str(r.out)
    assert len(side["timings"]["per_step"]) == 3
    # global: ceil(31 / 21) dilated windows; local: at least the windows at 0 and ending at 30
    assert all(s["windows"] >= math.ceil(31 / NATIVE_LATENT) + 2 for s in side["timings"]["per_step"])


@pytest.mark.render("direct")
def test_render_direct(renders):
    r = renders.get("direct")
    r.check_ok()
    assert sorted(os.listdir(r.dir)) == ["direct.mp4", "direct.mp4.json"]
    check_video(r.out, 121)
    side = r.sidecar()
    check_sidecar_common(side, r, steps=2, recipe="direct", frames=121)
    assert [s["windows"] for s in side["timings"]["per_step"]] == [1, 1]


@pytest.mark.render("sliding")
def test_render_sliding_ffv1_mkv(renders):
    r = renders.get("sliding")
    r.check_ok()
    assert sorted(os.listdir(r.dir)) == ["sliding.mkv", "sliding.mkv.json"]
    check_video(r.out, 121)
    assert read_frames(str(r.out)).shape == (121, 64, 64, 3)
    side = r.sidecar()
    check_sidecar_common(side, r, steps=2, recipe="sliding", frames=121)
    F, L = 31, NATIVE_LATENT
    S = L // 2
    n_windows = len([k for k in range(F) if k * S < F - L]) + 1  # starts 0, S, ... and F - L
    assert [s["windows"] for s in side["timings"]["per_step"]] == [n_windows] * 2


@pytest.mark.render("png")
def test_render_png_directory(renders):
    r = renders.get("png")
    r.check_ok()
    assert sorted(os.listdir(r.dir)) == ["frames", "frames.json"]
    assert sorted(os.listdir(r.out)) == [PNG_PATTERN % i for i in range(41)]
    check_video(r.out, 41, fps=None)  # image2 has no frame rate of its own
    assert read_frames(str(r.out)).shape == (41, 64, 64, 3)
    check_sidecar_common(r.sidecar(), r, steps=2, recipe="glc", frames=41)


@pytest.mark.slow
@pytest.mark.render("bare")
def test_bare_render_uses_tiny_defaults(renders):
    r = renders.get("bare")
    r.check_ok()
    assert sorted(os.listdir(r.dir)) == ["out.mp4", "out.mp4.json"]
    check_video(r.dir / "out.mp4", 121)
    side = r.sidecar()
    check_sidecar_common(side, r, steps=50, recipe="glc", frames=121)
    assert side["spec"]["guidance"] == 5.0 and side["seed"] == 0
    assert len(side["timings"]["per_step"]) == 50


# -- listings and help ------------------------------------------------------------------------

def first_words(text: str) -> set[str]:
    return {line.split()[0] for line in text.splitlines() if line and not line[0].isspace()}


def test_models_lists_families_and_tiny():
    r = run_cli(["models"])
    assert r.returncode == 0, r.stderr
    assert {"tiny-wan", "wan"} <= first_words(r.stdout)


def test_recipes_lists_builtins():
    r = run_cli(["recipes"])
    assert r.returncode == 0, r.stderr
    assert {"direct", "sliding", "glc"} <= first_words(r.stdout)


def parse_help_options(text: str) -> dict[str, str]:
    """argparse help -> {flag: help text} for every entry of the options section."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"^(options|optional arguments):", line))
    entries: dict[str, str] = {}
    current: list[str] | None = None
    for line in lines[start + 1:]:
        if not line.strip():
            continue
        m = re.match(r"^  (-\S.*?)(?:\s{2,}(.*))?$", line)
        if m:
            current = [m.group(2) or ""]
            for flag in re.findall(r"(?<![\w-])(--?[\w-]+)", m.group(1)):
                entries[flag] = current  # aliases share the entry
        elif line.startswith("   ") and current is not None:
            current.append(line.strip())
        else:
            break  # the next section
    return {flag: " ".join(part for part in parts if part).strip() for flag, parts in entries.items()}


def test_render_help_documents_every_flag():
    r = run_cli(["render", "--help"])
    assert r.returncode == 0, r.stderr
    usage = r.stdout.split("\n\n")[0]
    flags = set(re.findall(r"(?<![\w-])(--[\w-]+)", usage))
    assert {"--prompt", "--frames", "--recipe", "--out", "--steps"} <= flags
    helps = parse_help_options(r.stdout)
    assert flags <= set(helps)
    undocumented = [f for f in flags if not re.search(r"[A-Za-z]{3,}", helps[f])]
    assert not undocumented, undocumented


def test_top_level_help():
    r = run_cli(["--help"])
    assert r.returncode == 0, r.stderr
    for cmd in ("render", "models", "recipes"):
        assert cmd in r.stdout


# -- bad input: one line, exit 2, nothing written, nothing loaded ------------------------------

BAD = [
    ("--frames", ["--frames", "40"]),
    ("--frames", ["--frames", "0"]),
    ("--frames", ["--frames", "-3"]),
    ("--frames", ["--frames", "4.5"]),  # not an integer: the same one-line contract (cli.py docstring)
    ("--height", ["--height", "50"]),
    ("--width", ["--width", "0"]),
    ("--steps", ["--steps", "0"]),
    ("--guidance", ["--guidance", "-1"]),
    ("--fps", ["--fps", "0"]),
    ("--recipe", ["--recipe", "no-such-recipe"]),
    ("--model", ["--model", "no-such-model"]),
    ("--model", ["--model", "{tmp}/no/such/model"]),
    ("--model", ["--model", "{tmp}/not-a-pipeline"]),
    ("--window", ["--frames", "121", "--window", "40"]),  # 121 frames = 31 latent frames
    # no --window: the window is the native 21 latent frames, which a stride of 25 exceeds
    ("--stride", ["--frames", "121", "--stride", "25"]),
    ("--out", ["--out", "{tmp}/missing/out.mp4"]),
    ("--out", ["--out", "{out}/out.avi"]),
    ("--prompt", ["--prompt", ""]),
    ("--prompt", ["--prompt", "   "]),
]


@pytest.mark.parametrize("flag,args", BAD, ids=[f"{f}={a[-1]!r}" for f, a in BAD])
def test_bad_input_fails_fast(tmp_path, flag, args):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (tmp_path / "not-a-pipeline").mkdir()
    (tmp_path / "not-a-pipeline" / "config.json").write_text("{}")
    cache = tmp_path / "cache"  # a fresh model cache: loading the tiny model would build it here
    before = sorted(p.name for p in tmp_path.iterdir())
    args = [a.format(tmp=tmp_path, out=out_dir) for a in args]
    # a valid base command; the bad flag comes last and wins
    cmd = ["render", "--prompt", "a cat", "--steps", "1", "--out", f"{out_dir}/out.mp4", *args]
    r = run_cli(cmd, cwd=out_dir, env=cli_env(LONGVID_CACHE=str(cache)))

    assert r.returncode == 2, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), r.stderr
    assert flag in lines[0], lines[0]
    assert r.stdout == ""
    assert os.listdir(out_dir) == []  # no output, no sidecar, no partial file
    assert not cache.exists()  # the model was never loaded
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert os.listdir(tmp_path / "not-a-pipeline") == ["config.json"]
