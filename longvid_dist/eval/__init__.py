"""``longvid eval``: model-free temporal metrics of rendered videos (optionally VBench).

One module per concern: :mod:`~longvid_dist.eval.metrics` (flicker, feature consistency and
:func:`evaluate`, which streams a whole video through all of them),
:mod:`~longvid_dist.eval.flow` (pyramidal Lucas-Kanade optical flow behind ``motion``),
:mod:`~longvid_dist.eval.frames` (RGB frames to tensors and BT.601 luma),
:mod:`~longvid_dist.eval.vbench` (the optional VBench run) and :mod:`~longvid_dist.eval.cli`
(the command, its table and JSON). Videos are decoded by :mod:`longvid_dist.io.video`. The
public names are re-exported here; ``longvid eval`` dispatches to :func:`main_eval`.
"""

from .cli import build_eval_parser, format_table, main_eval
from .flow import FLOW_MAX_SIDE, motion_magnitude, optical_flow
from .metrics import CHUNK_FRAMES, METRIC_DEFINITIONS, evaluate, flicker, frame_features, temporal_consistency
from .vbench import VBENCH_DIMENSIONS, VBENCH_WEIGHTS, run_vbench, vbench_cache_dir, vbench_status

__all__ = [
    "CHUNK_FRAMES",
    "FLOW_MAX_SIDE",
    "METRIC_DEFINITIONS",
    "VBENCH_DIMENSIONS",
    "VBENCH_WEIGHTS",
    "flicker",
    "optical_flow",
    "motion_magnitude",
    "frame_features",
    "temporal_consistency",
    "evaluate",
    "format_table",
    "build_eval_parser",
    "vbench_cache_dir",
    "vbench_status",
    "run_vbench",
    "main_eval",
]
