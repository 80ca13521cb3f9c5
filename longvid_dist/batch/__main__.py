"""``python -m longvid_dist.batch``: the same as ``longvid batch``."""

import sys

from .cli import main_batch

sys.exit(main_batch())
