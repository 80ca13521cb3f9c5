"""Ray job entry points: ``python -m jobs.render ...`` and ``python -m jobs.batch ...``.

Submit them from the repository root, so ``--working-dir .`` uploads this package and the
code (``.gitignore``d paths such as ``.venv/`` are not uploaded)::

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m jobs.render --prompt "a red car at night" --frames 481 --out /data/car.mp4

They are thin: the arguments are the ``longvid render`` / ``longvid batch`` flags; the entry
point adds the cluster to join and hands everything to :func:`longvid_dist.cli.main`.

* Inside a Ray job Ray sets ``RAY_ADDRESS`` (the GCS ``host:port`` of the cluster running the
  job); it is passed on as ``--address`` so the render joins that cluster instead of starting
  a private instance. Outside a job ``--address auto`` is used (the Ray started on this
  machine). An explicit ``--address`` wins.
* ``jobs.render`` without ``--workers`` uses one worker per GPU of the cluster, or 1 on a
  CPU-only cluster.
* Authentication: the driver must connect the way the cluster was started. ``ray start``
  passes its ``RAY_AUTH_MODE`` on to every process of the node, the job's driver included,
  and ``ray start --head`` with no ``RAY_AUTH_MODE`` set token mode in its own environment
  when it found a token. So inside a Ray job an unset ``RAY_AUTH_MODE`` means the cluster
  runs without authentication, and the entry point sets ``RAY_AUTH_MODE=disabled`` (the
  library would otherwise default to ``token``). Outside a Ray job the library's rule holds
  (a user's setting wins, else ``token``). See ``cluster/slurm/README.md``.

The job runs with the Python of the Ray node that runs it (the ``python`` on the ``PATH``
``ray start`` was given), so start Ray from the environment where ``longvid_dist`` is
installed; the uploaded copy of the package in the working directory comes first on
``sys.path``.
"""

from __future__ import annotations

import argparse
import os
import sys

PREFIX = "[longvid job]"


def in_ray_job() -> bool:
    """True in the driver process of a Ray job (``ray job submit``)."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def settle_auth_mode() -> str:
    """Choose ``RAY_AUTH_MODE`` before ray is imported (see the module docstring)."""
    if in_ray_job():
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    return os.environ.get("RAY_AUTH_MODE", "token (library default)")


def split_flags(argv: list[str], *flags: str) -> dict[str, str | None]:
    """Values of ``flags`` (``--flag v`` or ``--flag=v``) in ``argv``, None when absent."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for f in flags:
        p.add_argument(f)
    known, _ = p.parse_known_args(argv)
    return {f: getattr(known, f.lstrip("-").replace("-", "_")) for f in flags}


def with_address(argv: list[str]) -> tuple[list[str], str]:
    """``argv`` with ``--address`` added when it has none: the job's cluster, else ``auto``."""
    address = split_flags(argv, "--address")["--address"]
    if address:
        return argv, address
    address = os.environ.get("RAY_ADDRESS") or "auto"
    return [*argv, "--address", address], address


def wants_help(argv: list[str]) -> bool:
    return "-h" in argv or "--help" in argv


def log(msg: str) -> None:
    print(f"{PREFIX} {msg}", file=sys.stderr, flush=True)


def describe(kind: str, address: str, **extra) -> None:
    """One log line saying where and with which Python the job runs."""
    parts = [f"{kind}: address={address}", f"auth={os.environ.get('RAY_AUTH_MODE', 'token (library default)')}",
             f"python={sys.executable}", f"prefix={sys.prefix}"]
    parts += [f"{k}={v}" for k, v in extra.items()]
    log(" ".join(parts))
