"""Ray job entry point for a batch: ``python -m jobs.batch PROMPTS.jsonl --out-dir DIR <flags>``.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m jobs.batch /data/prompts.jsonl --out-dir /data/out --workers-per-video 2

The flags are ``longvid batch``'s (render flags as per-prompt defaults, ``--out-dir``,
``--workers-per-video``, ``--quiet``, ``--preview``, ``--gallery``, ``--dry-run``). The batch joins the job's cluster (``--address`` =
``$RAY_ADDRESS``, else ``auto``). Paths are read and written by the job's driver, on the
node that runs it (the head node unless the job asks for other resources): use absolute
paths on storage that node sees. Exit codes are ``longvid batch``'s: 0 all rendered,
1 some failed, 2 bad flags.
"""

from __future__ import annotations

import sys

from . import describe, settle_auth_mode, wants_help, with_address


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from longvid_dist import cli

    if not wants_help(argv):
        settle_auth_mode()
        argv, address = with_address(argv)
        describe("batch", address)
    return cli.main(["batch", *argv])


if __name__ == "__main__":
    sys.exit(main())
