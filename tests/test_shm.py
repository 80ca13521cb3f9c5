"""Shared-memory arenas (runtime/shm.py) between processes, without Ray: a second process maps
an arena by the handle alone, writes where the owner reads, cannot map what is not that arena,
and the owner knows when no tensor handed out over an arena is alive."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from longvid_dist.runtime import shm

pytestmark = pytest.mark.skipif(not shm.available(), reason="needs memfd_create and /proc")

CHILD = r"""
import sys, numpy as np
from longvid_dist.runtime import shm
aid, pid, fd, n, writable = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
mm = shm.attach((aid, pid, fd, n), writable)
if mm is None:
    print("none"); sys.exit(0)
a = shm.array(mm, 256, (3, 4))
print(float(a.sum()))
if writable:
    a[...] = np.arange(12, dtype=np.float32).reshape(3, 4)
else:
    try:
        a[0, 0] = 1.0
    except ValueError:
        print("read-only")
"""


def _child(handle, writable: bool) -> str:
    aid, pid, fd, n = handle
    r = subprocess.run([sys.executable, "-c", CHILD, aid, str(pid), str(fd), str(n), "1" if writable else "0"],
                       capture_output=True, text=True, timeout=60, pass_fds=())
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_another_process_maps_an_arena_by_its_handle():
    a = shm.Arena(4096)
    try:
        a.array(256, (3, 4))[...] = 2.0
        assert _child(a.handle(), writable=False) == ["24.0", "read-only"]  # sees the owner's data, cannot write
        assert _child(a.handle(), writable=True) == ["24.0"]
        assert np.array_equal(a.array(256, (3, 4)), np.arange(12, dtype=np.float32).reshape(3, 4))  # its write
    finally:
        a.close()


def test_what_is_not_the_arena_is_not_mapped():
    a, b = shm.Arena(4096), shm.Arena(4096)
    try:
        aid, pid, fd, n = a.handle()
        assert _child((b.id, pid, fd, n), writable=False) == ["none"]  # a's memory, b's token
        assert _child((aid, pid, fd, n + 4096), writable=False) == ["none"]  # another size
        assert _child((aid, pid, 999, n), writable=False) == ["none"]  # no such descriptor
        assert _child((aid, 2 ** 22 + 7, fd, n), writable=False) == ["none"]  # no such process
    finally:
        a.close()
        b.close()


def test_an_arena_is_free_only_when_no_tensor_over_it_lives():
    a = shm.Arena(1 << 16)
    try:
        offsets, end = shm.layout([(2, 3, 5), (4, 7)])
        assert offsets == [0, 128] and end == 256  # 30 and 28 floats, each 64-byte aligned
        assert a.free()
        x, y = a.tensors(offsets, [(2, 3, 5), (4, 7)])
        view = y[1:, 2:]
        del x, y
        assert not a.free()  # a view of one of them still reads the arena
        a.array(128, (4, 7))[...] = 5.0
        assert float(view.sum()) == 5.0 * 3 * 5
        del view
        assert a.free()
    finally:
        a.close()


def test_an_arena_that_cannot_be_had_is_an_os_error_not_a_crash():
    with pytest.raises(OSError, match="more than half"):
        shm.Arena(shm.free_memory())  # refused before any page is reserved (a memfd has no limit)
    assert not any("longvid" in f for f in os.listdir("/dev/shm"))  # memfds leave no name behind
