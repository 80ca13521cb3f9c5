"""Ray job entry points (``jobs/``) through the real ``ray`` CLI, and ``ray_cluster.yaml``.

A real Ray head is started with ``ray start --head --block`` (dashboard on 127.0.0.1: the job
server lives there) in token-authentication mode with a token file of its own, renders are
submitted with ``ray job submit --working-dir <repo>`` exactly as a user would, and the job's
status and logs are read back with ``ray job status`` / ``ray job logs``.

The head is stopped by signalling the ``ray start --block`` process this module started (it
drains and stops its node), never with ``ray stop``: that stops every Ray instance on the
machine, other test sessions' included.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from longvid_dist.io.video import probe_video

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray") if (BIN / "ray").exists() else shutil.which("ray")
EXCLUDES = json.dumps({"excludes": [".git", "out", "build"]})  # besides .gitignore (.venv, caches)
HAS_BATCH = importlib.util.find_spec("longvid_dist.batch") is not None


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _base_env(**extra: str | None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    # The job's `python` is the one on the PATH `ray start` had: this venv's.
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1", LONGVID_CACHE=os.environ["LONGVID_CACHE"])
    for k, v in extra.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


class Head:
    """One ``ray start --head --block`` process with its own ports, temp dir and auth setting."""

    def __init__(self, env: dict, token: str | None = None):
        self.env = env
        self.token = token
        self.tmp = tempfile.mkdtemp(prefix="lvj-", dir="/tmp")  # short: Ray's socket paths must fit
        self.gcs_port, self.dash_port, self.client_port, self.agent_port = _free_ports(4)
        self.url = f"http://127.0.0.1:{self.dash_port}"
        self.log = open(os.path.join(self.tmp, "head.log"), "w")
        self.proc = subprocess.Popen(
            [RAY, "start", "--head", "--block", "--port", str(self.gcs_port), "--dashboard-host", "127.0.0.1",
             "--dashboard-port", str(self.dash_port), "--ray-client-server-port", str(self.client_port),
             "--dashboard-agent-listen-port", str(self.agent_port), "--num-cpus", "2",
             "--disable-usage-stats", "--temp-dir", self.tmp],
            cwd=self.tmp, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 90) -> None:
        """Until the dashboard's job server answers (with the token when the head has one)."""
        deadline = time.time() + timeout
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        while time.time() < deadline:
            assert self.proc.poll() is None, f"ray start exited with {self.proc.returncode}:\n{self.log_tail()}"
            try:
                with urllib.request.urlopen(urllib.request.Request(f"{self.url}/api/version", headers=headers),
                                            timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        pytest.fail(f"Ray dashboard at {self.url} not up after {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # `ray start --block` drains, then stops its processes
            try:
                self.proc.wait(timeout=45)
            except subprocess.TimeoutExpired:
                pass
        try:  # anything of this head's process group still there (it is ours: start_new_session)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- the `ray job` CLI --------------------------------------------------------------------
    def ray(self, *args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([RAY, *args], env=env or self.env, cwd=REPO, capture_output=True, text=True,
                              timeout=timeout)

    def _status(self, job_id: str) -> str:
        """The job's state, from `ray job status` (it words the final states as sentences)."""
        p = self.ray("job", "status", "--address", self.url, job_id)
        text = p.stdout + p.stderr
        for word, state in (("succeeded", "SUCCEEDED"), ("failed", "FAILED"), ("was stopped", "STOPPED")):
            if f"Job '{job_id}' {word}" in text:
                return state
        m = re.search(rf"Status for job '{job_id}': (?:JobStatus\.)?(\w+)", text)
        return m.group(1) if m else "?"

    def submit(self, *entrypoint: str, timeout: float = 150) -> tuple[str, str]:
        """Submit ``entrypoint`` from the repo with ``--working-dir``; wait; return (status, logs)."""
        job_id = f"longvid-test-{secrets.token_hex(4)}"
        deadline = time.time() + 60
        while True:  # the job server answers before the node's agent has registered with it: Ray
            # says "No available agent to submit job, please try again later" (500) and the CLI does not retry
            p = self.ray("job", "submit", "--address", self.url, "--submission-id", job_id, "--no-wait",
                         "--working-dir", str(REPO), "--runtime-env-json", EXCLUDES, "--", *entrypoint)
            if p.returncode == 0 or "No available agent" not in p.stderr + p.stdout or time.time() > deadline:
                break
            time.sleep(1)
        assert p.returncode == 0, p.stdout + p.stderr
        deadline = time.time() + timeout
        status = "?"
        while time.time() < deadline:
            status = self._status(job_id)
            if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                break
            time.sleep(2)
        logs = self.ray("job", "logs", "--address", self.url, job_id).stdout
        if status not in ("SUCCEEDED", "FAILED", "STOPPED"):
            self.ray("job", "stop", "--address", self.url, job_id)
        return status, logs


@pytest.fixture(scope="module")
def token_head(tiny_path):
    """A head in token mode: RAY_AUTH_MODE=token and a token file only this test knows, for
    `ray start` and for the `ray job` CLI alike; the job's driver inherits both from the node."""
    tdir = tempfile.mkdtemp(prefix="lvj-token-")
    token = secrets.token_hex(32)
    path = os.path.join(tdir, "auth_token")
    with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write(token)
    head = Head(_base_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=path), token=token)
    try:
        head.wait_ready()
        yield head
    finally:
        head.stop()
        shutil.rmtree(tdir, ignore_errors=True)


def _check_video(path: Path, frames: int) -> dict:
    info = probe_video(str(path))
    assert (info["frames"], info["width"], info["height"]) == (frames, 64, 64)
    return json.loads(Path(f"{path}.json").read_text())


def test_render_job_joins_the_cluster(token_head, tmp_path):
    out = tmp_path / "job.mp4"
    status, logs = token_head.submit("python", "-m", "jobs.render", "--prompt", "a red car at night",
                                     "--frames", "41", "--steps", "2", "--out", str(out))
    assert status == "SUCCEEDED", logs
    side = _check_video(out, 41)
    assert side["executor"] == "RayExecutor" and len(side["workers"]) == 1
    # joined the job's cluster (RAY_ADDRESS = its GCS), with the default of one worker per GPU or 1
    line = next(l for l in logs.splitlines() if l.startswith("[longvid job] render:"))
    assert re.search(rf"address=\S+:{token_head.gcs_port} ", line), line
    assert "workers=1 (cluster GPUs: 0)" in line and "auth=token" in line
    # ran with this environment's Python (the job uses the node's `python`, from `ray start`'s PATH)
    assert f"prefix={sys.prefix}" in line, line
    # the render's own log lines reached the job's logs
    assert "[longvid] step 2/2" in logs
    assert f"wrote {out} (41 frames)" in logs


def test_job_submit_needs_the_token(token_head):
    """Token mode is real: the `ray job` CLI without the token, or with a wrong one, is refused."""
    no_mode = token_head.ray("job", "list", "--address", token_head.url,
                             env=_base_env(RAY_AUTH_TOKEN_PATH=token_head.env["RAY_AUTH_TOKEN_PATH"]))
    assert no_mode.returncode != 0 and "Authentication required" in no_mode.stderr, no_mode.stderr
    wrong = token_head.ray("job", "list", "--address", token_head.url,
                           env=_base_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32)))
    assert wrong.returncode != 0 and "Authentication failed" in wrong.stderr, wrong.stderr
    ok = token_head.ray("job", "list", "--address", token_head.url)
    assert ok.returncode == 0, ok.stdout + ok.stderr


@pytest.mark.skipif(not HAS_BATCH, reason="longvid batch not implemented yet")
def test_batch_job(token_head, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"id": "car", "prompt": "a red car at night"}, {"id": "cat", "prompt": "a cat on the beach", "seed": 3}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    status, logs = token_head.submit("python", "-m", "jobs.batch", str(prompts), "--out-dir", str(out),
                                     "--frames", "41", "--steps", "2")
    assert status == "SUCCEEDED", logs
    assert re.search(rf"\[longvid job\] batch: address=\S+:{token_head.gcs_port} auth=token", logs), logs
    for r in rows:
        _check_video(out / f"{r['id']}.mp4", 41)
    latest = {}
    for line in (out / "manifest.jsonl").read_text().splitlines():
        e = json.loads(line)
        latest[e["id"]] = e["state"]
    assert latest == {"car": "done", "cat": "done"}
    assert "2 rows: 2 done" in logs


def test_job_in_cluster_without_auth(tiny_path, tmp_path):
    """A head started with no RAY_AUTH_MODE and no token anywhere runs without authentication;
    its jobs see no RAY_AUTH_MODE, and jobs.render then connects with auth disabled (the
    library alone would default to token mode and fail for want of a token)."""
    home = tmp_path / "home"  # no ~/.ray/auth_token here
    home.mkdir()
    head = Head(_base_env(HOME=str(home)))
    try:
        head.wait_ready()
        out = tmp_path / "noauth.mp4"
        status, logs = head.submit("python", "-m", "jobs.render", "--prompt", "a dog", "--frames", "41",
                                   "--steps", "1", "--workers", "1", "--out", str(out))
        assert status == "SUCCEEDED", logs
        line = next(l for l in logs.splitlines() if l.startswith("[longvid job] render:"))
        assert "auth=disabled" in line and "workers=1" in line, line
        _check_video(out, 41)
    finally:
        head.stop()


# -- without a cluster ------------------------------------------------------------------------

def _entry(*args: str, **env: str | None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.render", *args], cwd=REPO, env=_base_env(**env),
                          capture_output=True, text=True, timeout=60)


def test_bad_flags_fail_before_the_cluster(tmp_path):
    t0 = time.time()
    p = _entry("--prompt", "x", "--frames", "40", "--out", str(tmp_path / "x.mp4"), RAY_ADDRESS="127.0.0.1:1")
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "--frames" in lines[0], p.stderr
    assert time.time() - t0 < 30 and list(tmp_path.iterdir()) == []


def test_unreachable_cluster_is_one_clear_line(tmp_path):
    p = _entry("--prompt", "x", "--frames", "41", "--out", str(tmp_path / "x.mp4"), RAY_ADDRESS="127.0.0.1:1")
    assert p.returncode == 1
    assert "cannot reach Ray cluster at '127.0.0.1:1'" in p.stderr, p.stderr


def test_address_and_auth_rules(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    import jobs

    assert jobs.with_address(["--prompt", "x", "--address=h:1"]) == (["--prompt", "x", "--address=h:1"], "h:1")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert jobs.with_address(["--prompt", "x"]) == (["--prompt", "x", "--address", "10.0.0.1:6379"], "10.0.0.1:6379")
    monkeypatch.delenv("RAY_ADDRESS")
    assert jobs.with_address([])[1] == "auto"
    assert jobs.split_flags(["--workers", "3", "--work", "5"], "--workers") == {"--workers": "3"}
    # outside a Ray job the library's rule stands (nothing is set here)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    jobs.settle_auth_mode()
    assert "RAY_AUTH_MODE" not in os.environ
    # inside one: the node's setting is inherited; none means the cluster runs without auth
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    jobs.settle_auth_mode()
    assert os.environ["RAY_AUTH_MODE"] == "disabled"
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    jobs.settle_auth_mode()
    assert os.environ["RAY_AUTH_MODE"] == "token"


# -- ray_cluster.yaml -------------------------------------------------------------------------

def _cluster_config() -> dict:
    # ray reads RAY_AUTH_MODE when imported: let the library make its choice first, as it does
    # for every other test in this process
    import longvid_dist.runtime.ray_executor  # noqa: F401

    return yaml.safe_load((REPO / "ray_cluster.yaml").read_text())


def test_ray_cluster_yaml_is_valid():
    raw = _cluster_config()
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(copy.deepcopy(raw))
    validate_config(cfg)

    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    gpu = [t for name, t in types.items() if name != cfg["head_node_type"]]
    assert "GPU" not in head["resources"] and head["max_workers"] == 0
    assert len(gpu) == 1 and gpu[0]["resources"]["GPU"] >= 1
    assert 0 <= gpu[0]["min_workers"] <= gpu[0]["max_workers"] <= cfg["max_workers"]

    # the repo is synced and installed from the synced dir, torch first
    mount = next(remote for remote, local in cfg["file_mounts"].items() if local == ".")
    setup = cfg["setup_commands"]
    torch_at = next(i for i, c in enumerate(setup) if re.search(r"pip install .*\btorch==", c))
    editable_at = next(i for i, c in enumerate(setup) if f"-e {mount}" in c)
    assert torch_at < editable_at
    makefile_torch = re.search(r"^TORCH := (\S+)", (REPO / "Makefile").read_text(), re.M)
    if makefile_torch:
        assert makefile_torch.group(1) in setup[torch_at]

    # Ray starts with the auth mode chosen deliberately, head dashboard on localhost only
    head_start = " ".join(cfg["head_start_ray_commands"])
    worker_start = " ".join(cfg["worker_start_ray_commands"])
    assert "ray start --head --port=6379" in head_start and "--dashboard-host=127.0.0.1" in head_start
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker_start
    for cmds in (head_start, worker_start):
        assert "RAY_AUTH_MODE=token" in cmds
    assert "~/.ray/auth_token" in cfg["file_mounts"]


def test_ray_validator_rejects_a_broken_cluster_yaml():
    """The validator used above is not vacuous."""
    bad = _cluster_config()
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    bad["available_node_types"]["gpu_worker"]["min_workerz"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))
