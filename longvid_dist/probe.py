"""``longvid probe``: measure each layer and write a FreeLOC profile JSON.

The probing itself (:class:`~longvid_dist.methods.probe.LayerProbe`, ranking) lives in
:mod:`longvid_dist.methods.probe`; this module parses arguments, loads the model and writes
the file.
"""

from __future__ import annotations

import sys

from .methods.probe import POSITION_THRESHOLD, PUBLISHED_TSA_FRACTION, probe


def main_probe(argv: list[str] | None = None) -> int:
    from .cli import _Parser
    from .config import RenderSpec, SpecError, flag_name
    from .io.video import write_json_atomic

    p = _Parser(prog="longvid probe", description="Measure each self-attention layer's sensitivity to "
                "temporal position shifts and context restriction, and write a FreeLOC profile.")
    p.add_argument("--model", default="tiny-wan", help="model name or folder (default: %(default)s)")
    p.add_argument("--frames", type=int, default=161, help="pixel frames of the probe video, 4k+1 (default: 161)")
    p.add_argument("--height", type=int, default=None, help="frame height (default: the model's)")
    p.add_argument("--width", type=int, default=None, help="frame width (default: the model's)")
    p.add_argument("--out", required=True, help="profile JSON to write")
    p.add_argument("--queries", type=int, default=256, help="query tokens sampled per layer (default: 256)")
    p.add_argument("--window", type=int, default=8, help="sliding-window half width in frames (default: 8)")
    p.add_argument("--tsa-fraction", type=float, default=PUBLISHED_TSA_FRACTION,
                   help="fraction of layers, the most context-sensitive, given VRPR+TSA (default: 17/30, the "
                        "published Wan2.1-1.3B split)")
    p.add_argument("--position-threshold", type=float, default=POSITION_THRESHOLD,
                   help="relative attention-logit change under key position shifts from which a layer not "
                        "given vrpr+tsa gets vrpr (else none) (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the probe noise and query sample")
    a = p.parse_args(argv)
    try:
        spec = RenderSpec(prompt="probe", model=a.model, frames=a.frames, height=a.height, width=a.width,
                          out=a.out + ".unused.mp4", recipe="direct")
    except SpecError as e:
        flag = flag_name(e.field)
        print(f"longvid probe: error: {flag}: {e.message}", file=sys.stderr)
        return 2
    if not a.out.endswith(".json"):
        print("longvid probe: error: --out: must be a .json file", file=sys.stderr)
        return 2
    for name, v, ok in (("--queries", a.queries, a.queries >= 1), ("--window", a.window, a.window >= 1),
                        ("--tsa-fraction", a.tsa_fraction, 0 <= a.tsa_fraction <= 1),
                        ("--position-threshold", a.position_threshold, a.position_threshold >= 0)):
        if not ok:
            print(f"longvid probe: error: {name}: out of range, got {v}", file=sys.stderr)
            return 2
    from .api import load_adapter

    adapter = load_adapter(spec)
    from .sampling.rng import keyed_generator

    profile = probe(adapter, a.frames, spec.height, spec.width, keyed_generator(a.seed, "probe"), seed=a.seed,
                    queries=a.queries, window=a.window, tsa_fraction=a.tsa_fraction,
                    position_threshold=a.position_threshold)
    profile["model"] = a.model
    profile["dim"] = adapter.model_info()["dim"]  # with num_layers, how a shipped profile is matched
    profile["source"] = (f"longvid probe --model {a.model} --frames {a.frames} (seed {a.seed})")
    write_json_atomic(a.out, profile)
    by_mode = {m: [k for k, v in profile["layers"].items() if v == m] for m in ("vrpr+tsa", "vrpr", "none")}
    print(f"wrote {a.out}: {profile['num_layers']} layers, "
          + "; ".join(f"{m} on {', '.join(ks) or 'none'}" for m, ks in by_mode.items()))
    return 0
