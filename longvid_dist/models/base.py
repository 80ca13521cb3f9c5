"""The adapter interface: all the sampling loop and runtime know about a model family.

The loop sees latents as ``[C, F, h, w]`` (one video, fp32). An adapter converts to and from
the pipeline's own layout, encodes prompts, applies classifier-free guidance exactly as the
family's diffusers pipeline does, hands out fresh schedulers, and decodes temporal chunks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch

from .registry import FamilyInfo


@dataclass
class Cond:
    """Encoded conditioning of one prompt (kept on the adapter's device)."""

    prompt_embeds: torch.Tensor
    """Positive prompt embeddings, pipeline layout (e.g. ``[1, 512, D]`` for Wan)."""
    negative_embeds: torch.Tensor | None
    """Negative prompt embeddings, or None when guidance is off (scale <= 1)."""
    guidance: float
    """Classifier-free guidance scale."""
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    """Further per-prompt tensors a family's transformer takes (attention masks, pooled
    embeddings), by name."""

    def to_numpy(self) -> dict:
        """Plain arrays, for the Ray object store (never pickled torch CPU tensors)."""
        neg = None if self.negative_embeds is None else self.negative_embeds.float().cpu().numpy()
        extras = {k: (v.float() if v.is_floating_point() else v).cpu().numpy() for k, v in self.extras.items()}
        return {"pos": self.prompt_embeds.float().cpu().numpy(), "neg": neg, "guidance": self.guidance,
                "extras": extras}

    @classmethod
    def from_numpy(cls, data: dict, device, dtype: torch.dtype) -> "Cond":
        """Inverse of :meth:`to_numpy`: floating arrays in ``dtype``, the rest (masks) as they were."""
        def t(a):
            if a is None:
                return None
            x = torch.from_numpy(a).to(device)
            return x.to(dtype) if x.is_floating_point() else x

        return cls(t(data["pos"]), t(data["neg"]), float(data["guidance"]),
                   {k: t(v) for k, v in data.get("extras", {}).items()})


BRANCHES = ("cond", "uncond")
"""Classifier-free-guidance branches a worker can be asked for alone (``split_guidance``)."""


def guided(forward, cond: Cond, ctx, branch: str | None = None) -> torch.Tensor:
    """Classifier-free guidance as the Wan pipelines compute it: ``forward(embeds)`` for the
    positive prompt and, when ``cond`` has negative embeddings, for the negative one, combined by
    :func:`combine_guidance` in the model's dtype. ``branch`` (``cond`` or ``uncond``): that
    branch's raw output alone, for a coordinator that runs the two on separate workers and
    combines them itself (bit for bit the same). ``ctx.branch`` tells patches which one runs."""
    if branch is not None:
        if branch not in BRANCHES or (branch == "uncond" and cond.negative_embeds is None):
            raise ValueError(f"guidance branch {branch!r}: one of {', '.join(BRANCHES)} (uncond needs guidance > 1)")
        ctx.branch = branch
        return forward(cond.prompt_embeds if branch == "cond" else cond.negative_embeds)
    ctx.branch = "cond"
    out = forward(cond.prompt_embeds)
    if cond.negative_embeds is not None:
        ctx.branch = "uncond"
        out = combine_guidance(out, forward(cond.negative_embeds), cond.guidance)
    return out


def combine_guidance(cond_out: torch.Tensor, uncond_out: torch.Tensor, guidance: float) -> torch.Tensor:
    """``uncond + g * (cond - uncond)`` (classifier-free guidance, Ho & Salimans 2022, Eq. 6)."""
    return uncond_out + guidance * (cond_out - uncond_out)


def blend_cond_arrays(parts: list[tuple[dict, float]]) -> dict:
    """A weighted blend of conditionings in :meth:`Cond.to_numpy` form (``[(arrays, weight)]``,
    weights summing to 1): floating arrays are summed in float32 in the order given, masks and
    other integer arrays are united (elementwise max); an array equal in every part (the shared
    negative prompt) is kept exactly as it is. Pure and deterministic: every worker computes the
    same blend."""
    def mix(arrays: list):
        if arrays[0] is None:
            return None
        if all(a is arrays[0] or np.array_equal(a, arrays[0]) for a in arrays[1:]):
            return arrays[0]
        if not np.issubdtype(arrays[0].dtype, np.floating):
            return np.maximum.reduce(arrays)
        out = np.zeros(arrays[0].shape, np.float32)
        for a, (_, w) in zip(arrays, parts):
            out += np.float32(w) * a.astype(np.float32)
        return out

    first = parts[0][0]
    return {"pos": mix([p["pos"] for p, _ in parts]), "neg": mix([p["neg"] for p, _ in parts]),
            "guidance": first["guidance"],
            "extras": {k: mix([p["extras"][k] for p, _ in parts]) for k in first.get("extras", {})}}


class LatentSpace(ABC):
    """Coordinator-side view of a model: latent geometry, initial noise and a fresh scheduler,
    built from the pipeline's config files only, so the coordinator never loads weights.
    Latents live on the CPU in fp32 at the coordinator."""

    def __init__(self, scheduler, channels: int, temporal: int, spatial: int):
        self.scheduler = scheduler
        """The pipeline's scheduler (its class and config make fresh ones)."""
        self.channels, self.temporal, self.spatial = channels, temporal, spatial
        """Latent channels, and pixel frames / pixels per latent frame / latent pixel."""

    @classmethod
    @abstractmethod
    def from_source(cls, source: str) -> "LatentSpace":
        """Read configs of a local diffusers folder."""

    @staticmethod
    def read_configs(source: str) -> tuple[dict, dict, dict]:
        """``model_index.json``, the transformer's and the VAE's ``config.json`` of a folder."""
        import json
        from pathlib import Path

        root = Path(source)
        return tuple(json.loads((root / p).read_text())
                     for p in ("model_index.json", "transformer/config.json", "vae/config.json"))

    @abstractmethod
    def init_noise(self, generator: torch.Generator, frames: int, height: int, width: int) -> torch.Tensor:
        """Initial latent noise ``[C, F, h, w]`` drawn exactly as the stock pipeline draws it."""

    @abstractmethod
    def make_scheduler(self, steps: int, latent_shape: tuple[int, ...] | None = None):
        """A fresh scheduler (the pipeline's own class and config) with timesteps set; families
        whose schedule depends on the video's size (LTX's dynamic shift) read ``latent_shape``
        ``(C, F, h, w)``."""

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(C, F, h, w)`` of a video's latent."""
        return (self.channels, (frames - 1) // self.temporal + 1, height // self.spatial, width // self.spatial)

    @abstractmethod
    def predict_x0(self, latent: torch.Tensor, pred: torch.Tensor, scheduler, step: int) -> torch.Tensor:
        """Clean-latent estimate from the merged model prediction at step index ``step``."""


class ModelAdapter(ABC):
    """A loaded model replica of one family."""

    family: FamilyInfo
    latent_space: type[LatentSpace]
    """The family's config-only coordinator view."""

    @classmethod
    @abstractmethod
    def load(cls, source: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> "ModelAdapter":
        """Load from a local diffusers folder or a hub id (``from_pretrained``)."""

    @classmethod
    def load_replica(cls, source: str, device: str = "cpu", dtype: torch.dtype = torch.float32,
                     offload: str = "none", lora: Sequence[tuple[str, float]] = ()) -> "ModelAdapter":
        """A replica ready to render: :meth:`load` (on the CPU under ``offload``), the ``lora``
        adapters fused in (:meth:`apply_lora`), then :meth:`enable_offload` to ``device``."""
        adapter = cls.load(source, device="cpu" if offload != "none" else device, dtype=dtype)
        adapter.apply_lora(lora)
        adapter.enable_offload(offload, device)
        return adapter

    def apply_lora(self, lora: Sequence[tuple[str, float]]) -> None:
        """Fuse LoRA adapters (``(safetensors path, scale)`` pairs, in order) into the transformer
        with diffusers' own loader: ``load_lora_weights`` (which reads the usual formats: diffusers/
        peft, original Wan, musubi), ``set_adapters`` with the scales, ``fuse_lora``, then
        ``unload_lora_weights`` drops the peft wrappers, so the transformer is plain ``nn.Linear``
        layers holding ``W + scale * B @ A * alpha / r``: no extra matmuls per forward, and the
        attention patches, sequence-parallel hooks and offload see the stock module tree.
        Refused (``ValueError`` naming ``lora``) for a pipeline without a LoRA loader."""
        self.lora = [(str(path), float(scale)) for path, scale in lora]
        if not lora:
            return
        check_lora_loader(type(self.pipe), getattr(self.pipe, "transformer_2", None) is not None)
        import warnings

        names = [f"lora{i}" for i in range(len(lora))]
        for name, (path, _) in zip(names, lora):
            with warnings.catch_warnings():  # several adapters on one model are what --lora asks for
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                self.pipe.load_lora_weights(path, adapter_name=name)
        self.pipe.set_adapters(names, [float(scale) for _, scale in lora])
        self.pipe.fuse_lora(components=["transformer"], adapter_names=names)
        self.pipe.unload_lora_weights()

    @abstractmethod
    def encode_prompt(self, prompt: str, negative_prompt: str, guidance: float) -> Cond:
        """Encode a prompt once per render."""

    @abstractmethod
    def cond_from_numpy(self, data: dict) -> Cond:
        """Inverse of :meth:`Cond.to_numpy`, onto this replica's device and dtype."""

    space: LatentSpace
    """This replica's coordinator view (noise, scheduler, geometry): the same code the
    coordinator runs without weights."""
    patch_key: object = None
    """Name of the installed patches (``install``'s ``key``), None when stock."""
    lora: list = []
    """The LoRA adapters ``(path, scale)`` fused into this replica (:meth:`apply_lora`)."""

    @abstractmethod
    def predict(self, latent: torch.Tensor, t: torch.Tensor, cond: Cond, role: str = "plain",
                anchor_key=None) -> torch.Tensor:
        """Guided model prediction for a window ``[C, L, h, w]`` (fp32 out) at noise level ``t``:
        a 0-d timestep for every frame, or ``[L]`` timesteps, one per latent frame (families with
        the ``per_frame_timesteps`` capability). ``role``/``anchor_key`` tell an installed
        attention patch the window's part (ABAM)."""

    @abstractmethod
    def install(self, attention=None, temporal_rope=None, key=None) -> None:
        """Install an attention patch and/or temporal RoPE map; ``None`` restores stock."""

    num_layers: int
    """Transformer blocks (attention layers a patch can select)."""

    @abstractmethod
    def model_info(self) -> dict:
        """``num_layers``, ``dim``, ``family``: identifies the architecture for shipped data."""

    @abstractmethod
    def begin_step(self) -> None:
        """Forget per-step attention state."""

    @abstractmethod
    def decode(self, latent: torch.Tensor, chunk: int, skip: int = 0) -> Iterator[np.ndarray]:
        """Decode ``[C, F, h, w]`` in temporal chunks of ``chunk`` latent frames; yields float
        frames in [0, 1] as ``[n, H, W, 3]`` numpy arrays, in order. The pixels of the first
        ``skip`` latent frames (warm-up context) are not yielded."""

    @abstractmethod
    def decode_context(self) -> int:
        """Latent frames of warm-up after which a decode starting mid-video is exact."""

    # -- memory: text encoders and offload ---------------------------------------------------
    offload: str = "none"
    """CPU offload of the pipeline's models (:meth:`enable_offload`): none, model or sequential."""

    def text_encoder_names(self) -> list[str]:
        """Pipeline components that only encode prompts (``text_encoder``, ``text_encoder_2``...)."""
        comps = getattr(getattr(self, "pipe", None), "components", {}) or {}
        return [k for k, v in comps.items() if k.startswith("text_encoder") and isinstance(v, torch.nn.Module)]

    def release_text_encoders(self) -> list[str]:
        """Free the text encoders once conditions are encoded (their weights are often the
        largest after the transformer's: UMT5-XXL is 5.7B parameters for Wan); returns the
        names freed. :meth:`restore_text_encoders` loads them again from the pipeline's folder
        when a new prompt comes. Kept as they are under CPU offload (their weights already wait
        on the CPU) and for a pipeline not loaded from a folder (nothing to reload from)."""
        pipe = getattr(self, "pipe", None)
        source = getattr(getattr(pipe, "config", {}), "get", lambda k, d=None: d)("_name_or_path")
        if pipe is None or self.offload != "none" or not source:
            return []
        names = self.text_encoder_names()
        if not names:
            return []
        released = getattr(self, "_released_text", {})
        for name in names:
            m = getattr(pipe, name)
            released[name] = (type(m), m.dtype, source)
            setattr(pipe, name, None)  # the pipeline's config keeps the class, for the reload
        self._released_text = released
        m = None
        free_memory(self.device)
        return names

    def restore_text_encoders(self) -> list[str]:
        """Load the text encoders :meth:`release_text_encoders` freed (same files, same dtype,
        so the embeddings are bit for bit the ones before); returns the names loaded."""
        released = getattr(self, "_released_text", {})
        for name, (cls, dtype, source) in list(released.items()):
            m = cls.from_pretrained(source, subfolder=name, dtype=dtype).eval().to(self.device)
            setattr(self.pipe, name, m)
            del released[name]
        return list(released)

    def text_encoders_loaded(self) -> bool:
        """Whether every text encoder is in memory (False after :meth:`release_text_encoders`)."""
        return not getattr(self, "_released_text", {})

    def enable_offload(self, mode: str, device) -> None:
        """Keep the pipeline's weights on the CPU and move them to ``device`` when used
        (diffusers' accelerate hooks): ``model`` moves one whole model (text encoder,
        transformer, VAE) at a time, ``sequential`` one layer at a time (slowest, least GPU
        memory). Inputs then go to ``device``, the execution device."""
        if mode == "none":
            return
        if mode == "model":
            self.pipe.enable_model_cpu_offload(device=device)
        elif mode == "sequential":
            # diffusers' enable_sequential_cpu_offload, except the text encoders: accelerate's
            # per-layer hooks fail on transformers' UMT5/T5 embeddings (accelerate 1.16,
            # transformers 5), and they run once per prompt, so they move whole, like ``model``.
            from accelerate import cpu_offload, cpu_offload_with_hook

            self.pipe.to("cpu")
            text = set(self.text_encoder_names())
            for name, m in self.pipe.components.items():
                if not isinstance(m, torch.nn.Module):
                    continue
                if name in text:
                    cpu_offload_with_hook(m, torch.device(device))
                else:
                    cpu_offload(m, torch.device(device), offload_buffers=len(m._parameters) > 0)
        else:
            raise ValueError(f"unknown offload {mode!r}: use none, model or sequential")
        self.offload = mode
        self.device = torch.device(device)

    def split_plans(self) -> list:
        """``(module, context-parallel plan)`` pairs saying where a forward's tokens are split and
        gathered (``models.parallel.register_split_hooks``). Families with the
        ``context_parallel`` capability implement it."""
        raise NotImplementedError(f"{self.family.name} models have no sequence-parallel support")

    def _init_hooks(self) -> None:
        """The state every adapter's method hooks share (call from ``__init__``)."""
        from .hooks import AttnContext

        self.ctx = AttnContext()
        """What the installed patches see of the current call (layer, branch, grid, mask...)."""
        self.ctx.rotate = self._rotate_at
        self.patch_key = None
        """Key of the installed patches (None: stock); installing the same key again is free."""
        self.sp = None
        """This replica's :class:`~.parallel.SequenceParallel` group, or None."""
        self._sp_hooks: list = []
        self._installed = (None, None)
        """The installed ``(attention, temporal_rope)``, re-installed around SP changes."""

    def route_attention(self, attns: Sequence, stock, attention, processor) -> None:
        """Set the self-attention processor of each layer's module in ``attns``:
        ``processor(patch, ctx, layer, sp)`` on the layers ``attention`` selects, and on every
        layer under sequence parallelism (plain attention where no patch applies: every layer
        must run the group's attention); elsewhere the layer's stock processor ``stock[layer]``."""
        from .hooks import AttentionPatch

        plain = AttentionPatch()
        for i, attn in enumerate(attns):
            use = attention is not None and attention.applies(i)
            if use or self.sp is not None:
                attn.set_processor(processor(attention if use else plain, self.ctx, i, self.sp))
            else:
                attn.set_processor(stock[i])

    def enable_sequence_parallel(self, sp) -> None:
        """Split this replica's forwards over ``sp``'s group (``models.parallel``) where
        :meth:`split_plans` says, every self-attention layer through the group's attention; None
        turns it off. The installed patches are installed again around it."""
        from .parallel import register_split_hooks

        for h in getattr(self, "_sp_hooks", []):
            h.remove()
        self._sp_hooks = []
        self.sp = sp
        if sp is not None:
            heads = self.transformer.config.num_attention_heads
            if heads % sp.ulysses:
                raise ValueError(f"--ulysses-degree {sp.ulysses} must divide the model's {heads} attention heads")
            self._sp_hooks = [h for m, plan in self.split_plans() for h in register_split_hooks(m, plan, sp)]
        self.patch_key = None
        self.install(*self._installed)

    @classmethod
    def attention_heads(cls, source: str) -> int:
        """Attention heads of the transformer in ``source`` (read from its config, no weights)."""
        import json
        from pathlib import Path

        return int(json.loads((Path(source) / "transformer" / "config.json").read_text())["num_attention_heads"])


def check_lora_loader(pipeline_cls, two_experts: bool = False) -> None:
    """Refuse ``--lora`` (``ValueError`` naming ``lora``) for a pipeline class diffusers gives no
    LoRA loader mixin, or one with two experts (Wan2.2 A14B: the file does not say which expert
    it is for)."""
    if not callable(getattr(pipeline_cls, "load_lora_weights", None)):
        raise ValueError(f"lora: {pipeline_cls.__name__} has no LoRA loader in diffusers (no load_lora_weights); "
                         f"drop --lora")
    if two_experts:
        raise ValueError(f"lora: {pipeline_cls.__name__} here has two experts (transformer, transformer_2); "
                         f"a LoRA per expert is not supported: drop --lora")


def check_lora(source: str, lora: Sequence[tuple[str, float]]) -> None:
    """Refuse LoRA files the pipeline in ``source`` cannot take, reading configs and the LoRA files
    only (the transformer is built empty, without weights): the pipeline has no LoRA loader, a
    key is for another component than the transformer, names a module the transformer lacks,
    or has a shape that module does not take (a LoRA of another model size). ``ValueError``
    starting ``lora:``, naming the file and the first offending keys."""
    if not lora:
        return
    import diffusers
    from accelerate import init_empty_weights

    index = diffusers.DiffusionPipeline.load_config(source)  # a folder, or a hub id's cached configs
    pipe_cls = getattr(diffusers, index["_class_name"])
    check_lora_loader(pipe_cls, (index.get("transformer_2") or [None])[0] is not None)
    tcls = getattr(diffusers, index["transformer"][1])
    with init_empty_weights():
        modules = dict(tcls.from_config(tcls.load_config(source, subfolder="transformer")).named_modules())
    for path, _ in lora:
        try:
            state = pipe_cls.lora_state_dict(path)
        except Exception as e:  # noqa: BLE001 - any unreadable file is one line
            raise ValueError(f"lora: {path}: diffusers cannot read it as a LoRA "
                             f"({type(e).__name__}: {str(e).strip()[:200]})") from None
        state = state[0] if isinstance(state, tuple) else state
        bad = [f"{k} ({why})" for k, v in state.items() if (why := _lora_key_problem(k, v.shape, modules))]
        if bad:
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise ValueError(f"lora: {path}: {len(bad)} of {len(state)} keys match no layer of this "
                             f"{tcls.__name__}: {'; '.join(bad[:3])}{more}. Allowed: "
                             f"'transformer.<module>.lora_A.weight' / '.lora_B.weight' over its linear layers, "
                             f"e.g. 'transformer.blocks.0.attn1.to_q.lora_A.weight'")


def _lora_key_problem(key: str, shape, modules: dict) -> str | None:
    """Why a LoRA key (diffusers layout) does not fit the transformer's ``modules``, or None."""
    if not key.startswith("transformer."):
        return "not for the transformer"
    name, sep, part = key.removeprefix("transformer.").partition(".lora_")
    if not sep:
        return "not a lora_A/lora_B weight"
    m = modules.get(name)
    if m is None:
        return "no such module"
    if not isinstance(m, torch.nn.Linear):
        return f"{type(m).__name__}, not a linear layer"
    if part == "A.weight" and shape[-1] != m.in_features:
        return f"takes {shape[-1]} inputs, the layer {m.in_features}"
    if part in ("B.weight", "B.bias") and shape[0] != m.out_features:
        return f"gives {shape[0]} outputs, the layer {m.out_features}"
    return None


def onload(module) -> None:
    """Move an offloaded model to its execution device before calling its submodules directly
    (diffusers' ``apply_forward_hook`` does this for ``vae.decode``); nothing without a hook."""
    hook = getattr(module, "_hf_hook", None)
    if hook is not None and hasattr(hook, "pre_forward"):
        hook.pre_forward(module)


def free_memory(device=None) -> None:
    """Return freed memory: Python garbage, the CUDA cache, and glibc's free heap pages (a
    freed CPU tensor otherwise stays in the process's resident memory)."""
    import gc

    gc.collect()
    if device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


WHOLE_LATENT = 1 << 20
"""``decode_context()`` of a VAE that does not stream exactly: a context longer than any video,
so a distributed decode is one piece from frame 0."""


def pixel_chunks(frames: np.ndarray, chunk: int, skip: int, temporal: int) -> Iterator[np.ndarray]:
    """Pixel frames of a whole-latent decode in pieces of ``chunk`` latent frames, without the
    pixels of the first ``skip`` latent frames (latent frame 0 decodes to one pixel frame, each
    later one to ``temporal``)."""
    def pixel(f: int) -> int:
        return 0 if f == 0 else 1 + temporal * (f - 1)

    latent_frames = (frames.shape[0] - 1) // temporal + 1
    for start in range(skip, latent_frames, chunk):
        yield frames[pixel(start):pixel(min(start + chunk, latent_frames))]
