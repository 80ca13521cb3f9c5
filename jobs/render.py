"""Ray job entry point for one render: ``python -m jobs.render <longvid render flags>``.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m jobs.render --prompt "a red car at night" --frames 481 --out /data/car.mp4

Joins the job's cluster (``--address`` = ``$RAY_ADDRESS``, else ``auto``) and, without
``--workers``, renders on one worker per GPU of the cluster (1 on a CPU-only cluster).
``--dry-run`` prints the plan without contacting the cluster (give ``--workers`` for the
layout to plan; default 1). Exit codes are ``longvid render``'s: 0 done, 1 failed, 2 bad flags (nothing rendered).
"""

from __future__ import annotations

import sys

from . import describe, settle_auth_mode, wants_help, with_address


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from longvid_dist import cli

    if wants_help(argv) or "--dry-run" in argv:  # a plan needs no cluster: nothing is contacted
        return cli.main(["render", *argv])
    settle_auth_mode()
    argv, address = with_address(argv)
    # Bad flags fail here, before the cluster is contacted (same one-line errors as the CLI).
    try:
        args = cli.build_parser().parse_args(["render", *argv])
        cli.spec_from_args(args)
        parallel = cli.parallel_from_args(args)
    except cli.SpecError:
        return cli.main(["render", *argv])
    if parallel.workers is None:
        # the library's one ray import; the connection is kept for the render
        from longvid_dist.runtime.ray_executor import ClusterError, cluster_gpus, connect

        try:
            connect(parallel.address)  # fails in seconds on an unreachable cluster
            gpus = cluster_gpus()
        except ClusterError as e:
            print(f"longvid render: error: {e}", file=sys.stderr)
            return 1
        workers = str(max(gpus, 1))
        argv += ["--workers", workers]
        describe("render", address, workers=f"{workers} (cluster GPUs: {gpus})")
    else:
        describe("render", address, workers=parallel.workers)
    return cli.main(["render", *argv])


if __name__ == "__main__":
    sys.exit(main())
