"""What a render will cost, before it runs: ``--dry-run`` plans and the memory pre-flight.

Everything comes from the model's *configs* (never its weights) and the recipe's
:class:`~longvid_dist.sampling.planner.Planner`: the latent shape, each step's windows, model
forwards, bytes through the coordinator, an estimated peak memory per worker (weights, the
largest window's activations, a VAE decode chunk) and of the coordinator, and a wall-time
estimate from a per-family cost table (:data:`COST_TABLE`), scaled by a calibration factor
measured with ``--calibrate`` (one short forward of the transformer alone, stored under
``$LONGVID_CACHE``) when one has been measured for this model and device.

The estimates are first-order models (activations as a few tensors of the hidden size per
token, FLOPs of the linear layers plus attention), meant to tell a 3-minute render from a
3-day one and a fitting request from an impossible one -- not to be exact. ``preflight``
refuses a request whose estimate exceeds the device's memory (``LONGVID_DEVICE_MEMORY``
overrides what the device reports, e.g. ``80GiB``), naming both numbers and what would fit.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace

from .config import ParallelConfig, RenderSpec, SpecError
from .models.registry import ResolvedModel

GiB = 2**30

COST_TABLE = {
    "wan": {
        # effective FLOP/s of one worker's transformer forward (bf16 on an H100-class GPU at
        # ~30% utilisation; fp32 on one CPU core)
        "flops": {"cuda": 3.0e14, "cpu": 2.0e10},
        # fixed cost per transformer block per forward (kernel launches, Python)
        "layer_overhead_s": {"cuda": 4e-4, "cpu": 1.5e-3},
        # VAE decoder FLOPs per output pixel (Wan2.1's VAE; scaled by its width for other configs)
        "decode_flops_per_pixel": 2.0e5,
        "load_bytes_per_s": 1.0e9,
        "transfer_bytes_per_s": 2.0e9,
        "text_tokens": 512,
    },
}
COST_TABLE["skyreels-df"] = COST_TABLE["wan"]  # the same Wan architecture
"""Per-family cost table: throughput and fixed costs per device kind."""

KNOWN_CONFIGS = {
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": {
        "transformer": dict(num_layers=30, num_attention_heads=12, attention_head_dim=128, ffn_dim=8960,
                            in_channels=16, text_dim=4096, patch_size=[1, 2, 2]),
        "vae": dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2),
        "text_encoder": dict(d_model=4096, d_kv=64, num_heads=64, d_ff=10240, num_layers=24, vocab_size=256384),
    },
    "Wan-AI/Wan2.1-T2V-14B-Diffusers": {
        "transformer": dict(num_layers=40, num_attention_heads=40, attention_head_dim=128, ffn_dim=13824,
                            in_channels=16, text_dim=4096, patch_size=[1, 2, 2]),
        "vae": dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2),
        "text_encoder": dict(d_model=4096, d_kv=64, num_heads=64, d_ff=10240, num_layers=24, vocab_size=256384),
    },
}
"""Configs of the known hub ids, used when their files are not in the local Hugging Face cache."""

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


# -- model dimensions from configs ------------------------------------------------------------

@dataclass
class ModelDims:
    """The few numbers of a model's configs the cost model needs."""

    layers: int
    heads: int
    head_dim: int
    ffn: int
    channels: int
    patch: tuple[int, int, int]
    text_dim: int
    vae_base: int
    vae_mult: list
    vae_res_blocks: int
    temporal: int
    spatial: int
    text: dict
    source: str
    """Where the configs came from: ``built-in`` (tiny), ``files`` or ``table`` (known hub id)."""

    @property
    def dim(self) -> int:
        return self.heads * self.head_dim

    def transformer_params(self) -> int:
        d, f = self.dim, self.ffn
        block = 8 * d * d + 2 * d * f + 10 * d  # self + cross attention, FFN, norms/modulation
        embed = self.text_dim * d + d * d + 256 * d + 7 * d * d + 2 * self.channels * math.prod(self.patch) * d
        return self.layers * block + embed

    def text_params(self) -> int:
        t = self.text
        d, inner = t["d_model"], t["d_kv"] * t["num_heads"]
        return t.get("vocab_size", 32128) * d + t["num_layers"] * (4 * d * inner + 3 * d * t["d_ff"])

    def vae_params(self) -> int:
        scale = (max(self.vae_mult) / 4) ** 2
        return int(13800 * self.vae_base ** 2 * scale * self.vae_res_blocks / 2)


def _read_json(path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _configs(resolved: ResolvedModel) -> tuple[dict, str]:
    """``{"transformer", "vae", "text_encoder"}`` config dicts and where they came from."""
    if resolved.is_tiny:
        from .models.tiny import TINY_CONFIGS

        return TINY_CONFIGS[resolved.source.split(":", 1)[1]], "built-in"
    parts = ("transformer", "vae", "text_encoder")
    if os.path.isdir(resolved.source):
        return {p: _read_json(os.path.join(resolved.source, p, "config.json")) for p in parts}, "files"
    try:
        from huggingface_hub import try_to_load_from_cache

        found = {p: try_to_load_from_cache(resolved.source, f"{p}/config.json") for p in parts}
        if all(isinstance(v, str) for v in found.values()):
            return {p: _read_json(v) for p, v in found.items()}, "files"
    except Exception:  # noqa: BLE001 - no cache, offline: the table below
        pass
    if resolved.source in KNOWN_CONFIGS:
        return KNOWN_CONFIGS[resolved.source], "table"
    raise SpecError("model", f"no configs for {resolved.name!r} on this machine (download it first)")


def model_dims(resolved: ResolvedModel) -> ModelDims:
    """The model's dimensions, from its config files (no weights are read)."""
    cfg, source = _configs(resolved)
    t, v = cfg["transformer"], cfg["vae"]
    return ModelDims(
        layers=t["num_layers"], heads=t["num_attention_heads"], head_dim=t["attention_head_dim"], ffn=t["ffn_dim"],
        channels=t["in_channels"], patch=tuple(t.get("patch_size") or (1, 2, 2)), text_dim=t.get("text_dim", 4096),
        vae_base=v.get("base_dim", 96), vae_mult=list(v.get("dim_mult", [1, 2, 4, 4])),
        vae_res_blocks=v.get("num_res_blocks", 2), temporal=v.get("scale_factor_temporal") or 4,
        spatial=v.get("scale_factor_spatial") or 8, text=cfg["text_encoder"], source=source)


# -- devices ----------------------------------------------------------------------------------

def _parse_bytes(text: str) -> int:
    units = {"": 1, "b": 1, "k": 2**10, "kib": 2**10, "m": 2**20, "mib": 2**20, "g": GiB, "gib": GiB, "gb": 10**9,
             "t": 2**40, "tib": 2**40}
    s = text.strip().lower()
    num = s.rstrip("abcdefghijklmnopqrstuvwxyz")
    return int(float(num) * units[s[len(num):].strip()])


def host_memory() -> int:
    """Memory this machine has available now (``MemAvailable``), in bytes."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def target_device(spec: RenderSpec) -> str:
    """``cuda`` or ``cpu``: where the spec's replicas would run on this machine."""
    if spec.device.startswith("cuda"):
        return "cuda"
    if spec.device == "cpu":
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def device_memory(kind: str) -> tuple[int | None, str]:
    """Bytes one worker's device has, and a description (``LONGVID_DEVICE_MEMORY`` overrides);
    None for GPUs this machine does not have (the workers' nodes are asked when they start)."""
    env = os.environ.get("LONGVID_DEVICE_MEMORY")
    if env:
        return _parse_bytes(env), "LONGVID_DEVICE_MEMORY"
    if kind == "cuda":
        import torch

        if torch.cuda.is_available():
            n = torch.cuda.device_count()
            return min(torch.cuda.get_device_properties(i).total_memory for i in range(n)), "the GPU"
        return None, "no GPU on this machine: not checked here"
    return host_memory(), "this machine's available RAM"


# -- the plan ---------------------------------------------------------------------------------

@dataclass
class Memory:
    """Estimated peak bytes of one worker (``weights`` + the larger of forward and decode)."""

    weights: int
    latent: int
    """The latent frames a worker holds for its windows (inputs and predictions, fp32)."""
    activations: int
    """Activations of the largest window's forward."""
    decode: int
    """One VAE decode chunk: decoder activations, feature cache and the chunk's pixels."""

    @property
    def peak(self) -> int:
        return self.weights + max(self.latent + self.activations, self.decode)


@dataclass
class CostPlan:
    """What ``--dry-run`` prints (``--json``: this as a dict)."""

    model: str
    family: str
    config_source: str
    recipe: str
    device: str
    dtype: str
    workers: int
    frames: int
    height: int
    width: int
    steps: int
    latent_shape: list
    latent_bytes: int
    windows_per_step: list
    """``[min, max]`` windows of a step."""
    windows_total: int
    window_frames: int
    """Latent frames of the largest window."""
    window_tokens: int
    forwards_per_window: int
    """2 with classifier-free guidance, else 1."""
    forwards_total: int
    bytes_per_step: int
    """The latent put into the object store once and the predictions returned, per step (0
    in-process)."""
    worker_memory: dict
    worker_peak: int
    coordinator_peak: int
    memory_available: int | None
    memory_source: str
    fits: bool
    refusal: str | None
    suggestions: list
    seconds: dict
    """Estimated wall time per stage and ``total``."""
    calibration: float | None
    """Measured / table time of one forward (``--calibrate``), None when never measured."""
    prompt_tokens: int | None = None
    text_tokens: int = 512
    warnings: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _window_mem(spec: RenderSpec, dims: ModelDims, frames: int, wbytes: int, ulysses: int = 1) -> tuple[int, int]:
    """(latent bytes, activation bytes) of a window of ``frames`` latent frames on one worker."""
    h, w = spec.height // dims.spatial, spec.width // dims.spatial
    tokens = frames * (h // dims.patch[1]) * (w // dims.patch[2]) // max(dims.patch[0], 1)
    lat = 2 * dims.channels * frames * h * w * 4  # the window's frames in and its prediction out, fp32
    act = tokens * (8 * dims.dim + dims.ffn) * wbytes + tokens * dims.head_dim * 2 * 4  # + RoPE tables
    return lat // ulysses, act // ulysses


def _decode_mem(spec: RenderSpec, dims: ModelDims, chunk: int, wbytes: int) -> int:
    hw = spec.height * spec.width
    c0 = dims.vae_base * dims.vae_mult[0]
    per_frame = 6 * c0 * dims.temporal * hw + (2 * dims.vae_res_blocks + 3) * 2 * c0 * hw  # + causal cache
    pixels = chunk * dims.temporal * hw * 3 * (4 + 4 + 1) * 2  # torch float, numpy float, uint8; x2 in flight
    return int(1.5 * per_frame * wbytes) + pixels


def _tokens(spec: RenderSpec, dims: ModelDims, frames: int) -> int:
    h, w = spec.height // dims.spatial, spec.width // dims.spatial
    return frames * (h // dims.patch[1]) * (w // dims.patch[2])


def forward_seconds(dims: ModelDims, tokens: int, kind: str, family: str, text_tokens: int = 512) -> float:
    """Table estimate of one transformer forward over ``tokens`` tokens."""
    d, f, L = dims.dim, dims.ffn, dims.layers
    flops = L * (2 * tokens * (8 * d * d + 2 * d * f) + 4 * tokens * tokens * d + 4 * tokens * text_tokens * d)
    table = COST_TABLE[family]
    return flops / table["flops"][kind] + L * table["layer_overhead_s"][kind]


def _lpt(costs: list[float], workers: int) -> list[list[int]]:
    loads = [0.0] * workers
    out: list[list[int]] = [[] for _ in range(workers)]
    for i in sorted(range(len(costs)), key=lambda i: -costs[i]):
        k = min(range(workers), key=lambda k: loads[k])
        loads[k] += costs[i]
        out[k].append(i)
    return out


MAX_PLANNED = 2_000_000
"""Window frames planned at most; longer plans sample evenly spaced steps."""


def plan(spec: RenderSpec, parallel: ParallelConfig | None = None, device: str | None = None) -> CostPlan:
    """The cost plan of ``spec`` on ``parallel`` (configs and the planner only; no weights)."""
    from .config import resolve_dtype
    from .methods.recipes import get_recipe
    from .sampling.planner import Planner
    from .sampling.rng import keyed_generator

    parallel = parallel or ParallelConfig()
    fam = spec.resolved.family
    dims = model_dims(spec.resolved)
    kind = device or target_device(spec)
    dtype = resolve_dtype(spec.dtype, kind == "cuda")
    wbytes = DTYPE_BYTES[dtype]
    table = COST_TABLE[fam.name]
    workers = parallel.num_workers if parallel.distributed else 1
    sp = parallel.group_size  # a window's tokens (and attention) split over this many workers
    groups = workers // sp
    F = spec.latent_frames
    h, w = spec.height // dims.spatial, spec.width // dims.spatial
    frame_bytes = dims.channels * h * w * 4
    latent_bytes = frame_bytes * F

    recipe = get_recipe(spec.recipe).with_overrides(window=spec.window, stride=spec.stride)
    planner = Planner(recipe, F, fam.latent_frames(fam.native_frames),
                      lambda purpose, step: keyed_generator(spec.seed, purpose, step),
                      temporal_factor=fam.temporal_factor)
    per_window_est = max(planner.window, 1) * 3
    n_sample = max(1, min(spec.steps, MAX_PLANNED // max(per_window_est * max(F // planner.window, 1), 1)))
    steps = sorted({round(i * (spec.steps - 1) / max(n_sample - 1, 1)) for i in range(n_sample)})
    cfg = 2 if spec.guidance > 1 else 1
    counts, largest, step_secs, step_bytes, step_frames = [], 1, [], [], []
    for s in steps:
        t = 1000.0 * (1 - s / spec.steps)
        wins = planner.plan(s, t).windows
        counts.append(len(wins))
        step_frames.append(sum(len(x) for x in wins))
        largest = max([largest, *(len(x) for x in wins)])
        costs = [forward_seconds(dims, _tokens(spec, dims, len(x)), kind, fam.name, table["text_tokens"]) * cfg
                 for x in wins]
        shards = _lpt(costs, groups)
        step_secs.append(max(sum(costs[i] for i in sh) for sh in shards) / sp)
        if parallel.distributed:
            moved = latent_bytes  # put once per step; each node's workers share that copy
            moved += sum(len(x) for x in wins) * frame_bytes  # predictions returned
            step_bytes.append(moved)
        else:
            step_bytes.append(0)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    windows_total = round(mean(counts) * spec.steps)
    bytes_per_step = round(mean(step_bytes))
    cal = load_calibration(spec, kind, dtype)

    weights = (dims.transformer_params() + dims.text_params() + dims.vae_params()) * wbytes
    lat, act = _window_mem(spec, dims, largest, wbytes, sp)
    mem = Memory(weights, lat, act, _decode_mem(spec, dims, spec.decode_chunk, wbytes))
    if parallel.distributed:  # a worker's decode call returns its share of the video's pixels at once
        share = -(-F // workers) * dims.temporal * spec.height * spec.width * 3
        mem.decode += share
    # the coordinator: the latent, every window's prediction, the merged one, scheduler history
    coordinator = latent_bytes * 6 + max(step_frames) * frame_bytes

    secs = {
        "load": weights / table["load_bytes_per_s"] + 2.0,
        "encode": 2 * dims.text_params() * table["text_tokens"] * 2 / table["flops"][kind],
        "denoise": (mean(step_secs) * (cal or 1.0) + bytes_per_step / table["transfer_bytes_per_s"]) * spec.steps,
        "decode": spec.frames * spec.height * spec.width * table["decode_flops_per_pixel"]
        * (dims.vae_base / 96) ** 2 / table["flops"][kind] / workers,
    }
    secs["total"] = sum(secs.values())

    available, source = device_memory(kind)
    p = CostPlan(
        model=spec.model, family=fam.name, config_source=dims.source, recipe=recipe.name, device=kind, dtype=dtype,
        workers=workers, frames=spec.frames, height=spec.height, width=spec.width, steps=spec.steps,
        latent_shape=[dims.channels, F, h, w], latent_bytes=latent_bytes,
        windows_per_step=[min(counts), max(counts)], windows_total=windows_total, window_frames=largest,
        window_tokens=_tokens(spec, dims, largest), forwards_per_window=cfg, forwards_total=windows_total * cfg,
        bytes_per_step=bytes_per_step, worker_memory=asdict(mem), worker_peak=mem.peak,
        coordinator_peak=coordinator, memory_available=available, memory_source=source, fits=True, refusal=None,
        suggestions=[], seconds=secs, calibration=cal, text_tokens=table["text_tokens"])
    _check_fit(p, spec, parallel, dims, mem, wbytes, kind)
    p.prompt_tokens = prompt_tokens(spec.resolved, spec.prompt)
    if p.prompt_tokens is not None and p.prompt_tokens > p.text_tokens:
        p.warnings.append(prompt_warning(p.prompt_tokens, p.text_tokens))
    return p


def _fmt(n: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _need(p: CostPlan, kind: str, local_cpu: bool, worker: int) -> int:
    """Bytes the budget must hold: a worker's device (plus the coordinator when they share RAM)."""
    if local_cpu:
        return worker * p.workers + p.coordinator_peak
    return worker


def _check_fit(p: CostPlan, spec: RenderSpec, parallel: ParallelConfig, dims: ModelDims, mem: Memory,
               wbytes: int, kind: str) -> None:
    """Set ``fits``, ``refusal`` and ``suggestions``: what would fit when this does not."""
    joined = parallel.address is not None
    local_cpu = kind == "cpu" and not joined
    need = _need(p, kind, local_cpu, mem.peak)
    host = host_memory() if kind == "cuda" or p.memory_available is None else p.memory_available
    if kind == "cuda" and p.coordinator_peak > host:
        p.fits = False
        p.refusal = (f"the coordinator needs ~{_fmt(p.coordinator_peak)} for the {_fmt(p.latent_bytes)} fp32 latent "
                     f"and its merge buffers; this machine has {_fmt(host)}")
    if p.memory_available is None or (need <= p.memory_available and p.fits):
        return
    p.fits = False
    where = "per worker" if not local_cpu else f"for {p.workers} worker(s) and the coordinator"
    parts = (f"weights {_fmt(mem.weights)}, window activations {_fmt(mem.activations + mem.latent)}, "
             f"decode chunk {_fmt(mem.decode)}" + (f", coordinator {_fmt(p.coordinator_peak)}" if local_cpu else ""))
    p.refusal = p.refusal or (f"needs ~{_fmt(need)} {where} ({parts}); available: {_fmt(p.memory_available)} ({p.memory_source})")
    fits = lambda m: _need(p, kind, local_cpu, m.peak) <= p.memory_available  # noqa: E731
    if p.latent_bytes * 6 > p.memory_available and local_cpu:
        p.suggestions.append("fewer --frames or a smaller --height/--width (the latent alone does not fit)")
        return
    small = replace(mem, decode=_decode_mem(spec, dims, 1, wbytes) + (mem.decode - _decode_mem(
        spec, dims, spec.decode_chunk, wbytes)))
    if spec.decode_chunk > 1 and fits(small):
        p.suggestions.append("--decode-chunk 1")
    for deg in (2, 4, 8, 16, 32, 64):
        lat, act = _window_mem(spec, dims, p.window_frames, wbytes, deg)
        if fits(replace(small, latent=lat, activations=act)):
            p.suggestions.append(f"--workers {max(p.workers, deg)} --ulysses-degree {deg} (sequence parallelism "
                                 f"splits each window over {deg} GPUs)")
            break
    if kind == "cuda":
        text = dims.text_params() * wbytes
        if fits(replace(small, weights=mem.weights - text)):
            p.suggestions.append("offloading the text encoder to the CPU (after encoding)")
    if spec.window is None or p.window_frames > 4:
        for win in (p.window_frames // 2, p.window_frames // 4):
            if win >= 1:
                lat, act = _window_mem(spec, dims, win, wbytes)
                if fits(replace(small, latent=lat, activations=act)):
                    p.suggestions.append(f"--window {win} (changes the video)")
                    break
    if not p.suggestions:
        p.suggestions.append("fewer --frames or a smaller --height/--width")


def refusal_field(p: CostPlan) -> str:
    """The spec field a refusal is reported against (the biggest contributor)."""
    m = p.worker_memory
    if p.latent_bytes * 6 >= max(m["activations"], m["decode"], m["weights"]) and p.frames > 1:
        return "frames"
    if m["decode"] > m["activations"] + m["latent"] and m["decode"] > m["weights"]:
        return "decode_chunk"
    if m["weights"] > m["activations"]:
        return "model"
    return "height"


def preflight(spec: RenderSpec, parallel: ParallelConfig | None = None) -> CostPlan:
    """The plan, or :class:`SpecError` (one line: both numbers and what would fit) when it does
    not fit the device. Runs before any model is loaded."""
    p = plan(spec, parallel)
    if not p.fits:
        hint = f"; would fit: {'; or '.join(p.suggestions)}" if p.suggestions else ""
        raise SpecError(refusal_field(p), f"does not fit in memory: {p.refusal}{hint}")
    return p


# -- prompts ---------------------------------------------------------------------------------

def prompt_warning(tokens: int, limit: int) -> str:
    return (f"--prompt: {tokens} tokens, but the text encoder reads only the first {limit}; "
            f"the remaining {tokens - limit} are ignored")


def prompt_tokens(resolved: ResolvedModel, prompt: str) -> int | None:
    """Tokens of ``prompt`` for the model's tokenizer (its files only), None when it is not local."""
    try:
        if resolved.is_tiny:
            from .models.tiny import tiny_tokenizer

            tok = tiny_tokenizer(resolved.source.split(":", 1)[1])
        elif os.path.isdir(os.path.join(resolved.source, "tokenizer")):
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(resolved.source, subfolder="tokenizer")
        else:
            return None
        return len(tok(prompt, add_special_tokens=True)["input_ids"])
    except Exception:  # noqa: BLE001 - a count is a courtesy, never a reason to fail
        return None


# -- calibration -----------------------------------------------------------------------------

def _calibration_file() -> str:
    from .models.tiny import tiny_cache_dir

    return str(tiny_cache_dir() / "calibration.json")


def _cal_key(spec: RenderSpec, kind: str, dtype: str) -> str:
    return f"{spec.resolved.source}|{kind}|{dtype}"


def load_calibration(spec: RenderSpec, kind: str, dtype: str) -> float | None:
    """The stored measured/table factor for this model and device, if ``--calibrate`` ran."""
    try:
        return float(_read_json(_calibration_file())[_cal_key(spec, kind, dtype)])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def calibrate(spec: RenderSpec, device: str | None = None) -> float:
    """Measure one short forward of the transformer alone (local weights only, never a download)
    and store measured / table time for this model and device; returns the factor."""
    import torch

    from .api import model_source
    from .config import resolve_dtype
    from .io.video import write_json_atomic

    kind = device or target_device(spec)
    dtype = resolve_dtype(spec.dtype, kind == "cuda")
    src = model_source(spec)
    if not os.path.isdir(src):
        raise SpecError("model", f"--calibrate needs the weights on this machine; {spec.model!r} is not downloaded")
    from diffusers import WanTransformer3DModel

    dims = model_dims(spec.resolved)
    model = WanTransformer3DModel.from_pretrained(src, subfolder="transformer", torch_dtype=getattr(torch, dtype))
    model = model.to(kind).eval()
    frames, side = 2, max(dims.patch[1] * 4, min(spec.height // dims.spatial, 32))
    x = torch.randn(1, dims.channels, frames, side, side, dtype=model.dtype, device=kind)
    text = torch.randn(1, 64, dims.text_dim, dtype=model.dtype, device=kind)
    t = torch.tensor([500.0], device=kind)
    with torch.no_grad():
        model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)  # warm-up
        if kind == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)
        if kind == "cuda":
            torch.cuda.synchronize()
        measured = time.perf_counter() - t0
    tokens = frames * (side // dims.patch[1]) * (side // dims.patch[2])
    factor = measured / forward_seconds(dims, tokens, kind, spec.resolved.family.name, 64)
    path = _calibration_file()
    try:
        data = _read_json(path)
    except (OSError, ValueError):
        data = {}
    data[_cal_key(spec, kind, dtype)] = factor
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json_atomic(path, data)
    return factor


# -- text ------------------------------------------------------------------------------------

def _dur(s: float) -> str:
    if s < 90:
        return f"{s:.1f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def format_plan(p: CostPlan) -> str:
    """The human-readable plan ``--dry-run`` prints."""
    m = p.worker_memory
    where = f"{p.workers} Ray worker(s)" if p.workers > 1 or p.bytes_per_step else "this process"
    lines = [
        f"plan: {p.model} ({p.family}, configs: {p.config_source}), recipe {p.recipe}, on {where} ({p.device}, "
        f"{p.dtype})",
        f"  video        {p.frames} frames of {p.width}x{p.height}, {p.steps} steps",
        f"  latent       {' x '.join(map(str, p.latent_shape))} (C x F x h x w), {_fmt(p.latent_bytes)} fp32",
        f"  windows      {p.windows_per_step[0]}"
        + (f"-{p.windows_per_step[1]}" if p.windows_per_step[1] != p.windows_per_step[0] else "")
        + f" per step, {p.windows_total} in total; largest {p.window_frames} latent frames = {p.window_tokens} tokens",
        f"  forwards     {p.forwards_total} model forwards ({p.forwards_per_window} per window"
        + (", classifier-free guidance)" if p.forwards_per_window == 2 else ")"),
        f"  transfer     {_fmt(p.bytes_per_step)} per step through the coordinator"
        + ("" if p.bytes_per_step else " (in-process)"),
        f"  memory       ~{_fmt(p.worker_peak)} peak per worker: weights {_fmt(m['weights'])}, latent "
        f"{_fmt(m['latent'])}, window activations {_fmt(m['activations'])}, decode chunk {_fmt(m['decode'])}; "
        f"coordinator ~{_fmt(p.coordinator_peak)}",
        "  available    " + (f"{_fmt(p.memory_available)} ({p.memory_source}): " if p.memory_available else
                                f"unknown ({p.memory_source})" + (": " if not p.fits else ""))
        + ("fits" if p.fits and p.memory_available else "" if p.fits else f"DOES NOT FIT: {p.refusal}"),
    ]
    if p.suggestions:
        lines.append(f"  would fit    {'; or '.join(p.suggestions)}")
    s = p.seconds
    cal = f"calibrated x{p.calibration:.2f}" if p.calibration else "table estimate; --calibrate measures a forward"
    lines.append(f"  wall time    ~{_dur(s['total'])} (load {_dur(s['load'])}, encode {_dur(s['encode'])}, "
                 f"denoise {_dur(s['denoise'])}, decode {_dur(s['decode'])}; {cal})")
    lines += [f"  warning      {w}" for w in p.warnings]
    return "\n".join(lines)
