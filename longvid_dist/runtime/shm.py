"""Shared memory between a coordinator and the Ray workers on its node.

A large step moves several latents' worth of bytes (GLC: the latent out, ~3 latents of
overlapping window predictions back). Through Ray's object store each of those is a fresh
object: allocated, copied in, sealed, mapped, freed; on a machine whose memory is not warm
(a fresh node) the page faults of fresh objects cost many times the copy itself. An
:class:`Arena` is memory allocated once per render and reused every step: the coordinator
writes the latent into one that every worker of its node reads, and each worker writes its
predictions into one of its own that the coordinator's merge reads in place; a call then
carries only offsets.

An arena is an anonymous ``memfd`` owned by the coordinator's process: it has no name in
``/dev/shm``, so nothing is left behind when a process is killed. A worker maps it through
``/proc/<coordinator pid>/fd/<fd>``; a token in the arena's first bytes proves that what it
opened is this arena (a worker on another node opens nothing, or something else, and says so:
it is sent data through Ray instead). Linux only; elsewhere :func:`available` is False.
This module imports no Ray (workers use it too).
"""

from __future__ import annotations

import errno
import mmap
import os
import uuid

import numpy as np
import torch

HEADER = 4096
"""Bytes before the data: the token, on a page of its own."""
ALIGN = 64
"""Alignment of each array in an arena (a cache line)."""


def available() -> bool:
    """Whether this platform has what arenas need (``memfd_create`` and ``/proc``)."""
    return hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")


def layout(shapes: list[tuple[int, ...]], itemsize: int = 4) -> tuple[list[int], int]:
    """Offsets of arrays of ``shapes`` laid out one after another (``ALIGN``-aligned) and the
    bytes they span."""
    offsets, end = [], 0
    for s in shapes:
        offsets.append(end)
        end += -(-int(np.prod(s)) * itemsize // ALIGN) * ALIGN
    return offsets, end


def free_memory() -> int:
    """Bytes this process can still take: the system's available memory, or less under a
    cgroup (v2 or v1) memory limit."""
    with open("/proc/meminfo") as f:
        avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    for limit, used in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit) as a, open(used) as b:
                avail = min(avail, int(a.read()) - int(b.read()))
            break
        except (OSError, ValueError):  # absent, or "max" (no limit)
            continue
    return max(avail, 0)


class Arena:
    """``nbytes`` of shared memory reserved now and mapped with its pages in. Memory that is not
    there is an ``OSError`` here, not a ``SIGBUS`` at first touch nor the OOM killer (a memfd
    has no size limit of its own): an arena may take at most half of :func:`free_memory`."""

    def __init__(self, nbytes: int):
        self.nbytes = HEADER + max(int(nbytes), 1)
        if self.nbytes > free_memory() // 2:
            raise OSError(errno.ENOMEM, f"an arena of {self.nbytes / 2**20:.0f} MiB is more than half of the "
                                        f"{free_memory() / 2**20:.0f} MiB of memory free")
        self.id = uuid.uuid4().hex
        self.fd = os.memfd_create(f"longvid-{self.id[:8]}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, self.nbytes)
            os.posix_fallocate(self.fd, 0, self.nbytes)
            self.mm = mmap.mmap(self.fd, self.nbytes, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)
        except BaseException:
            os.close(self.fd)
            raise
        self.mm[:16] = bytes.fromhex(self.id)
        self.lease = None
        """Weak reference to the storage of the tensors last handed out over this arena
        (:meth:`tensors`); the arena is free once it has expired."""

    @property
    def capacity(self) -> int:
        return self.nbytes - HEADER

    def handle(self) -> tuple[str, int, int, int]:
        """What a worker needs to map it: ``(id, pid, fd, nbytes)``."""
        return self.id, os.getpid(), self.fd, self.nbytes

    def array(self, offset: int, shape: tuple[int, ...]) -> np.ndarray:
        """A float32 view ``shape`` at ``offset`` of the data."""
        return array(self.mm, offset, shape)

    def free(self) -> bool:
        """Whether no tensor handed out over this arena is alive (its memory may be reused)."""
        return self.lease is None or self.lease.expired()

    def tensors(self, offsets: list[int], shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
        """Float32 tensors over the data, sharing one storage made for this call, which the
        arena watches: while any of them (or a view of one) lives, :meth:`free` is False."""
        from torch.multiprocessing.reductions import StorageWeakRef

        base = torch.from_numpy(np.frombuffer(self.mm, np.float32, offset=HEADER))  # the whole data, flat
        out = [base[o // 4:o // 4 + int(np.prod(s))].view(s) for o, s in zip(offsets, shapes)]
        self.lease = StorageWeakRef(base.untyped_storage())
        return out

    def close(self) -> None:
        """Unmap and close (the memory goes when every mapping of it has gone)."""
        self.lease = None
        try:
            self.mm.close()
        except BufferError:  # a tensor over it is still alive: the mapping goes with it
            pass
        os.close(self.fd)


def attach(handle: tuple[str, int, int, int], writable: bool) -> mmap.mmap | None:
    """Map the arena of ``handle`` (:meth:`Arena.handle`) from another process of its node;
    None when this process cannot reach it (another node, another user)."""
    aid, pid, fd, nbytes = handle
    try:
        f = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR if writable else os.O_RDONLY)
    except OSError:
        return None
    try:
        if os.fstat(f).st_size != nbytes:
            return None
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        mm = mmap.mmap(f, nbytes, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE, prot=prot)
    except (OSError, ValueError):
        return None
    finally:
        os.close(f)
    if mm[:16] != bytes.fromhex(aid):  # a file of that number, but not this arena
        mm.close()
        return None
    return mm


def array(mm: mmap.mmap, offset: int, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 view ``shape`` at data ``offset`` of a mapped arena (read-only if the mapping is)."""
    return np.frombuffer(mm, np.float32, count=int(np.prod(shape)), offset=HEADER + offset).reshape(shape)
