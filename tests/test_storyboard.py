"""Storyboards (``--storyboard``): validation naming the key, segment prompts mapped onto windows
(blends across boundaries, the global prompt on GLC's global path and ABAM anchors), each
distinct prompt encoded once, the sidecar and preview, batch rows and the CLI's refusal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from longvid_dist.config import RenderSpec, SpecError, output_key
from longvid_dist.storyboard import Storyboard, StoryboardConds, blend_id, parse_blend

TWO = {"segments": [{"prompt": "a red car drives in the city", "frames": 41},
                    {"prompt": "a blue bird flies in the sky", "frames": 40}]}
GEO = dict(frames=81, height=32, width=48, steps=2, guidance=5.0, seed=3, negative_prompt="blurry",
           checkpoint_every=0)


# -- validation (no torch) -------------------------------------------------------------------------

BAD = [
    ({"segments": [{"prompt": "a", "frames": 41}, {"prompt": "b", "frames": 39}]}, "storyboard.segments[1].frames",
     "sum to 80"),
    ({"segments": [{"prompt": "a", "frames": 41}, {"prompt": " ", "frames": 40}]}, "storyboard.segments[1].prompt",
     "non-empty"),
    ({"segments": [{"prompt": "a", "frames": 81, "fps": 3}]}, "storyboard.segments[0].fps", "unknown key"),
    ({"segments": [{"prompt": "a", "frames": 81}], "music": "x"}, "storyboard.music", "unknown key"),
    ({"segments": [{"prompt": "a", "frames": 0}, {"prompt": "b", "frames": 81}]}, "storyboard.segments[0].frames",
     "positive integer"),
    ({"segments": [{"prompt": "a", "frames": 81.0}]}, "storyboard.segments[0].frames", "positive integer"),
    ({"segments": []}, "storyboard.segments", "non-empty list"),
    ({"global": "", "segments": [{"prompt": "a", "frames": 81}]}, "storyboard.global", "non-empty"),
    ([1, 2], "storyboard", "JSON object"),
    ("/no/such/story.json", "storyboard", "cannot read"),
]


@pytest.mark.parametrize("board,field,words", BAD, ids=[b[1] for b in BAD])
def test_bad_storyboard_names_the_key(board, field, words):
    with pytest.raises(SpecError) as e:
        RenderSpec(storyboard=board, frames=81, out="/tmp/x.mp4")
    assert e.value.field == field and words in e.value.message


def test_prompt_is_optional_with_a_storyboard_and_is_its_global_prompt():
    with pytest.raises(SpecError) as e:
        RenderSpec(frames=81, out="/tmp/x.mp4")
    assert e.value.field == "prompt"
    bare = RenderSpec(storyboard=TWO, frames=81, out="/tmp/x.mp4")
    assert bare.prompt == "" and bare.storyboard.global_prompt is None
    withp = RenderSpec(prompt="a road trip", storyboard=TWO, frames=81, out="/tmp/x.mp4")
    assert withp.storyboard.global_prompt == "a road trip"
    with pytest.raises(SpecError) as e:
        RenderSpec(prompt="other", storyboard={**TWO, "global": "a road trip"}, frames=81, out="/tmp/x.mp4")
    assert e.value.field == "prompt"
    # round trip through the plain dict (sidecar, checkpoint): the same spec and output key
    again = RenderSpec(**withp.to_dict())
    assert again == withp and again.output_key() == withp.output_key()
    assert withp.to_dict()["storyboard"] == {"global": "a road trip", **TWO}


def test_storyboard_file_and_output_key(tmp_path):
    path = tmp_path / "story.json"
    path.write_text(json.dumps(TWO))
    spec = RenderSpec(storyboard=str(path), frames=81, out="/tmp/x.mp4")
    assert spec.storyboard == Storyboard.parse(TWO, 81)
    assert spec.output_key() != RenderSpec(storyboard={"segments": [{"prompt": "x", "frames": 81}]}, frames=81,
                                           out="/tmp/x.mp4").output_key()
    # without a storyboard the key is what it always was (older checkpoints and manifests stay valid)
    plain = RenderSpec(prompt="a cat", out="/tmp/x.mp4").to_dict()
    assert output_key(plain) == output_key({k: v for k, v in plain.items() if k != "storyboard"})


# -- windows -> conditioning ids ---------------------------------------------------------------------

def test_window_conditions_blend_by_pixel_frames():
    board = Storyboard.parse({"global": "a road trip", **TWO}, 81)
    c = StoryboardConds(board, 21, 4, "blurry")
    assert c.conditions() == {"sb0": ("a red car drives in the city", "blurry"),
                              "sb1": ("a blue bird flies in the sky", "blurry"), "global": ("a road trip", "blurry")}
    assert c.shares[0] == {"sb0": 1} and c.shares[10] == {"sb0": 4} and c.shares[11] == {"sb1": 4}
    assert c.cond_for(range(0, 8)) == "sb0" and c.cond_for(range(12, 21)) == "sb1"
    # latent frames 8..13: pixels 29..52, 12 of them in segment 0 (29..40), 12 in segment 1
    assert c.cond_for(range(8, 14)) == "blend:sb0=12,sb1=12"
    assert parse_blend("blend:sb0=12,sb1=4") == [("sb0", 0.75), ("sb1", 0.25)] and parse_blend("sb0") is None
    # padding frames (weight 0) and repeated frames do not count
    assert c.cond_for((9, 10, 11, 10), (1.0, 1.0, 1.0, 0.0)) == "blend:sb0=8,sb1=4"
    # the global prompt goes to the global path and to anchors; locals keep their segments
    assert c.cond_for(range(0, 8), path="global") == "global"
    assert c.cond_for(range(0, 8), path="local", role="anchor") == "global"
    assert c.cond_for(range(0, 8), path="local", role="follow") == "sb0"
    # helpers for chunked (diffusion-forcing) plans
    assert c.cond_at(3) == "sb0" and c.cond_at(11) == "sb1" and c.prompt_at(15) == "a blue bird flies in the sky"
    # without a global prompt the global path blends what it covers
    assert StoryboardConds(Storyboard.parse(TWO, 81), 21, 4).cond_for(range(21), path="global") == \
        "blend:sb0=41,sb1=40"


def test_repeated_prompts_share_one_condition():
    board = Storyboard.parse({"global": "b", "segments": [{"prompt": "a", "frames": 21}, {"prompt": "b", "frames": 40},
                                                          {"prompt": "a", "frames": 20}]}, 81)
    c = StoryboardConds(board, 21, 4)
    assert c.segment_ids == ["sb0", "sb1", "sb0"] and set(c.conditions()) == {"sb0", "sb1"}
    assert c.global_id == "sb1"
    assert blend_id({"sb0": 3, "sb1": 0}) == "sb0"


def test_blend_of_encoded_arrays():
    from longvid_dist.models.base import blend_cond_arrays

    a = {"pos": np.ones((1, 4, 2), np.float32), "neg": np.full((1, 4, 2), 7, np.float32), "guidance": 5.0,
         "extras": {"mask": np.array([[1, 1, 0, 0]])}}
    b = {"pos": np.zeros((1, 4, 2), np.float32), "neg": a["neg"].copy(), "guidance": 5.0,
         "extras": {"mask": np.array([[1, 1, 1, 0]])}}
    out = blend_cond_arrays([(a, 0.75), (b, 0.25)])
    assert np.array_equal(out["pos"], np.full((1, 4, 2), 0.75, np.float32))
    assert out["neg"] is a["neg"]  # the shared negative prompt is kept exactly
    assert np.array_equal(out["extras"]["mask"], [[1, 1, 1, 0]])


def test_preview_marks_first_shown_frame_of_each_segment():
    from longvid_dist.io.preview import PreviewSheet

    sheet = PreviewSheet(81, boundaries=[41])
    assert sheet.wanted == [0, 11, 23, 34, 46, 57, 69, 80]
    assert sheet.marked == {46}


# -- renders on tiny-wan ------------------------------------------------------------------------------

class Recording:
    """A LocalExecutor that records what it was asked to encode and the windows' conditions."""

    def __new__(cls, adapter):
        from longvid_dist.runtime.executor import LocalExecutor

        class Rec(LocalExecutor):
            def set_conditions(self, prompts, guidance):
                self.encoded = dict(prompts)
                super().set_conditions(prompts, guidance)

            def predict(self, latent, windows):
                self.conds_seen = getattr(self, "conds_seen", set()) | {w.cond for w in windows}
                return super().predict(latent, windows)

            def predict_block(self, block, t, cache_id, offset, write, sink, window, cond="main"):
                self.conds_seen = getattr(self, "conds_seen", set()) | {cond}
                return super().predict_block(block, t, cache_id, offset, write, sink, window, cond)

        return Rec(adapter)


def _render(tmp_path, name, adapter, preview=False, **kw):
    from longvid_dist.api import render
    from longvid_dist.io.video import read_frames

    spec = RenderSpec(out=str(tmp_path / name), **{**GEO, **kw})
    ex = Recording(adapter)
    try:
        render(spec, executor=ex, progress=False, preview=preview)
    finally:
        adapter.install(None, None)
    return read_frames(spec.out), json.loads(Path(spec.out + ".json").read_text()), ex


def test_two_segment_storyboard_renders_with_glc(tmp_path, tiny_adapter):
    frames, side, ex = _render(tmp_path, "story.mkv", tiny_adapter, preview=True, recipe="glc", window=8,
                               storyboard=TWO)
    assert frames.shape == (81, 32, 48, 3)
    # the sidecar names both prompts, with the frames each covers
    segs = side["storyboard"]["segments"]
    assert [s["prompt"] for s in segs] == [s["prompt"] for s in TWO["segments"]]
    assert [s["pixel_frames"] for s in segs] == [[0, 41], [41, 81]]
    assert side["spec"]["storyboard"] == TWO
    # each distinct prompt encoded once; windows carry pure and blended ids
    assert ex.encoded == {"sb0": (TWO["segments"][0]["prompt"], "blurry"),
                          "sb1": (TWO["segments"][1]["prompt"], "blurry")}
    assert {"sb0", "sb1"} <= ex.conds_seen and any(c.startswith("blend:") for c in ex.conds_seen)
    assert {w["path"] for w in side["windows"]} == {"global", "local"} and all("cond" in w for w in side["windows"])
    assert os.path.exists(str(tmp_path / "story.mkv") + ".preview.png")
    # a different second prompt changes the end of the video; the start moves only through the
    # windows' attention and overlaps
    other = {"segments": [TWO["segments"][0], {"prompt": "snow in the forest at night", "frames": 40}]}
    frames2, _, _ = _render(tmp_path, "story2.mkv", tiny_adapter, recipe="sliding", window=8, stride=4,
                            storyboard=other)
    frames1, _, _ = _render(tmp_path, "story1.mkv", tiny_adapter, recipe="sliding", window=8, stride=4,
                            storyboard=TWO)
    diff = np.abs(frames1.astype(int) - frames2).mean(axis=(1, 2, 3))
    assert diff[:9].max() < 0.1 < diff[-20:].mean()


def test_one_prompt_storyboard_is_the_plain_render(tmp_path, tiny_adapter):
    """A storyboard whose segments all say the prompt renders exactly the plain video."""
    p = "a red car drives in the city"
    plain, _, _ = _render(tmp_path, "plain.mkv", tiny_adapter, prompt=p, recipe="glc", window=8)
    board = {"segments": [{"prompt": p, "frames": 30}, {"prompt": p, "frames": 51}]}
    story, side, ex = _render(tmp_path, "board.mkv", tiny_adapter, recipe="glc", window=8, storyboard=board)
    assert list(ex.encoded) == ["sb0"] and ex.conds_seen == {"sb0"}
    assert np.array_equal(plain, story)


def test_global_prompt_conditions_global_path_and_anchors(tmp_path, tiny_adapter):
    _, side, ex = _render(tmp_path, "g.mkv", tiny_adapter, recipe="glc", window=8,  # glc anchors each path (ABAM)
                          storyboard={"global": "a road trip", **TWO})
    assert set(ex.encoded) == {"sb0", "sb1", "global"}
    assert all(w["cond"] == "global" for w in side["windows"] if w["path"] == "global")
    assert side["windows"][[w["path"] for w in side["windows"]].index("local")]["cond"] == "global"  # the anchor


# -- batch rows and the CLI ---------------------------------------------------------------------------

def test_batch_rows_take_a_storyboard(tmp_path):
    from longvid_dist.batch.rows import parse_rows

    lines = [json.dumps({"id": "ok", "frames": 81, "storyboard": TWO}),
             json.dumps({"id": "bad", "frames": 81, "storyboard": {"segments": [{"prompt": "a", "frames": 80}]}})]
    ok, bad = parse_rows(lines, str(tmp_path), {})
    assert ok.spec is not None and ok.spec.storyboard.segments[1].prompt == TWO["segments"][1]["prompt"]
    assert bad.state == "failed" and bad.reason.startswith("storyboard.segments[0].frames:")


def test_cli_bad_storyboard_is_one_line_and_writes_nothing(tmp_path):
    story = tmp_path / "story.json"
    story.write_text(json.dumps({"segments": [{"prompt": "a", "frames": 41}, {"prompt": "b", "frames": 41}]}))
    out = tmp_path / "out"
    out.mkdir()
    r = subprocess.run([sys.executable, "-m", "longvid_dist.cli", "render", "--storyboard", str(story), "--frames",
                        "81", "--out", str(out / "v.mp4")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [r.stderr.strip()] and "--storyboard.segments[1].frames" in r.stderr
    assert os.listdir(out) == []


def test_chunked_plans_switch_prompts_per_chunk(tmp_path, tiny_adapter):
    """Causal rollout (flex) conditions each block on the segment prompts it covers."""
    frames, side, ex = _render(tmp_path, "flex.mkv", tiny_adapter, recipe="flex", storyboard=TWO, guidance=1.0)
    assert frames.shape[0] == 81
    assert {"sb0", "sb1"} <= ex.conds_seen and "main" not in ex.conds_seen
    other = {"segments": [TWO["segments"][0], {"prompt": "snow in the forest at night", "frames": 40}]}
    frames2, _, _ = _render(tmp_path, "flex2.mkv", tiny_adapter, recipe="flex", storyboard=other, guidance=1.0)
    diff = np.abs(frames.astype(int) - frames2).mean(axis=(1, 2, 3))
    assert diff[:33].max() == 0 < diff[-20:].mean()  # causal: blocks before the switch are untouched
