"""``cluster/slurm/longvid_batch.sbatch`` on a real single-node Slurm (munged, slurmctld, slurmd).

``cluster/slurm/start_test_slurm.sh`` installs ``slurm-wlm`` and ``munge`` with apt-get when they
are missing and brings the daemons up (idempotent; under a second when already up). The tests
skip only when it says the packages cannot be installed (its exit code 3: no root, no apt-get,
or apt-get failed); any other failure to bring Slurm up is a test failure.

Two batch jobs are submitted at once with one CPU each, so they share the node: each starts its
own Ray head (ports from its job id, a token of its own), runs ``longvid batch`` against it with
the tiny model and stops its Ray when done.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from longvid_dist.io.video import probe_video

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
START = REPO / "cluster" / "slurm" / "start_test_slurm.sh"
SBATCH = REPO / "cluster" / "slurm" / "longvid_batch.sbatch"
BIN = Path(sys.executable).parent
SKIP_CODE = 3  # start_test_slurm.sh: the packages cannot be installed


@pytest.fixture(scope="module")
def slurm_env(tiny_path) -> dict:
    """The environment sbatch runs with: this venv first on PATH (the job inherits it) and
    SLURM_CONF pointing at the test cluster."""
    p = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=900)
    if p.returncode == SKIP_CODE:
        pytest.skip(f"Slurm packages cannot be installed here: {p.stderr.strip().splitlines()[-1]}")
    assert p.returncode == 0, f"start_test_slurm.sh failed ({p.returncode}):\n{p.stderr[-3000:]}"
    m = re.search(r"^export SLURM_CONF=(\S+)$", p.stdout, re.M)
    assert m, p.stdout
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "SLURM_"))}
    env.update(SLURM_CONF=m.group(1), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}:/usr/sbin:/sbin",
               LONGVID_CACHE=os.environ["LONGVID_CACHE"], OMP_NUM_THREADS="1",
               RAY_OBJECT_STORE_MEMORY=str(256 * 2**20))  # two Ray clusters on one small node
    return env


def test_start_script_is_fast_when_up(slurm_env):
    t0 = time.time()
    p = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert time.time() - t0 < 10
    state = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], env=slurm_env, capture_output=True, text=True)
    assert state.stdout.split()[0] in ("idle", "mix", "alloc"), state


def _processes_naming(path: str) -> list[str]:
    """Command lines of live processes that name ``path`` as a whole path (this job's Ray)."""
    pattern = re.compile(re.escape(path) + "(/| |=|$)")
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if proc.name.isdigit() and proc.name != str(os.getpid()) and pattern.search(cmd):
            found.append(f"{proc.name}: {cmd[:200]}")
    return found


def _rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _latest(manifest: Path) -> dict:
    out = {}
    for line in manifest.read_text().splitlines():
        e = json.loads(line)
        out[e["id"]] = e["state"]
    return out


def test_sbatch_batch_two_jobs_share_the_node(slurm_env, tmp_path):
    jobs = {
        "a": [{"id": "car", "prompt": "a red car at night"}, {"id": "cat", "prompt": "a cat on the beach", "seed": 3}],
        "b": [{"id": "dog", "prompt": "a dog in the snow"}],
    }
    tag = f"lvtest-{os.getpid()}-{time.time_ns() % 10**6}"
    procs = {}
    for name, rows in jobs.items():
        d = tmp_path / name
        d.mkdir()
        prompts = _rows(d / "prompts.jsonl", rows)
        procs[name] = subprocess.Popen(
            ["sbatch", "--wait", "--parsable", f"--job-name={tag}", "--cpus-per-task=1", "--chdir", str(d),
             "--output", str(d / "slurm-%j.log"), str(SBATCH), str(prompts), "out", "--frames", "41", "--steps", "2"],
            env=slurm_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = {}
    try:
        for name, p in procs.items():
            out, err = p.communicate(timeout=150)
            results[name] = (p.returncode, out, err)
    finally:
        if len(results) < len(procs) or any(r[0] != 0 for r in results.values()):
            subprocess.run(["scancel", f"--name={tag}"], env=slurm_env, capture_output=True)
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()

    heads = set()
    for name, rows in jobs.items():
        rc, out, err = results[name]
        job_id = out.strip().split(";")[0]
        d = tmp_path / name
        log = (d / f"slurm-{job_id}.log").read_text() if job_id.isdigit() else ""
        assert rc == 0, f"sbatch {name}: rc={rc}\n{err}\n{log[-4000:]}"
        # the job's own Ray: token auth, all nodes up, the batch against it, Ray stopped after
        m = re.search(r"head (\S+:\d+) .* auth token, temp dir (\S+)", log)
        assert m, log
        heads.add(m.group(1))
        assert "1/1 Ray nodes up: 1 CPUs" in log, log
        assert f"--address {m.group(1)}" in log
        assert f"{len(rows)} rows: {len(rows)} done" in log and "longvid batch exited with 0" in log, log
        assert "stopping Ray on 1 node(s)" in log
        assert not Path(m.group(2)).exists()  # removed after a successful batch
        leftovers = _processes_naming(m.group(2))
        assert leftovers == [], f"Ray processes of job {job_id} still running: {leftovers}"
        out_dir = d / "out"
        assert _latest(out_dir / "manifest.jsonl") == {r["id"]: "done" for r in rows}
        for r in rows:
            info = probe_video(str(out_dir / f"{r['id']}.mp4"))
            assert (info["frames"], info["width"], info["height"]) == (41, 64, 64)
            side = json.loads((out_dir / f"{r['id']}.mp4.json").read_text())
            assert side["executor"] == "RayExecutor" and side["seed"] == r.get("seed", 0)
    assert len(heads) == 2  # two Ray clusters, distinct ports, on one node at the same time


def test_sbatch_script_outside_slurm_is_refused(slurm_env, tmp_path):
    env = {k: v for k, v in slurm_env.items() if not k.startswith("SLURM_JOB")}
    p = subprocess.run(["bash", str(SBATCH), "p.jsonl", "out"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 1 and "not inside a Slurm job" in p.stderr
    p = subprocess.run(["bash", str(SBATCH)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "usage: sbatch" in p.stderr
