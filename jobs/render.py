"""Ray job entry point for one render: ``python -m jobs.render <longvid render flags>``.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m jobs.render --prompt "a red car at night" --frames 481 --out /data/car.mp4

Joins the job's cluster (``--address`` = ``$RAY_ADDRESS``, else ``auto``) and, without
``--workers``, renders on one worker per GPU of the cluster (1 on a CPU-only cluster).
Exit codes are ``longvid render``'s: 0 done, 1 failed, 2 bad flags (nothing rendered).
"""

from __future__ import annotations

import sys

from . import describe, settle_auth_mode, split_flags, wants_help, with_address


def cluster_gpus(address: str) -> int:
    """Join the cluster at ``address`` and count its GPUs (the connection is kept for the render)."""
    from longvid_dist.runtime.ray_executor import connect, ray  # the library's one ray import

    connect(address)  # fails in seconds on an unreachable cluster; raises ClusterError
    return int(ray.cluster_resources().get("GPU", 0))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from longvid_dist import cli

    if wants_help(argv):
        return cli.main(["render", *argv])
    settle_auth_mode()
    argv, address = with_address(argv)
    # Bad flags fail here, before the cluster is contacted (same one-line errors as the CLI).
    try:
        cli.spec_from_args(cli.build_parser().parse_args(["render", *argv]))
    except cli.SpecError:
        return cli.main(["render", *argv])
    workers = split_flags(argv, "--workers")["--workers"]
    if workers is None:
        from longvid_dist.runtime.ray_executor import ClusterError

        try:
            gpus = cluster_gpus(address)
        except ClusterError as e:
            print(f"longvid render: error: {e}", file=sys.stderr)
            return 1
        workers = str(max(gpus, 1))
        argv += ["--workers", workers]
        describe("render", address, workers=f"{workers} (cluster GPUs: {gpus})")
    else:
        describe("render", address, workers=workers)
    return cli.main(["render", *argv])


if __name__ == "__main__":
    sys.exit(main())
