"""RayExecutor: each timestep's windows sharded over Ray actors. The only module importing ray.

Every actor owns one GPU (``num_gpus=1``) or, on a CPU-only cluster, ``cpus_per_worker`` CPUs
(torch's thread count is set to match), and loads one model replica lazily with the same
adapter code as local runs. Per step the coordinator balances windows over actors by cost,
sends each actor only the latent frames its windows read (numpy, DESIGN decision 7), and gets
numpy predictions back; merging stays in the loop. Conditioning embeddings are put in the
object store once per render and passed by reference. A dead actor is restarted by Ray
(``max_restarts``) and its share of the step re-run, so faults do not change the output.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from typing import Iterator

import numpy as np
import torch

from ..config import resolve_dtype
from ..methods.windows import Window
from .executor import Executor, install_patches, predict_windows, to_uint8

# Ray 2.60 turns token authentication on by default and reads RAY_AUTH_MODE at import time.
# We choose it deliberately, before importing ray: a user's setting wins; otherwise "token",
# so a local instance we start and the `ray job submit` CLI (which reads the token from
# ~/.ray/auth_token) agree. Set RAY_AUTH_MODE=disabled in the environment to opt out.
os.environ.setdefault("RAY_AUTH_MODE", "token")

try:
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
except ImportError:  # pragma: no cover - ray is a dependency
    ray = None


class ClusterError(RuntimeError):
    """The cluster cannot host the requested workers, or cannot be reached."""


def _window_cost(w: Window) -> float:
    """Relative cost of a window: attention is quadratic in its frames, the rest linear."""
    n = len(w.frames)
    return n * n + 8 * n


def shard(windows: list[Window], workers: int) -> list[list[int]]:
    """Longest-processing-time-first assignment of window indices to workers (deterministic).

    An ABAM follower placed on a worker that does not hold its anchor costs the anchor's
    recomputation too, so the greedy choice counts it (and a worker that already recomputes an
    anchor takes that path's other followers for their own cost only).
    """
    loads = [0.0] * workers
    anchors: list[set] = [set() for _ in range(workers)]  # anchor frames present on each worker
    out: list[list[int]] = [[] for _ in range(workers)]

    def cost(w: Window, k: int) -> float:
        extra = w.role == "follow" and w.anchor not in anchors[k]
        return _window_cost(w) * (2 if extra else 1)  # a follower and its anchor have equal length

    for i in sorted(range(len(windows)), key=lambda i: (windows[i].role != "anchor", -_window_cost(windows[i]), i)):
        w = windows[i]
        k = min(range(workers), key=lambda k: (loads[k] + cost(w, k), k))
        loads[k] += cost(w, k)
        anchors[k].add(w.frames if w.role == "anchor" else w.anchor)
        out[k].append(i)
    return [sorted(s) for s in out]


class _Worker:
    """One model replica on one GPU (or a few CPUs). Pure: outputs depend only on inputs."""

    def __init__(self, family: str, source: str, device: str, dtype: str, threads: int):
        if threads > 0:
            torch.set_num_threads(threads)
        self.args = (family, source, device, getattr(torch, dtype))
        self.adapter = None
        self.conds: dict[str, object] = {}
        self.busy = 0.0

    def _load(self):
        if self.adapter is None:
            from ..models.registry import FAMILIES, adapter_class

            family, source, device, dtype = self.args
            if device == "cuda":
                device = "cuda:0"  # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPU
            self.adapter = adapter_class(FAMILIES[family]).load(source, device=device, dtype=dtype)
        return self.adapter

    def pid(self) -> int:
        return os.getpid()

    def warm(self) -> bool:
        self._load()
        return True

    def encode(self, prompt: str, negative: str, guidance: float) -> dict:
        return self._load().encode_prompt(prompt, negative, guidance).to_numpy()

    def predict(self, cond_refs: dict, patches: dict | None, t: np.ndarray, frames: np.ndarray,
                items: list) -> tuple[list, float]:
        """``frames``: ``[C, n, h, w]`` latent frames this worker needs; ``items``: for each window
        ``(local frame indices, window, keep)``. Returns the kept predictions and the busy time."""
        t0 = time.perf_counter()
        adapter = self._load()
        install_patches(adapter, patches)  # free when already installed; a restarted actor reinstalls
        for cid, ref in cond_refs.items():  # keyed by the object too: a reused actor gets new prompts
            key = (cid, ref[0].hex())
            if key not in self.conds:
                self.conds = {k: c for k, c in self.conds.items() if k[0] != cid}
                self.conds[key] = adapter.cond_from_numpy(ray.get(ref[0]))
        conds = {cid: self.conds[(cid, ref[0].hex())] for cid, ref in cond_refs.items()}
        x = _tensor(frames)  # [C, n, h, w]; each window's x[:, idx] below is a copy
        preds = predict_windows(adapter, conds, torch.from_numpy(np.asarray(t)),
                                [(x[:, idx], w) for idx, w, _ in items])
        out = [p.cpu().numpy() for p, (_, _, keep) in zip(preds, items) if keep]
        busy = time.perf_counter() - t0
        self.busy += busy
        return out, busy

    def decode_context(self) -> int:
        return self._load().decode_context()

    def decode(self, latent: np.ndarray, skip: int, chunk: int) -> np.ndarray:
        """Pixels of ``latent[:, skip:]`` as uint8 ``[n, H, W, 3]``, warmed up on the first
        ``skip`` latent frames."""
        frames = self._load().decode(torch.from_numpy(latent), chunk, skip=skip)
        return np.concatenate([to_uint8(f) for f in frames])


def worker_bundle(device: str, cpus_per_worker: int = 1) -> dict:
    """Resources of one worker actor: ``{GPU: 1, CPU: 1}`` when it runs on a GPU (``device``
    cuda, or auto on a cluster that has GPUs), else ``{CPU: cpus_per_worker}``. Needs Ray
    connected."""
    gpus = ray.cluster_resources().get("GPU", 0)
    use_gpu = device.startswith("cuda") or (device == "auto" and gpus >= 1)
    return {"GPU": 1, "CPU": 1} if use_gpu else {"CPU": cpus_per_worker}


def capacity(workers: int, device: str, flag: str = "--workers") -> tuple[int, str]:
    """How many sets of ``workers`` workers the cluster hosts at once, and the resource that
    limits it (``GPU`` or ``CPU``); :class:`ClusterError` naming ``flag`` when not even one fits.

    Counted on the cluster's total resources, not the available ones: these lag behind just
    after a previous render released its placement group."""
    bundle = worker_bundle(device)
    total = ray.cluster_resources()
    fits = min(int(total.get(k, 0) // (v * workers)) for k, v in bundle.items())
    if fits < 1:
        raise ClusterError(f"{flag} {workers} needs {', '.join(f'{v * workers:g} {k}' for k, v in bundle.items())} "
                           f"({_fmt(bundle)} per worker); the cluster has {_fmt(total)}")
    return fits, "GPU" if "GPU" in bundle else "CPU"


def cluster_gpus() -> int:
    """GPUs of the connected cluster."""
    return int(ray.cluster_resources().get("GPU", 0))


def shutdown() -> None:
    """Disconnect this process from Ray (stopping the instance when this process started it)."""
    if ray.is_initialized():
        ray.shutdown()


class RayExecutor(Executor):
    """Shards each step's windows over ``workers`` Ray actors."""

    def __init__(self, family: str, source: str, workers: int, address: str | None = None,
                 device: str = "auto", dtype: str = "auto", cpus_per_worker: int = 1,
                 placement_timeout: float = 30.0, max_restarts: int = 3):
        if ray is None:
            raise ClusterError("ray is not installed")
        from ..models.registry import FAMILIES, adapter_class

        # The coordinator holds the fp32 latent on CPU and never loads weights.
        self.space = adapter_class(FAMILIES[family]).latent_space.from_source(source)
        self.owns_ray = False
        self._connect(address)
        gpus = ray.cluster_resources().get("GPU", 0)
        use_gpu = device.startswith("cuda") or (device == "auto" and gpus >= 1)
        bundle = {"GPU": 1, "CPU": 1} if use_gpu else {"CPU": cpus_per_worker}
        self._check_capacity(workers, bundle)
        self.pg = placement_group([bundle] * workers, strategy="PACK")
        try:
            ray.get(self.pg.ready(), timeout=placement_timeout)
        except GetTimeoutError:
            remove_placement_group(self.pg)
            self.close()
            raise ClusterError(f"could not place {workers} workers of {bundle} within {placement_timeout:.0f}s; "
                               f"available: {_fmt(ray.available_resources())}") from None
        dev = "cuda" if use_gpu else "cpu"
        self.device = dev
        self.dtype = resolve_dtype(dtype, use_gpu)
        actor = ray.remote(_Worker)
        self.workers = [
            actor.options(
                max_restarts=max_restarts, num_gpus=1 if use_gpu else 0, num_cpus=bundle["CPU"],
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=i),
            ).remote(family, source, dev, self.dtype, 0 if use_gpu else cpus_per_worker)
            for i in range(workers)
        ]
        ray.get([w.warm.remote() for w in self.workers])
        self.cond_refs: dict = {}
        self.patches: dict | None = None
        self.metrics: list[dict] = []
        self.busy = [0.0] * workers
        self.restarts = 0
        self.max_restarts = max_restarts
        """Calls re-run because their worker died."""

    # -- cluster ------------------------------------------------------------------------
    def _connect(self, address: str | None) -> None:
        self.owns_ray = connect(address) == "local"

    def _check_capacity(self, workers: int, bundle: dict) -> None:
        total = ray.cluster_resources()
        for res, need in bundle.items():
            if total.get(res, 0) < need * workers:
                self.close()
                raise ClusterError(f"--workers {workers} needs {need * workers:g} {res} "
                                   f"({need:g} per worker); the cluster has {_fmt(total)}")

    # -- Executor -----------------------------------------------------------------------
    def set_conditions(self, prompts: dict[str, tuple[str, str]], guidance: float) -> None:
        # A new render: its metrics start afresh (the executor may be reused across videos).
        self.metrics, self.busy, self.restarts = [], [0.0] * len(self.workers), 0
        # One worker encodes; its result is already in the object store, shared by reference.
        self.cond_refs = {k: [self.workers[0].encode.remote(p, n, guidance)] for k, (p, n) in prompts.items()}
        ray.wait([r[0] for r in self.cond_refs.values()], num_returns=len(self.cond_refs))

    def install(self, patches: dict | None) -> None:
        self.patches = patches  # sent with every call, so a restarted actor gets them too

    def predict(self, latent: torch.Tensor, t: torch.Tensor, windows: list[Window]) -> list[torch.Tensor]:
        t0 = time.perf_counter()
        lat = latent.numpy()
        shards = shard(windows, len(self.workers))
        by_frames = {w.frames: w for w in windows if w.role == "anchor"}
        calls, moved = {}, 0
        for k, idxs in enumerate(shards):
            if not idxs:
                continue
            wins = [windows[i] for i in idxs]
            # ABAM: a follower whose anchor runs elsewhere gets the anchor recomputed here, first
            # (keys/values are never shipped across the network per layer).
            have = {w.frames for w in wins if w.role == "anchor"}
            extra = [by_frames[a] for a in dict.fromkeys(w.anchor for w in wins if w.role == "follow")
                     if a not in have]
            todo = [(w, False) for w in extra] + [(w, True) for w in wins]
            need = sorted({f for w, _ in todo for f in w.frames})
            pos = {f: j for j, f in enumerate(need)}
            items = [([pos[f] for f in w.frames], w, keep) for w, keep in todo]
            frames = np.ascontiguousarray(lat[:, need])  # [C, n, h, w]: only what this worker reads
            moved += frames.nbytes
            calls[k] = (idxs, frames, items)
        preds: list = [None] * len(windows)
        step_busy = [0.0] * len(self.workers)
        tt = t.cpu().numpy()  # keeps the scheduler's timestep dtype
        pending = {k: self._call(k, c, tt) for k, c in calls.items()}
        retries: dict[int, int] = {}
        while pending:
            for k, ref in list(pending.items()):
                try:
                    out, busy = ray.get(ref)
                except RayActorError as e:  # the actor died: Ray restarts it; run its share again
                    self.restarts += 1
                    retries[k] = retries.get(k, 0) + 1
                    if retries[k] > self.max_restarts:
                        raise ClusterError(f"worker {k} died {retries[k]} times in one step; giving up: {e}") from None
                    pending[k] = self._call(k, calls[k], tt)
                    continue
                self.busy[k] += busy
                step_busy[k] += busy
                for i, p in zip(calls[k][0], out):
                    preds[i] = _tensor(p)  # read only by the merge
                    moved += p.nbytes
                del pending[k]
        wall = time.perf_counter() - t0
        # transfer = what the slowest worker's compute does not explain (serialization, network)
        self.metrics.append({"bytes_moved": moved, "transfer": max(wall - max(step_busy), 0.0),
                             "worker_busy": step_busy})
        return preds

    def report(self) -> dict:
        """Per-step transfer metrics and per-worker busy time, for the sidecar."""
        return {"per_step": self.metrics,
                "workers": [{"index": i, "busy": b} for i, b in enumerate(self.busy)]}

    def _call(self, k: int, call: tuple, t: np.ndarray):
        _, frames, items = call
        return self.workers[k].predict.remote(self.cond_refs, self.patches, t, frames, items)

    def decode(self, latent: torch.Tensor, chunk: int) -> Iterator[np.ndarray]:
        """Temporal chunks decoded on all workers at once, yielded in order.

        Each chunk after the first is warmed up on the ``R`` latent frames before it (R = the
        VAE's temporal receptive field), so the frames equal a sequential decode exactly. Chunks
        are at least R long to keep that overhead <= 2x; at most two per worker are in flight,
        bounding pixel memory.
        """
        lat = latent.numpy()
        total = lat.shape[1]
        ctx = ray.get(self.workers[0].decode_context.remote())
        size = max(chunk, ctx, -(-total // len(self.workers)))
        spans = [(s, min(s + size, total)) for s in range(0, total, size)]
        refs: list = []
        for i, (s, e) in enumerate(spans):
            a = max(0, s - ctx)
            refs.append((self.workers[i % len(self.workers)], np.ascontiguousarray(lat[:, a:e]), s - a))
        inflight = [r[0].decode.remote(r[1], r[2], chunk) for r in refs[: 2 * len(self.workers)]]
        nxt = len(inflight)
        for i in range(len(refs)):
            yield self._get_retry(inflight[i], lambda i=i: refs[i][0].decode.remote(refs[i][1], refs[i][2], chunk))
            if nxt < len(refs):
                inflight.append(refs[nxt][0].decode.remote(refs[nxt][1], refs[nxt][2], chunk))
                nxt += 1

    def _get_retry(self, ref, resubmit, tries: int = 3):
        for k in range(tries):
            try:
                return ray.get(ref)
            except RayActorError:
                self.restarts += 1
                if k >= min(tries, self.max_restarts + 1) - 1:
                    raise
                ref = resubmit()

    def healthy(self, timeout: float = 60.0) -> bool:
        """Whether every worker answers within ``timeout`` seconds (after its restarts)."""
        try:
            ray.get([w.pid.remote() for w in self.workers], timeout=timeout)
            return bool(self.workers)
        except Exception:  # noqa: BLE001 - any failure means not usable
            return False

    def worker_pids(self) -> list[int]:
        return ray.get([w.pid.remote() for w in self.workers])

    def close(self) -> None:
        for w in getattr(self, "workers", []):
            ray.kill(w)
        self.workers = []
        if getattr(self, "pg", None) is not None:
            remove_placement_group(self.pg)
            self.pg = None
        if self.owns_ray and ray.is_initialized():
            ray.shutdown()
            self.owns_ray = False


def connect(address: str | None, quiet: bool = False) -> str | None:
    """Connect this process to Ray: join ``address`` (or ``RAY_ADDRESS``), else start a private
    local instance (no dashboard; auth mode: see the top of this module). Returns ``"joined"``,
    ``"local"``, or None when Ray was already initialized. Unreachable clusters fail fast."""
    address = address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return None
    if address:
        _probe(address)
        try:
            ray.init(address=address, log_to_driver=False)
        except Exception as e:  # ConnectionError, TimeoutError, ValueError...
            raise ClusterError(f"cannot reach Ray cluster at {address!r}: {e}") from None
        return "joined"
    ray.init(address="local", include_dashboard=False, dashboard_host="127.0.0.1", log_to_driver=False,
             num_cpus=os.cpu_count(), **({"logging_level": logging.WARNING} if quiet else {}))
    return "local"


def _tensor(a: np.ndarray) -> torch.Tensor:
    """A tensor over a numpy array without copying, even when the object store made it
    read-only (callers only read it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail fast on an unreachable cluster: ``ray.init`` itself retries for minutes."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"Ray address {address!r} is not of the form host:port, ray://host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ClusterError(f"cannot reach Ray cluster at {address!r}: {e.strerror or e}") from None


def _fmt(res: dict) -> str:
    keys = [k for k in ("CPU", "GPU", "memory") if k in res]
    return ", ".join(f"{res[k] / 2**30:.1f} GiB {k}" if k == "memory" else f"{res[k]:g} {k}" for k in keys) or "nothing"
