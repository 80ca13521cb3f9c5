"""Video input/output: streaming ffmpeg writer, probing and decoding helpers."""

from longvid_dist.io.video import (
    SUPPORTED_OUTPUTS,
    VideoWriter,
    check_output_path,
    output_kind,
    probe_video,
    read_frames,
    sidecar_path,
    write_json_atomic,
)

__all__ = [
    "SUPPORTED_OUTPUTS",
    "VideoWriter",
    "check_output_path",
    "output_kind",
    "probe_video",
    "read_frames",
    "sidecar_path",
    "write_json_atomic",
]
