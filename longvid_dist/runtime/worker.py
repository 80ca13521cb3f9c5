"""The Worker: one model replica that encodes prompts, predicts windows and decodes chunks.

The same class runs in-process under ``LocalExecutor`` and as the Ray actor of ``RayExecutor``
(vLLM's engine -> executor -> worker split). It is a pure function of its inputs (DESIGN
decision 3): arrays in and out are numpy (DESIGN decision 7), conditioning travels as numpy
embeddings tagged with a version, attention/RoPE patches as plain data. A worker knows its
``rank`` and its ``group`` (the ranks that share one window's attention; one rank until
sequence parallelism fills it in). It imports no Ray: a restarted actor is a fresh Worker.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Iterator, Sequence

import numpy as np
import torch

from ..methods.windows import Window


class NotPrepared(LookupError):
    """This replica holds no render of the version asked for (a restarted actor): the executor
    prepares it again (:meth:`Worker.prepare`) and repeats the call."""


class Worker:
    """One model replica on one device."""

    def __init__(self, family: str, source: str, device: str = "cpu", dtype: str = "float32",
                 threads: int = 0, rank: int = 0, group: Sequence[int] = (0,), offload: str = "none",
                 keep_text_encoders: bool = False, lora: Sequence[tuple[str, float]] = ()):
        if threads > 0:
            torch.set_num_threads(threads)
        self.family, self.source, self.device, self.dtype = family, source, device, dtype
        self.rank = rank
        """This worker's index among the render's workers."""
        self.offload = offload
        """CPU offload of the replica (``RenderSpec.offload``)."""
        self.lora = [(str(p), float(s)) for p, s in lora]
        """LoRA adapters ``(path, scale)`` fused into the replica when it loads (``RenderSpec.lora``)."""
        self.keep_text_encoders = keep_text_encoders
        """Keep the text encoders loaded after encoding (else freed, reloaded for a new prompt)."""
        self.group = list(group)
        """Ranks that share one window's attention (sequence parallelism); ``[rank]`` today."""
        self.adapter = None
        self.conds: dict = {}
        self.cond_version: str | None = None
        self._arrays: dict = {}
        self._blends: dict = {}
        self.patches: dict | None = None
        """The patches :meth:`prepare` installed (plain data, ``Planner.patches()``)."""
        self.prepared: str | None = None
        """Conditioning version of the render :meth:`prepare` keeps here (None: none)."""
        self.busy = 0.0
        """Seconds spent predicting, over the worker's life."""
        self.epoch: int | None = None
        """Which formation of the render's process group this worker joined (None: none)."""
        self._store = None
        """Rank 0's TCP store for the world being formed (:meth:`open_store`), until it joins."""
        self._shared: dict = {}
        """The coordinator's arenas this worker has mapped (:meth:`map_shared`), by id."""

    @classmethod
    def from_adapter(cls, adapter, rank: int = 0, group: Sequence[int] = (0,),
                     keep_text_encoders: bool = True) -> "Worker":
        """A worker around an adapter already loaded in this process (a caller's adapter keeps
        its text encoders unless ``keep_text_encoders`` is False)."""
        w = cls(adapter.family.name, "", str(adapter.device), str(adapter.dtype).removeprefix("torch."),
                rank=rank, group=group, offload=adapter.offload, keep_text_encoders=keep_text_encoders,
                lora=adapter.lora)
        w.adapter = adapter
        return w

    # -- model ------------------------------------------------------------------------------
    def load(self):
        """The model replica, loaded on first use (with the family's adapter, its LoRAs fused in)."""
        if self.adapter is None:
            from ..models.registry import FAMILIES, adapter_class

            device = self.device
            if device == "cuda":
                device = "cuda:0"  # under Ray, CUDA_VISIBLE_DEVICES is this actor's GPU
            self.adapter = adapter_class(FAMILIES[self.family]).load_replica(
                self.source, device, getattr(torch, self.dtype), offload=self.offload, lora=self.lora)
        return self.adapter

    def warm(self) -> bool:
        """Load the model now (so the first step does not pay for it)."""
        self.load()
        return True

    def pid(self) -> int:
        """Process id (tests kill it; the batch checks workers answer)."""
        return os.getpid()

    # -- sequence-parallel group -----------------------------------------------------------
    def open_store(self, world_size: int, timeout: float = 600.0) -> int:
        """As rank 0 of a world being formed: leave any world, and serve its TCP store on a port
        the OS picks and binds at once (a port picked first and bound later can be taken in
        between); returns the port, which the other ranks' :meth:`join_world` connect to."""
        import datetime

        import torch.distributed as dist

        self.leave_world()
        self._store = dist.TCPStore("0.0.0.0", 0, world_size, is_master=True, wait_for_workers=False,
                                    timeout=datetime.timedelta(seconds=timeout))
        return self._store.port

    def join_world(self, address: str, port: int, world_rank: int, world_size: int, ulysses: int, ring: int,
                   epoch: int, timeout: float = 600.0) -> bool:
        """Join the render's process group (one world, mesh ``(group, ring, ulysses)``) through
        rank 0's store at ``address:port`` (:meth:`open_store`) and split this replica's
        forwards over its group (``models/parallel.py``). Every worker of the render calls this
        concurrently; ``epoch`` names this formation of the world."""
        import datetime

        import torch.distributed as dist

        from ..models.parallel import build_groups

        adapter = self.load()
        wait = datetime.timedelta(seconds=timeout)
        store, self._store = self._store, None
        if world_rank != 0:
            self.leave_world()
            store = dist.TCPStore(address, port, world_size, is_master=False, timeout=wait)
        elif store is None or store.port != port:
            raise RuntimeError(f"worker {self.rank} has no store at port {port} to join (restarted?)")
        backend = "nccl" if str(adapter.device).startswith("cuda") else "gloo"
        dist.init_process_group(backend, store=store, rank=world_rank, world_size=world_size, timeout=wait)
        adapter.enable_sequence_parallel(build_groups(world_rank, world_size, ulysses, ring))
        self.rank, self.epoch = world_rank, epoch
        return True

    def leave_world(self) -> None:
        """Leave the process group (if any) and run forwards unsplit again."""
        import torch.distributed as dist

        if self.adapter is not None and getattr(self.adapter, "sp", None) is not None:
            self.adapter.enable_sequence_parallel(None)
        if dist.is_initialized():
            dist.destroy_process_group()
        self.epoch = None

    # -- conditioning -----------------------------------------------------------------------
    def encode(self, prompts: dict[str, tuple[str, str]], guidance: float) -> dict[str, dict]:
        """Encode each conditioning id's (prompt, negative prompt): numpy embeddings per id. The
        text encoders are freed afterwards (reloaded here for the next prompts) unless
        ``keep_text_encoders``: the denoising loop never needs them."""
        adapter = self.load()
        adapter.restore_text_encoders()
        out = {cid: adapter.encode_prompt(p, n, guidance).to_numpy() for cid, (p, n) in prompts.items()}
        self.release_text_encoders()
        return out

    def release_text_encoders(self) -> list[str]:
        """Free this replica's text encoders (unless ``keep_text_encoders``); the names freed."""
        if self.keep_text_encoders or self.adapter is None:
            return []
        return self.adapter.release_text_encoders()

    def _conditions(self, version: str, conds: dict[str, dict]) -> dict:
        """The replica-side conditions of ``version`` (converted once per render)."""
        if version != self.cond_version:
            adapter = self.load()
            self.release_text_encoders()  # a worker that did not encode never needs its own
            self.conds = {cid: adapter.cond_from_numpy(c) for cid, c in conds.items()}
            self._arrays = conds
            self._blends: dict = {}
            self.cond_version = version
        return self.conds

    MAX_BLENDS = 64
    """Storyboard blends kept per render (each is one prompt embedding); recomputed past that."""

    def _cond(self, cid: str):
        """The condition of id ``cid``: an encoded one, or a storyboard blend of encoded ones
        (``blend:sb0=9,sb1=3``, :func:`longvid_dist.storyboard.parse_blend`) computed here from
        their embeddings once per id."""
        if cid in self.conds:
            return self.conds[cid]
        if cid not in self._blends:
            from ..models.base import blend_cond_arrays
            from ..storyboard import parse_blend

            parts = parse_blend(cid)
            if parts is None:
                raise KeyError(f"no conditioning {cid!r} (have: {', '.join(self.conds)})")
            if len(self._blends) >= self.MAX_BLENDS:
                self._blends.clear()
            self._blends[cid] = self.load().cond_from_numpy(blend_cond_arrays([(self._arrays[k], w) for k, w in parts]))
        return self._blends[cid]

    def install(self, patches: dict | None) -> None:
        """Install a render's attention/RoPE patches (free when the same ones are installed)."""
        from ..methods.registry import build_patches

        adapter = self.load()
        key = repr(sorted(patches.items())) if patches else None
        if key == adapter.patch_key:
            return
        attention, rope = build_patches(patches, adapter.model_info())
        adapter.install(attention, rope, key=key)

    def prepare(self, version: str, conds: dict[str, dict], patches: dict | None) -> bool:
        """Keep a render's conditions (``version``) and patches on this replica, so that every
        step's :meth:`predict_step` carries only the latent and the windows."""
        self.install(patches)
        self._conditions(version, conds)
        self.patches, self.prepared = patches, version
        return True

    # -- windows ----------------------------------------------------------------------------
    def map_shared(self, handles: list[tuple[tuple, bool]], keep: list[str]) -> bool:
        """Map the coordinator's arenas (:mod:`~longvid_dist.runtime.shm`): ``(handle, writable)``
        each, the latent read-only and this worker's reply arena writable; drop any mapped one
        whose id is not in ``keep``. False when one cannot be mapped from here (another node):
        the coordinator then sends this worker its data through Ray."""
        from .shm import attach

        for aid in [a for a in self._shared if a not in keep]:
            del self._shared[aid]  # unmapped when the last view of it goes
        ok = True
        for handle, writable in handles:
            if handle[0] not in self._shared:
                mm = attach(handle, writable)
                ok = ok and mm is not None
                if mm is not None:
                    self._shared[handle[0]] = mm
        return ok

    def predict_step(self, version: str, items: list[tuple[list[int] | slice, Window, bool]], epoch: int | None,
                     reply: bool, apart: bool, shared: tuple | None, *frames: np.ndarray) -> tuple:
        """:meth:`predict` with the conditions and patches kept by :meth:`prepare` for
        ``version`` (:class:`NotPrepared` when they are not here). ``frames``: the latent, whole
        or in pieces along the frame axis (small pieces travel inside a Ray call). ``shared``:
        ``(latent, replies)`` in the coordinator's arenas (:meth:`map_shared`) instead, either
        may be None: ``latent`` ``(arena id, shape)`` read in place of ``frames``, ``replies``
        ``(arena id, [(offset, shape)] per kept prediction)`` written in place of returning them.
        Returns ``(predictions, busy)``, or with ``apart`` each kept prediction and then the busy
        seconds as values of their own: under Ray each is then an object of its own, so small
        predictions travel inside the reply rather than through the object store."""
        from .shm import array

        if version != self.prepared:
            raise NotPrepared(f"worker {self.rank} holds render {self.prepared}, not {version} (restarted?)")
        latent, replies = shared or (None, None)
        lost = [a for a, _ in filter(None, (latent, replies)) if a not in self._shared]
        if lost:
            raise NotPrepared(f"worker {self.rank} has not mapped arena {lost[0]} (restarted?)")
        if latent:
            frames = (array(self._shared[latent[0]], 0, latent[1]),)
        into = [array(self._shared[replies[0]], o, s) for o, s in replies[1]] if replies else None
        x = frames[0] if len(frames) == 1 else np.concatenate(frames, axis=1)
        out, busy = self.predict(version, self._arrays, self.patches, x, items, epoch, reply, into)
        out = [] if into is not None else out
        return (*out, busy) if apart else (out, busy)

    def predict(self, version: str, conds: dict[str, dict], patches: dict | None, frames: np.ndarray,
                items: list[tuple[list[int] | slice, Window, bool]], epoch: int | None = None,
                reply: bool = True, into: list[np.ndarray] | None = None) -> tuple[list[np.ndarray], float]:
        """Guided predictions of windows over ``frames`` ``[C, n, h, w]`` (the whole latent, read
        only: under Ray one copy per step shared by the node's workers, zero-copy, in the
        coordinator's latent arena or the object store).
        ``items``: per window ``(indices into frames (:func:`frame_index`), window, keep)``, anchors
        before their followers; returns the kept predictions ``[C, len(window), h, w]`` and the
        busy seconds. Each window's noise level is its ``timestep``.

        In a sequence-parallel group every member runs the same windows; ``epoch`` must be the
        world this worker joined (a restarted worker has none and refuses, so the executor
        re-forms the world), and only the member with ``reply`` sends predictions back (``into``:
        written there instead, see :func:`emit`)."""
        if epoch != self.epoch:
            raise RuntimeError(f"worker {self.rank} is not in process group {epoch} (it is in {self.epoch})")
        t0 = time.perf_counter()
        adapter = self.load()
        self.install(patches)  # a restarted actor gets the patches with its first call
        self._conditions(version, conds)
        if "per_frame_timesteps" not in adapter.family.capabilities and any(np.ndim(w.timestep) for _, w, _ in items):
            raise ValueError(f"{adapter.family.name} models take one timestep per window, not one per frame")
        x = as_tensor(frames)  # [C, n, h, w]; x[:, idx] is a view for a slice, a copy for a list
        adapter.begin_step()  # anchors record keys/values for the followers after them
        out = []
        for idx, w, keep in items:
            anchor = w.anchor if w.role == "follow" else w.frames
            extra = {"causal_block": w.causal_block} if (w.causal_block or 1) > 1 else {}  # block-causal mask
            if w.branch is not None:  # one guidance branch; the coordinator combines them
                extra["branch"] = w.branch
            p = adapter.predict(x[:, idx], torch.from_numpy(np.asarray(w.timestep)), self._cond(w.cond),
                                role=w.role, anchor_key=anchor, **extra)
            if keep and reply:
                emit(p, out, into)
        busy = time.perf_counter() - t0
        self.busy += busy
        return out, busy

    def predict_block(self, version: str, conds: dict[str, dict], patches: dict | None, block: np.ndarray,
                      t: float, cache_id: str, offset: int, write: bool, sink: int,
                      window: int, cond: str = "main", branch: str | None = None) -> tuple[np.ndarray, float]:
        """Guided prediction of one causal block ``[C, B, h, w]`` at timestep ``t`` against this
        replica's rolling KV cache ``cache_id`` (causal rollout; ``branch``: one guidance branch
        alone, see :meth:`predict`); returns it and the busy seconds.
        A restarted replica has lost its cache: the coordinator re-writes it (``cache_frames``)."""
        t0 = time.perf_counter()
        adapter = self.load()
        self.install(patches)
        self._conditions(version, conds)
        p = adapter.predict_block(as_tensor(block), torch.tensor(t, dtype=torch.float32), self._cond(cond), cache_id,
                                  offset, write, sink, window, branch)
        busy = time.perf_counter() - t0
        self.busy += busy
        return p.cpu().numpy(), busy

    def cache_frames(self, cache_id: str) -> list[int]:
        """Absolute frames held by KV cache ``cache_id`` (empty when this replica has none)."""
        c = getattr(self.load(), "caches", {}).get(cache_id)
        return c.frames() if c is not None else []

    # -- decoding ---------------------------------------------------------------------------
    def decode_context(self) -> int:
        """Latent frames of warm-up after which a decode starting mid-video is exact."""
        return self.load().decode_context()

    def iter_decode(self, latent: np.ndarray, chunk: int, skip: int = 0) -> Iterator[np.ndarray]:
        """uint8 ``[n, H, W, 3]`` chunks of ``latent[:, skip:]``, warmed up on the first ``skip``
        latent frames; ``chunk`` latent frames of pixels alive at a time."""
        return (to_uint8(f) for f in self.load().decode(as_tensor(latent), chunk, skip=skip))

    def decode_pieces(self, latent: np.ndarray, skip: int, chunk: int) -> Iterator[np.ndarray]:
        """:meth:`iter_decode` as a generator method: under Ray a streaming task whose every
        ``chunk`` latent frames of pixels are an object of their own."""
        yield from self.iter_decode(latent, chunk, skip)

    def decode(self, latent: np.ndarray, skip: int, chunk: int) -> np.ndarray:
        """All pixels of ``latent[:, skip:]`` as one uint8 ``[n, H, W, 3]`` array."""
        return np.concatenate(list(self.iter_decode(latent, chunk, skip)))


def emit(p: torch.Tensor, out: list, into: list[np.ndarray] | None) -> None:
    """Keep window prediction ``p`` (fp32 ``[C, L, h, w]``): appended to ``out`` as a numpy array,
    or with ``into`` (views of the coordinator's reply arena, one per kept prediction, in order)
    copied into the next of those (from a GPU: one device-to-host copy), ``None`` in ``out``."""
    if into is None:
        out.append(p.cpu().numpy())
        return
    dst = into[len(out)]
    if tuple(p.shape) != dst.shape or p.dtype != torch.float32:
        raise ValueError(f"prediction {p.dtype} {tuple(p.shape)} does not fit its reply slot float32 {dst.shape}")
    torch.from_numpy(dst).copy_(p)
    out.append(None)


def frame_index(frames: Sequence[int]) -> slice | list[int]:
    """Index of ``frames`` on a latent's frame axis: a slice (``x[:, idx]`` is then a view, no
    copy) when they are evenly spaced and increasing, as most windows' are; else a list."""
    step = frames[1] - frames[0] if len(frames) > 1 else 1
    if frames and step > 0 and all(b - a == step for a, b in zip(frames, frames[1:])):
        return slice(frames[0], frames[-1] + 1, step)
    return list(frames)


def as_tensor(a: np.ndarray) -> torch.Tensor:
    """A tensor over a numpy array without copying, even when the object store made it
    read-only (callers only read it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Float frames in [0, 1] -> uint8, rounded to nearest."""
    return np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8)
