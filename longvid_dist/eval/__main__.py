"""``python -m longvid_dist.eval``: the same command as ``longvid eval``."""

import sys

from .cli import main_eval

sys.exit(main_eval())
