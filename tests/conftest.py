"""Shared fixtures: the tiny Wan model, built once per machine into a test-only cache, and a
module-scoped local Ray instance.

``LONGVID_CACHE`` is set at import time (before any test imports the library's model code
or spawns the CLI), so tests never write into the user's ``~/.cache`` and every process of
a test session -- this one and the CLI subprocesses -- reuses the same built tiny model.
An explicit ``LONGVID_CACHE`` in the environment is respected.

``OMP_NUM_THREADS`` defaults to 1 (also before torch is imported): the tiny model's tensors
are far too small to gain from intra-op threads, and on a loaded 2-core machine OpenMP
threads make the VAE decode ~10x slower; the CLI renders run in parallel processes instead.
Bit-exactness tests compare computations made in the same process, so this changes nothing
they check.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("LONGVID_CACHE", os.path.join(tempfile.gettempdir(), "longvid-test-cache"))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "render(name): the CLI render a test inspects (tests/test_cli.py)")


@pytest.fixture(scope="session")
def tiny_path() -> str:
    """Folder of the built-in tiny Wan pipeline in diffusers format (built on first use)."""
    from longvid_dist.models.tiny import tiny_model_path

    return str(tiny_model_path("tiny-wan"))


@pytest.fixture(scope="session")
def tiny_adapter(tiny_path):
    """The tiny model loaded through the library's Wan adapter (CPU, float32)."""
    from longvid_dist.models.wan import WanAdapter

    return WanAdapter.load(tiny_path)


@pytest.fixture(scope="session")
def df_path() -> str:
    """Folder of the built-in tiny SkyReels-V2 diffusion-forcing pipeline."""
    from longvid_dist.models.tiny import tiny_model_path

    return str(tiny_model_path("tiny-skyreels-df"))


@pytest.fixture(scope="session")
def df_adapter(df_path):
    """The tiny SkyReels-V2 DF model through the library's adapter (CPU, float32)."""
    from longvid_dist.models.skyreels import SkyReelsDFAdapter

    return SkyReelsDFAdapter.load(df_path)


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance per test module: started here, joined by the module's executors
    (which leave it running), shut down after the module."""
    from longvid_dist.runtime.ray_executor import connect, shutdown

    assert connect(None, quiet=True) == "local"
    yield
    shutdown()
