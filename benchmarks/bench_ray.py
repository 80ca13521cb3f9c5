"""RayExecutor scaling, overhead and coordinator data path, measured in one run on this machine.

    .venv/bin/python benchmarks/bench_ray.py [--quick] [--configs 241x64,241x128] [--steps N] [--repeats N]

One local Ray instance of 3 logical CPUs is started here with the runtime's ``connect`` (as
tests/test_ray.py starts it: no dashboard, no log forwarding) and shared: the executors join it
and leave it running; ``shutdown`` stops it at the end. Torch runs one thread in
the driver and in every worker (OMP_NUM_THREADS=1 before torch is imported).

(a) Speedup of 2 Ray workers over 1 on a render of the built-in ``glc`` recipe with the tiny
    model (``tiny-wan``), denoise loop only: ``sampling.loop.denoise`` with a ``Planner``, a
    ``SamplerState.shared(space.make_scheduler(steps))`` and the initial latent built as
    ``api.render`` builds them (``Planner.init_noise``). Executors are created, conditioned and
    warmed (one full untimed render at the same geometry) before timing. Configurations are
    ``FRAMESxSIZE`` (square, pixels): the first is the reference render (241 frames = 61 latent
    frames at 64x64 = 8x8 latent: 3 global + 5..6 local windows per step); the others keep the
    tiny model class but have heavier windows (more tokens per frame), so per-call overhead
    weighs less. Target >= 1.8x.
    Two bounds are printed per configuration: what ``shard()``'s assignment allows once each
    worker's recomputed ABAM anchors are counted (``RayExecutor.predict`` re-runs, unkept, the
    anchor of every follower whose anchor sits on another worker), and the best 2-way
    assignment of the same windows (exhaustive search) under the same cost model.
(b) RayExecutor with 1 worker over LocalExecutor on the same renders. Target <= 1.10x.
    (a) and (b) interleave local / ray1 / ray2 runs, rotating who goes first each round, and
    compare medians; the three final latents are checked for bit-equality.
(c) Coordinator data path for one ``glc`` step at a real 1-minute Wan latent [16, 241, 60, 104]
    fp32 (961 frames at 480x832; 24.1 M values = 96 MB), no model, run twice: with the
    shared-memory arenas (the default: the latent copied once per step into an arena every
    worker of the node maps, each worker's predictions written into its reply arena, which the
    merge reads in place) and with the object store only (``shared_memory=False``: one
    ``ray.put`` of the latent per step mapped zero-copy by the workers, one object of
    predictions per worker returned). The REAL ``RayExecutor`` is constructed and driven (real
    __init__: placement group, actors; real ``predict()``: the same ``shard()``, arenas or
    objects, torch views of the results, bytes/transfer/busy metrics), with only its actor class
    swapped, inside this process, for ``NoopWorker`` below (``ray_executor.Worker`` is replaced
    before the executor is constructed): a ``Worker`` subclass with the real ``prepare`` and
    ``predict_step`` whose ``predict`` handles the data as ``Worker.predict`` does
    (``as_tensor(frames)`` without a copy, ``x[:, idx]`` per window, kept windows through
    ``emit``), but whose "prediction" is a fresh copy of the window's input frames. Windows
    carry their timestep as ``denoise`` sets it. Then ``plan.merge(preds, out=buf)`` (WLS merge
    of both paths + GLC fusion) into one buffer allocated before the steps, as ``denoise``
    merges. (predict + merge) per step is compared with a plain ``np.copyto`` of as many bytes
    as the executor reports moved (the latent sent once + the predictions returned), and also
    with a copy of one latent. Target <= 4x.

Prints only; never asserts on time (shared, noisy 2-core box) and exits 0.
"""

from __future__ import annotations

import os

# Before torch (and Ray, whose workers inherit the environment) is imported: one thread each.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import gc  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from dataclasses import replace  # noqa: E402
from importlib import metadata  # noqa: E402

from longvid_dist.runtime.worker import Worker  # noqa: E402

TARGET_SPEEDUP = 1.8
TARGET_OVERHEAD = 1.10
TARGET_DATAPATH = 4.0
PROMPT = "a red car drives through a city at night"
NEGATIVE = "blurry low quality"
WAN_1MIN = (16, 241, 60, 104)  # 961 frames at 480x832: a 1-minute Wan2.1 latent at 16 fps


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one config, 2 rounds, 1 data-path step: a smoke run (< 1 min)")
    p.add_argument("--configs", default=None,
                   help="comma-separated FRAMESxSIZE renders for (a)/(b); default 241x64,241x128,961x64 "
                        "(--quick: 241x64)")
    p.add_argument("--recipe", default="glc", help="recipe for (a)/(b)/(c) (default glc)")
    p.add_argument("--steps", type=int, default=8, help="denoising steps per render in (a)/(b)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per config (default 7, --quick 2)")
    p.add_argument("--datapath-repeats", type=int, default=None, help="timed steps in (c) (default 5, --quick 1)")
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-c", action="store_true", help="skip the 1-minute-latent data path part")
    p.add_argument("--only-c", action="store_true", help="run only the 1-minute-latent data path part")
    p.add_argument("--object-store", action="store_true",
                   help="in (a)/(b) also interleave 'ray1os': 1 worker with shared_memory=False (Ray objects only)")
    a = p.parse_args(argv)
    if a.configs is None:
        a.configs = "241x64" if a.quick else "241x64,241x128,961x64"
    a.repeats = a.repeats or (2 if a.quick else 7)
    a.datapath_repeats = a.datapath_repeats or (1 if a.quick else 5)
    a.cfgs = []
    for c in ([] if a.only_c else a.configs.split(",")):
        f, s = c.lower().split("x")
        a.cfgs.append((int(f), int(s)))
    return a


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"


def _med(xs):
    return statistics.median(xs) if xs else float("nan")


def _mean(xs):
    return statistics.fmean(xs) if xs else float("nan")


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} KB"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _usage():
    """(user+sys CPU seconds, sys seconds, minor page faults) of this process, all threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_stime, r.ru_minflt


_SPIN = "import time\nt = time.perf_counter()\nx = 0\nfor i in range(%d):\n    x += i\nprint(time.perf_counter() - t)"


def _capacity(iters: int = 2_500_000) -> float:
    """Parallel CPU this box gives us right now: one CPU-bound child alone, then two at once;
    ``2 * t_alone / t_slowest_of_two`` (2.0 = two free cores, 1.0 = one core's worth). A
    2-worker step waits for its slowest worker, hence the slowest of the two."""
    def spin(k):
        ps = [subprocess.Popen([sys.executable, "-S", "-c", _SPIN % iters], stdout=subprocess.PIPE, text=True)
              for _ in range(k)]
        return [float(p.communicate()[0]) for p in ps]

    try:
        return 2 * spin(1)[0] / max(spin(2))
    except (OSError, ValueError):
        return float("nan")


# -- the executor's per-worker work, as predict() builds it -----------------------------------
def _worker_calls(windows, shards):
    """For each shard: its windows plus the anchors it must recompute (unkept), as
    ``RayExecutor.predict`` builds a call (followers whose ABAM anchor runs on another worker)."""
    by_frames = {w.frames: w for w in windows if w.role == "anchor"}
    out = []
    for idxs in shards:
        wins = [windows[i] for i in idxs]
        have = {w.frames for w in wins if w.role == "anchor"}
        extra = [by_frames[a] for a in dict.fromkeys(w.anchor for w in wins if w.role == "follow")
                 if a not in have]
        out.append((wins, extra))
    return out


def _bounds(windows, shard, cost, workers=2):
    """(total cost, max per-worker cost of shard()'s assignment incl. recomputed anchors,
    max per-worker cost of the best assignment, or None when too many windows to search)."""
    total = sum(cost(w) for w in windows)

    def load(shards):
        return max(sum(cost(w) for w in wins) + sum(cost(w) for w in extra)
                   for wins, extra in _worker_calls(windows, shards))

    got = load(shard(windows, workers))
    best = None
    if workers == 2 and len(windows) <= 14:
        n = len(windows)
        best = min(load([[i for i in range(n) if m >> i & 1], [i for i in range(n) if not m >> i & 1]])
                   for m in range(1 << (n - 1)))  # window n-1 always on worker 1: halves the search
    return total, got, best


# -- (c) no-op actor ---------------------------------------------------------------------------
class NoopWorker(Worker):
    """``runtime.worker.Worker`` without a model: the real ``prepare`` bookkeeping and
    ``predict_step`` (shared-memory arenas or Ray objects in and out, exactly as a real worker),
    and ``Worker.predict``'s handling of the data (``as_tensor(frames)``, ``x[:, idx]`` per window,
    only kept windows kept, through ``emit``), but the "prediction" is a fresh copy of the
    window's own input frames (a model's output is a fresh array; ``x[:, idx]`` is a view when
    the window's frames are evenly spaced). Ray ships this class by value from ``__main__``."""

    def warm(self) -> bool:
        return True

    def encode(self, prompts, guidance):
        return None

    def prepare(self, version, conds, patches):
        self.prepared = version
        return True

    def predict(self, version, conds, patches, frames, items, epoch=None, reply=True, into=None):
        import torch

        from longvid_dist.runtime.worker import as_tensor, emit

        t0 = time.perf_counter()
        x = as_tensor(frames)  # [C, n, h, w]
        out = []
        for idx, w, keep in items:
            y = x[:, idx].clone(memory_format=torch.contiguous_format)  # no-op "prediction"
            if keep and reply:
                emit(y, out, into)
        busy = time.perf_counter() - t0
        self.busy += busy
        return out, busy


class _MemWatch:
    """Samples system memory in use (total - available); keeps the peak above the baseline."""

    def __init__(self, period: float = 0.02):
        import psutil

        self.psutil, self.period = psutil, period
        self.base = self._used()
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _used(self) -> int:
        vm = self.psutil.virtual_memory()
        return vm.total - vm.available

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._used())
            time.sleep(self.period)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def main(argv=None) -> int:
    a = _args(argv)
    import torch

    torch.set_num_threads(1)
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    from longvid_dist.config import ParallelConfig
    from longvid_dist.methods.recipes import get_recipe
    from longvid_dist.models.registry import FAMILIES
    from longvid_dist.models.tiny import tiny_model_path
    from longvid_dist.models.wan import WanAdapter
    from longvid_dist.runtime import ray_executor as rx
    from longvid_dist.runtime.executor import LocalExecutor
    from longvid_dist.runtime.ray_executor import RayExecutor, connect, shutdown

    t_all = time.perf_counter()
    fam = FAMILIES["wan"]
    native = fam.latent_frames(fam.native_frames)
    recipe = get_recipe(a.recipe)
    print("== machine")
    print(f"python {platform.python_version()}  torch {torch.__version__}  ray {metadata.version('ray')}  "
          f"torch threads {torch.get_num_threads()}  OMP_NUM_THREADS {os.environ['OMP_NUM_THREADS']}  "
          f"cpu_count {os.cpu_count()}  loadavg(1m) {_load()}  mode {'quick' if a.quick else 'default'}")
    print(f"recipe {a.recipe!r}: {recipe.description}")

    # 3 logical CPUs: the 1-worker and the 2-worker executors (1 + 2 one-CPU bundles) stay up side
    # by side to be interleaved; only one of them computes at a time, on the 2 physical cores.
    t0 = time.perf_counter()
    ncpu = 4 if a.object_store else 3  # one logical CPU per actor
    connect(None, quiet=True, num_cpus=ncpu)
    print(f"local Ray started in {time.perf_counter() - t0:.1f}s ({ncpu} logical CPUs, no dashboard)")

    rows = []  # (metric, measured, target, ok)
    try:
        src = str(tiny_model_path("tiny-wan"))
        t0 = time.perf_counter()
        adapter = WanAdapter.load(src, device="cpu", dtype=torch.float32)
        local = LocalExecutor(adapter)
        ray1 = RayExecutor("wan", src, ParallelConfig(workers=1), device="cpu", dtype="float32", cpus_per_worker=1)
        ray2 = RayExecutor("wan", src, ParallelConfig(workers=2), device="cpu", dtype="float32", cpus_per_worker=1)
        exs = {"local": local, "ray1": ray1, "ray2": ray2}
        if a.object_store:
            exs["ray1os"] = RayExecutor("wan", src, ParallelConfig(workers=1, shared_memory=False), device="cpu",
                                        dtype="float32", cpus_per_worker=1)
        for ex in exs.values():
            ex.set_conditions({"main": (PROMPT, NEGATIVE)}, a.guidance)
        print(f"executors local / ray1 / ray2 created and conditioned in {time.perf_counter() - t0:.1f}s (untimed)")
        try:
            for j, cfg in enumerate(a.cfgs):
                rows += _bench_render(a, cfg, exs, adapter.space, native, recipe, rx, first=j == 0)
        finally:
            for n in ("ray1", "ray2", "ray1os"):
                if n in exs:
                    exs[n].close()
        del local, adapter, exs
        gc.collect()

        if not a.skip_c:
            try:
                arena = _bench_datapath(a, recipe, native, rx, src, shared=True)
                store = _bench_datapath(a, recipe, native, rx, src, shared=False)
                rows += arena[:2] + store[:2]
                print(f"\n(c) shared-memory arenas vs object store only, per step (predict + merge): "
                      f"{1e3 * arena[2]:.0f} ms vs {1e3 * store[2]:.0f} ms = {arena[2] / store[2]:.2f}x")
            except Exception:  # report, keep the other results, exit 0
                traceback.print_exc()
                print("(c) could not run: see the traceback above")
    finally:
        shutdown()

    print("\n== summary (ratios measured in this run only; printed, never asserted)")
    w = max([len(r[0]) for r in rows] + [6])
    print(f"{'metric':<{w}}  {'measured':>9}  {'target':>8}  verdict")
    for name, val, tgt, ok, _ in rows:
        print(f"{name:<{w}}  {val:>8.2f}x  {tgt:>8}  {_verdict(ok)}")
    met = [r[0].split(", ", 1)[1] for r in rows if r[0].startswith("(a)") and r[3]]
    print(f"(a) configurations meeting >= {TARGET_SPEEDUP:.1f}x: {', '.join(met) if met else 'none'}")
    for r in rows:
        if r[4]:
            print(f"    {r[4]}")
    print(f"total {time.perf_counter() - t_all:.0f}s  loadavg(1m) at end {_load()}")
    return 0


def _bench_render(a, cfg, exs, space, native, recipe, rx, first=True):
    import psutil
    import torch

    from longvid_dist.sampling.loop import denoise
    from longvid_dist.sampling.planner import Planner
    from longvid_dist.sampling.rng import keyed_generator, noise_generator
    from longvid_dist.sampling.state import SamplerState

    frames, hw = cfg
    F = space.latent_shape(frames, hw, hw)[1]
    label = f"{frames}f {hw}x{hw}"

    def planner():
        return Planner(recipe, F, native, lambda purpose, step: keyed_generator(a.seed, purpose, step))

    pl = planner()
    latent0 = pl.init_noise(space, noise_generator(a.seed), frames, hw, hw)  # as api.render draws it

    # Windows per step and the 2-worker bounds under the executor's own cost model.
    sched = space.make_scheduler(a.steps)
    tot = got = best = 0.0
    n_glob, n_loc, n_extra = [], [], []
    for i, t in enumerate(sched.timesteps):
        wins = pl.plan(i, float(t)).windows
        n_glob.append(sum(w.path == "global" for w in wins))
        n_loc.append(sum(w.path == "local" for w in wins))
        n_extra.append(sum(len(e) for _, e in _worker_calls(wins, rx.shard(wins, 2))))
        s_tot, s_got, s_best = _bounds(wins, rx.shard, rx._window_cost)
        tot, got = tot + s_tot, got + s_got
        best = None if s_best is None or best is None else best + s_best
    b_shard = tot / got
    b_best = f"{tot / best:.2f}x" if best else "n/a (too many windows to search)"
    print(f"\n== (a)/(b) {a.recipe} render {label}: latent {list(latent0.shape)}, {a.steps} steps, guidance "
          f"{a.guidance}, window {pl.window} stride {pl.stride}; windows/step {min(n_glob)}..{max(n_glob)} global + "
          f"{min(n_loc)}..{max(n_loc)} local; with 2 workers {_mean(n_extra):.1f} anchors/step recomputed")
    print(f"2-worker bounds (cost model n^2+8n): shard() as run, incl. recomputed anchors {b_shard:.2f}x; "
          f"best assignment {b_best}")

    pids = {n: ex.worker_pids() for n, ex in exs.items() if n != "local"}
    procs = {n: [psutil.Process(p) for p in ps] for n, ps in pids.items()}

    def wcpu(n):
        return sum(sum(p.cpu_times()[:2]) for p in procs.get(n, []))

    mine = {p.pid for ps in procs.values() for p in ps}

    def daemons():
        """CPU seconds so far of Ray's own processes (raylet, GCS, agents), not the executors' actors."""
        tot = 0.0
        for p in psutil.Process().children(recursive=True):
            if p.pid not in mine:
                try:
                    tot += sum(p.cpu_times()[:2])
                except psutil.Error:
                    pass
        return tot

    def run(n):
        ex = exs[n]
        lat = latent0.clone()
        state = SamplerState.shared(space.make_scheduler(a.steps))
        p = planner()
        m0 = len(getattr(ex, "metrics", []))  # the local executor keeps no transfer metrics
        gc.collect()
        gc.disable()
        try:
            c0, d0, r0 = wcpu(n), _usage()[0], daemons()
            t0 = time.perf_counter()
            res = denoise(lat, state, p, ex)
            wall = time.perf_counter() - t0
            cpu, dc, rc = wcpu(n) - c0, _usage()[0] - d0, daemons() - r0
        finally:
            gc.enable()
        return wall, res, list(getattr(ex, "metrics", [])[m0:]), cpu, (dc, rc)

    t0 = time.perf_counter()
    warm = {n: run(n) for n in exs}  # untimed warm-up at this geometry
    same = {n: torch.equal(warm[n][1].latent, warm["local"][1].latent) for n in ("ray1", "ray2")}
    print(f"warm-up {time.perf_counter() - t0:.1f}s (local {warm['local'][0]:.2f}s, ray1 {warm['ray1'][0]:.2f}s, "
          f"ray2 {warm['ray2'][0]:.2f}s); final latent bit-equal to local: ray1 {same['ray1']}, ray2 {same['ray2']}")
    del warm

    repeats = a.repeats if first else max(min(3, a.repeats), a.repeats - 2)
    names = list(exs)
    times = {n: [] for n in names}
    steps = {n: [] for n in names}
    mets = {n: [] for n in names}
    cpus = {n: 0.0 for n in names}
    dcpu = {n: 0.0 for n in names}
    rcpu = {n: 0.0 for n in names}
    cap = []
    finals = {}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate who goes first
        line = []
        for n in order:
            wall, res, m, cpu, dc = run(n)
            finals[n] = res.latent
            times[n].append(wall)
            steps[n] += res.steps
            mets[n] += m
            cpus[n] += cpu
            dcpu[n] += dc[0]
            rcpu[n] += dc[1]
            line.append(f"{n} {wall:6.3f}s")
        cap.append(_capacity())
        print(f"  round {r + 1}/{repeats}: " + "  ".join(line) +
              f"   -> 2w/1w {times['ray1'][-1] / times['ray2'][-1]:.2f}x  ray1/local "
              f"{times['ray1'][-1] / times['local'][-1]:.3f}x  | box capacity {cap[-1]:.2f}x  load {_load()}")

    print(f"timed runs' final latents bit-equal to local: ray1 {torch.equal(finals['ray1'], finals['local'])}, "
          f"ray2 {torch.equal(finals['ray2'], finals['local'])}")
    med = {n: _med(times[n]) for n in names}
    speedup = med["ray1"] / med["ray2"]
    overhead = med["ray1"] / med["local"]
    pair_speedup = _med([x / y for x, y in zip(times["ray1"], times["ray2"])])
    pair_overhead = _med([x / y for x, y in zip(times["ray1"], times["local"])])
    print(f"median denoise: local {med['local']:.3f}s  ray1 {med['ray1']:.3f}s  ray2 {med['ray2']:.3f}s  "
          f"(n={repeats}; min..max local {min(times['local']):.3f}..{max(times['local']):.3f}, "
          f"ray1 {min(times['ray1']):.3f}..{max(times['ray1']):.3f}, ray2 {min(times['ray2']):.3f}..{max(times['ray2']):.3f})")
    ok_a, ok_b = speedup >= TARGET_SPEEDUP, overhead <= TARGET_OVERHEAD
    capm = _med(cap)
    print(f"(a) speedup 2w/1w = {speedup:.2f}x (median of per-round ratios {pair_speedup:.2f}x), target >= "
          f"{TARGET_SPEEDUP:.2f}x -> {_verdict(ok_a)}   [bounds: shard() {b_shard:.2f}x, best {b_best}; "
          f"box capacity (2 CPU-bound processes vs 1, median) {capm:.2f}x]")
    print(f"(b) ray1/local   = {overhead:.3f}x (median of per-round ratios {pair_overhead:.3f}x), target <= "
          f"{TARGET_OVERHEAD:.2f}x -> {_verdict(ok_b)}")
    if "ray1os" in med:
        print(f"    Ray objects only (shared_memory=False): ray1os/local = {med['ray1os'] / med['local']:.3f}x (median of "
              f"per-round ratios {_med([x / y for x, y in zip(times['ray1os'], times['local'])]):.3f}x); ray1/ray1os = "
              f"{med['ray1'] / med['ray1os']:.3f}x; final latent bit-equal to local: "
              f"{torch.equal(finals['ray1os'], finals['local'])}")

    # Where the time goes, per step (means over the timed runs).
    sp = {n: {k: _mean([getattr(x, k) for x in steps[n]]) for k in ("predict", "merge", "sched")} for n in names}
    n_win = _mean([x.windows for x in steps["local"]])
    busy_tot = {n: sum(sum(x["worker_busy"]) for x in mets[n]) for n in names if n != "local"}
    print("  per step, ms     predict   merge  sched+refine | transfer  worker busy max/min  bytes moved | "
          "worker on-CPU while busy | driver CPU/step | Ray daemons CPU/step")
    for n in names:
        m = mets[n]
        extra = ""
        if m:
            bmax = _mean([max(x["worker_busy"]) for x in m])
            bmin = _mean([min(x["worker_busy"]) for x in m])
            extra = (f"| {1e3 * _mean([x['transfer'] for x in m]):7.2f}   {1e3 * bmax:7.2f} / {1e3 * bmin:7.2f}"
                     f"   {_mb(_mean([x['bytes_moved'] for x in m])):>10} | {100 * cpus[n] / busy_tot[n]:13.0f}%           ")
        else:  # the driver computes: its CPU over the predict time
            pred = sum(x.predict for x in steps[n])
            extra = f"| {'':43}| {100 * min(dcpu[n], pred) / pred:13.0f}% (driver)  "
        print(f"  {n:<15}{1e3 * sp[n]['predict']:8.2f}{1e3 * sp[n]['merge']:8.2f}{1e3 * sp[n]['sched']:11.2f}    {extra}"
              f"| {1e3 * dcpu[n] / len(steps[n]):9.1f} ms    | {1e3 * rcpu[n] / len(steps[n]):9.1f} ms")
    if not (ok_a and ok_b):
        b1 = _mean([sum(x["worker_busy"]) for x in mets["ray1"]])
        b2 = _mean([sum(x["worker_busy"]) for x in mets["ray2"]])
        b2max = _mean([max(x["worker_busy"]) for x in mets["ray2"]])
        tr1 = _mean([x["transfer"] for x in mets["ray1"]])
        tr2 = _mean([x["transfer"] for x in mets["ray2"]])
        print(f"  where the time goes: {n_win:.1f} windows/step (+{_mean(n_extra):.1f} recomputed anchors with 2 "
              f"workers); local predict {1e3 * sp['local']['predict'] / n_win:.2f} ms/window")
        if not ok_a:
            serial = sp["ray2"]["merge"] + sp["ray2"]["sched"]
            print(f"   (a) 2w predict {1e3 * sp['ray2']['predict']:.1f} ms/step vs 1w {1e3 * sp['ray1']['predict']:.1f} "
                  f"(ideal at the shard() bound {1e3 * sp['ray1']['predict'] / b_shard:.1f}) = slowest worker busy "
                  f"{1e3 * b2max:.1f} + transfer {1e3 * tr2:.1f}; work inflation sum(busy 2w)/busy 1w = {b2 / b1:.2f}x "
                  f"(anchors recomputed alone would be {1 + _mean(n_extra) / n_win:.2f}x; the rest is 2 workers + "
                  f"driver + raylet + other tenants on 2 cores: see on-CPU % and box capacity {capm:.2f}x); "
                  f"speedup / min(shard() bound, capacity) = {speedup / min(b_shard, capm):.2f}; imbalance max/mean busy "
                  f"{b2max / (b2 / 2):.2f}; serial merge+sched+refine {1e3 * serial:.1f} ms/step "
                  f"({100 * serial / (sp['ray2']['predict'] + serial):.0f}% of a 2w step)")
        if not ok_b:
            print(f"   (b) 1w predict - local predict = {1e3 * (sp['ray1']['predict'] - sp['local']['predict']):.1f} ms/step"
                  f" = transfer {1e3 * tr1:.1f} (driver slicing, object store, Ray task round trip) + worker busy "
                  f"excess {1e3 * (b1 - sp['local']['predict']):.1f} (same windows, worker process vs in-process; "
                  f"compare the on-CPU shares: preemption by other tenants shows up there)")
    note = f"{label}: shard() bound {b_shard:.2f}x, best assignment {b_best}, box capacity {capm:.2f}x"
    return [(f"(a) speedup 2w/1w, {label}", speedup, f">={TARGET_SPEEDUP:.2f}", ok_a, note),
            (f"(b) ray1/local, {label}", overhead, f"<={TARGET_OVERHEAD:.2f}", ok_b, None)]


def _bench_datapath(a, recipe, native, rx, src, shared=True):
    import numpy as np
    import torch

    from longvid_dist.config import ParallelConfig
    from longvid_dist.methods.merge import fuse_paths, wls_merge
    from longvid_dist.sampling.planner import Planner
    from longvid_dist.sampling.rng import keyed_generator
    from longvid_dist.sampling.state import SamplerState

    C, F, h, w = WAN_1MIN
    mode = "arenas" if shared else "object store"
    print(f"\n== (c) [{mode}] coordinator data path: {a.recipe} step on a 1-minute Wan latent {list(WAN_1MIN)} fp32, "
          f"2 no-op actors, native window {native}, "
          f"{'shared-memory arenas (the default)' if shared else 'object store only (shared_memory=False)'}")
    # The real executor with only its actor class swapped (in this process; no file is touched):
    # RayExecutor makes its actors from ray_executor.Worker when it is constructed.
    real_worker = rx.Worker
    rx.Worker = NoopWorker
    try:
        ex = rx.RayExecutor("wan", src, ParallelConfig(workers=2, shared_memory=shared), device="cpu",
                            dtype="float32", cpus_per_worker=1)
    finally:
        rx.Worker = real_worker
    try:
        planner = Planner(recipe, F, native, lambda purpose, step: keyed_generator(a.seed, purpose, step))
        ex.install(planner.patches())  # as denoise() does: the patches travel with every call
        state = SamplerState.shared(ex.space.make_scheduler(50))  # timesteps only set gamma(t)
        with _MemWatch() as mem:
            latent = torch.randn(WAN_1MIN, generator=torch.Generator().manual_seed(a.seed))
            buf = torch.empty_like(latent)  # the loop's merge buffer, reused every step
            src_b = latent.numpy().reshape(-1).view(np.uint8)
            dst_b = np.empty_like(src_b)
            np.copyto(dst_b, src_b)  # fault the pages in

            def memcpy(nbytes):
                t0 = time.perf_counter()
                done = 0
                while done < nbytes:
                    n = min(src_b.size, nbytes - done)
                    np.copyto(dst_b[:n], src_b[:n])
                    done += n
                return time.perf_counter() - t0

            def step(i):
                level = state.noise_level(i)  # 0-d: one shared scheduler
                plan = planner.plan(i, float(level))
                wins = [replace(x, timestep=level) for x in plan.windows]  # as denoise() sets them
                m0 = len(ex.metrics)
                gc.collect()
                gc.disable()
                try:
                    u0 = _usage()
                    t0 = time.perf_counter()
                    preds = ex.predict(latent, wins)
                    t1 = time.perf_counter()
                    u1 = _usage()
                    merged = plan.merge(preds, out=buf)
                    t2 = time.perf_counter()
                    u2 = _usage()
                finally:
                    gc.enable()
                assert merged.shape == latent.shape
                du = ([b - c for b, c in zip(u1, u0)], [b - c for b, c in zip(u2, u1)])
                return t1 - t0, t2 - t1, ex.metrics[m0], du, plan, preds[0].nbytes  # preds dropped, as denoise drops them

            t0 = time.perf_counter()
            *_, plan, pred_bytes = step(0)  # warm-up: first arenas or object-store allocations, actors' first call
            print("data path: RayExecutor.predict (real executor, NoopWorker actors)")
            wins = plan.windows
            n_g = sum(x.path == "global" for x in wins)
            shards = rx.shard(wins, 2)
            calls = _worker_calls(wins, shards)
            need = [len({f for x in ws + ex_ for f in x.frames}) for ws, ex_ in calls]
            print(f"warm-up step {time.perf_counter() - t0:.2f}s; windows/step {n_g} global + {len(wins) - n_g} "
                  f"local of {len(wins[0])} frames (+{sum(len(e) for _, e in calls)} recomputed anchors); "
                  f"frames read per worker {need} of {F} (one shared copy sent); latent {_mb(latent.nbytes)}, one window's pred "
                  f"{_mb(pred_bytes)}")
            del plan

            tp, tm, tc, mets, us = [], [], [], [], []
            last = ex.metrics[-1]["bytes_moved"]
            for r in range(a.datapath_repeats):
                i = 1 + r
                if r % 2:  # alternate which contender goes first
                    p_, m_, met, du, _, _ = step(i)
                    c_ = memcpy(met["bytes_moved"])
                else:
                    c_ = memcpy(last)
                    p_, m_, met, du, _, _ = step(i)
                last = met["bytes_moved"]
                tp.append(p_)
                tm.append(m_)
                tc.append(c_)
                mets.append(met)
                us.append(du)
                print(f"  step {i}: predict {p_:.3f}s  merge {m_:.3f}s  | memcpy {_mb(met['bytes_moved'])} {c_:.3f}s  "
                      f"-> {(p_ + m_) / c_:.2f}x  load {_load()}")
                gc.collect()

            ratio = _med([p + m for p, m in zip(tp, tm)]) / _med(tc)
            ok = ratio <= TARGET_DATAPATH
            moved = _mean([m["bytes_moved"] for m in mets])
            gbps = moved / _med(tc) / 1e9
            print(f"median per step: predict {_med(tp):.3f}s + merge {_med(tm):.3f}s = {_med(tp) + _med(tm):.3f}s; "
                  f"memcpy of {_mb(moved)} {_med(tc):.3f}s ({gbps:.1f} GB/s)")
            print(f"(c) (predict + merge) / memcpy = {ratio:.2f}x, target <= {TARGET_DATAPATH:.1f}x -> {_verdict(ok)}"
                  f"  (predict includes the no-op actors' own copies: one fresh copy per window)")
            coord = _med([m["transfer"] for m in mets]) + _med(tm)
            ratio_coord = coord / _med(tc)
            print(f"(c) coordinator side only: (executor transfer + merge) / memcpy = {ratio_coord:.2f}x "
                  f"({1e3 * coord:.0f} ms; transfer = predict wall - slowest actor busy)")

            # Where the time goes: components measured alone on the same plan (no Ray in flight).
            plan = planner.plan(1, float(state.noise_level(1)))
            wins = plan.windows
            lat = latent.numpy()
            sent = lat.nbytes  # one ray.put per step, mapped zero-copy by every worker on the node
            t0 = time.perf_counter()
            ref = rx.ray.put(lat)
            t_slice = time.perf_counter() - t0
            del ref
            back = moved - sent
            preds = [latent[:, list(x.frames)].clone() for x in wins]
            n_g = sum(x.path == "global" for x in wins)
            gbuf = torch.zeros_like(latent)  # as the plan's global-path buffer: reused, its pages in
            t0 = time.perf_counter()
            plan.merge(preds, out=buf)
            t1 = time.perf_counter()
            g = wls_merge(preds[:n_g], wins[:n_g], F, out=gbuf)
            t2 = time.perf_counter()
            loc = wls_merge(preds[n_g:], wins[n_g:], F, out=buf)
            t3 = time.perf_counter()
            fuse_paths(g, loc, 0.01)
            t4 = time.perf_counter()
            del preds, g, loc, gbuf
            busy_max = _mean([max(m["worker_busy"]) for m in mets])
            transfer = _mean([m["transfer"] for m in mets])
            (pc, ps, pf), (mc, ms, mf) = ([_mean([u[j][k] for u in us]) for k in range(3)] for j in range(2))
            lat_ms = 1e3 * latent.nbytes / (gbps * 1e9)
            print(f"  where the time goes (per step): bytes moved {_mb(moved)} = sent {_mb(sent)} ({sent / latent.nbytes:.2f}"
                  f" latents: written once per step {'into the latent arena' if shared else 'by ray.put'}, "
                  f"read in place by the workers on the node) + "
                  f"returned {_mb(back)} ({back / latent.nbytes:.2f} latents: windows overlap ~{back / latent.nbytes:.0f}x)")
            print(f"    predict {1e3 * _med(tp):.0f} ms = executor 'transfer' {1e3 * transfer:.0f} ("
                  f"{'latent copied into its arena, offsets in the calls, views of the reply arenas' if shared else 'ray.put of the latent, object-store put/get of the replies, views of them'}; "
                  f"a ray.put of the latent alone {1e3 * t_slice:.0f}) + slowest no-op actor busy "
                  f"{1e3 * busy_max:.0f} (a fresh copy of x[:, idx] per window from the mapped latent, as a model output"
                  f"{', then emit() into the reply arena' if shared else ''}); driver CPU "
                  f"{1e3 * pc:.0f} ms ({1e3 * ps:.0f} sys, {pf / 1e3:.0f}k page faults)")
            print(f"    merge {1e3 * _med(tm):.0f} ms in the step (driver CPU {1e3 * mc:.0f} ms, {1e3 * ms:.0f} sys, "
                  f"{mf / 1e3:.0f}k page faults) vs {1e3 * (t1 - t0):.0f} ms alone = WLS global {1e3 * (t2 - t1):.0f} + "
                  f"WLS local {1e3 * (t3 - t2):.0f} + fuse {1e3 * (t4 - t3):.0f}")
            print(f"    scale: memcpy of one latent {lat_ms:.0f} ms; this step costs {1e3 * (_med(tp) + _med(tm)) / lat_ms:.0f}"
                  f" latent-copies of time for {moved / latent.nbytes:.1f} latents of bytes moved")
        ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(f"  memory: system in-use peak {_mb(mem.peak - mem.base)} above the pre-(c) baseline (driver + actors + "
              f"object store, other tenants included); driver peak RSS over the whole run {_mb(ru)}")
    finally:
        ex.close()
    return [(f"(c) [{mode}] 1-min latent data path (transfer+merge)/memcpy", ratio_coord,
             f"<={TARGET_DATAPATH:.1f}", ratio_coord <= TARGET_DATAPATH, None),
            (f"(c) [{mode}]   with the no-op actors' copies (predict+merge)/memcpy", ratio, f"<={TARGET_DATAPATH:.1f}",
             ok, None),
            _med([p + m for p, m in zip(tp, tm)])]


if __name__ == "__main__":
    sys.exit(main())
