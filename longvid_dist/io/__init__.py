"""Video input/output: streaming ffmpeg writer, the chunked ffmpeg reader and probing."""

from longvid_dist.io.video import (
    SUPPORTED_OUTPUTS,
    VideoInputError,
    VideoWriter,
    check_output_path,
    check_video,
    iter_frames,
    output_kind,
    probe_video,
    read_frames,
    sidecar_path,
    write_json_atomic,
)

__all__ = [
    "SUPPORTED_OUTPUTS",
    "VideoInputError",
    "VideoWriter",
    "check_output_path",
    "check_video",
    "iter_frames",
    "output_kind",
    "probe_video",
    "read_frames",
    "sidecar_path",
    "write_json_atomic",
]
