"""``--lora``: LoRA adapters loaded through diffusers' loader (peft) and fused into the
transformer. Oracles: a replica with a LoRA predicts what the same transformer predicts with the
update merged by hand (``W + scale * B @ A * alpha / r``); scale 0 is the base model; a Ray render
with a LoRA equals the local one bit for bit; bad input is refused in one line naming ``lora``
before any model loads, nothing written."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from longvid_dist import RenderSpec
from longvid_dist.config import ParallelConfig, SpecError, output_key
from longvid_dist.models.tiny import save_tiny_lora
from longvid_dist.models.wan import WanAdapter

RANK, ALPHA = 4, 8.0
RANK2, ALPHA2 = 2, 1.0


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory, tiny_path):
    """A tiny-wan LoRA (rank 4, alpha 8) on every attention projection, B non-zero."""
    return str(save_tiny_lora(tmp_path_factory.mktemp("lora"), rank=RANK, alpha=ALPHA, seed=1))


@pytest.fixture(scope="module")
def lora_file2(tmp_path_factory, tiny_path):
    """A second one, of another rank and alpha (so alpha / r is not 1 or 2 by accident)."""
    return str(save_tiny_lora(tmp_path_factory.mktemp("lora2"), rank=RANK2, alpha=ALPHA2, seed=2))


def _hand_merged(tiny_path, loras):
    """The tiny model with each LoRA's update added to its transformer's weights by hand."""
    from safetensors.torch import load_file

    ad = WanAdapter.load(tiny_path)
    modules = dict(ad.transformer.named_modules())
    with torch.no_grad():
        for path, scale, rank, alpha in loras:
            sd = load_file(path)
            for k, a in sd.items():
                if k.endswith(".lora_A.weight"):
                    b = sd[k.replace(".lora_A.", ".lora_B.")]
                    name = k.removeprefix("transformer.").removesuffix(".lora_A.weight")
                    modules[name].weight += scale * (b @ a) * (alpha / rank)
    return ad


def _predict(ad, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 3, 4, 4, generator=g)
    cond = ad.encode_prompt("a cat runs on the beach", "blurry", 5.0)
    ad.install(None, None)
    return ad.predict(x, torch.tensor(700.0), cond)


def test_lora_equals_weights_merged_by_hand(tiny_path, tiny_adapter, lora_file, lora_file2):
    with_lora = WanAdapter.load_replica(tiny_path, lora=[(lora_file, 0.7)])
    # the peft wrappers are gone once fused: plain layers, the same module tree as the base model
    assert type(with_lora.transformer.blocks[0].attn1.to_q) is torch.nn.Linear
    assert not any("lora" in n for n, _ in with_lora.transformer.named_parameters())
    out, ref, base = _predict(with_lora), _predict(_hand_merged(tiny_path, [(lora_file, 0.7, RANK, ALPHA)])), \
        _predict(tiny_adapter)
    assert torch.allclose(out, ref, rtol=0, atol=1e-6), (out - ref).abs().max()
    assert (out - base).abs().max() > 1e-2  # the LoRA changes the prediction
    # several adapters, repeatable --lora: their updates add up
    two = WanAdapter.load_replica(tiny_path, lora=[(lora_file, 0.7), (lora_file2, -1.5)])
    ref2 = _predict(_hand_merged(tiny_path, [(lora_file, 0.7, RANK, ALPHA), (lora_file2, -1.5, RANK2, ALPHA2)]))
    out2 = _predict(two)
    assert torch.allclose(out2, ref2, rtol=0, atol=1e-6), (out2 - ref2).abs().max()
    assert (out2 - out).abs().max() > 1e-3


def test_scale_zero_is_the_base_model(tiny_path, tiny_adapter, lora_file):
    zero = WanAdapter.load_replica(tiny_path, lora=[(lora_file, 0.0)])
    assert torch.equal(_predict(zero), _predict(tiny_adapter))


# -- spec, output key, checkpoint ---------------------------------------------------------------

def _spec(tmp_path, **kw):
    return RenderSpec(**{"prompt": "a cat", "frames": 9, "out": str(tmp_path / "v.mkv"), **kw})


def test_spec_parses_and_keys_on_contents(tmp_path, lora_file, lora_file2):
    plain = _spec(tmp_path)
    one = _spec(tmp_path, lora=f"{lora_file}:0.5")
    assert one.lora[0].path == lora_file and one.lora[0].scale == 0.5 and len(one.lora[0].sha256) == 64
    folder = _spec(tmp_path, lora=[str(Path(lora_file).parent)])
    assert folder.lora[0].path == lora_file and folder.lora[0].scale == 1.0  # a folder: its weights file
    assert RenderSpec(**one.to_dict()) == one  # a sidecar's spec builds the same spec
    keys = {plain.output_key(), one.output_key(), _spec(tmp_path, lora=f"{lora_file}:0.6").output_key(),
            _spec(tmp_path, lora=f"{lora_file2}:0.5").output_key(),
            _spec(tmp_path, lora=[lora_file, lora_file2]).output_key()}
    assert len(keys) == 5  # another LoRA, scale or set of them is another render
    moved = shutil.copy(lora_file, tmp_path / "moved.safetensors")  # same bytes elsewhere: the same video
    assert _spec(tmp_path, lora=f"{moved}:0.5").output_key() == one.output_key()
    # renders without a LoRA keep the key of sidecars written before LoRAs existed (no lora entry)
    assert output_key({k: v for k, v in plain.to_dict().items() if k != "lora"}) == plain.output_key()


def test_checkpoint_of_another_lora_is_refused(tmp_path, lora_file, lora_file2):
    from longvid_dist.runtime import checkpoint

    spec = _spec(tmp_path, lora=lora_file)
    path = checkpoint.checkpoint_path(spec.out)
    checkpoint.save(path, spec, 1, torch.zeros(16, 3, 2, 2), ({}, {}))
    assert checkpoint.load(path, spec)["next_step"] == 1
    with pytest.raises(checkpoint.CheckpointError, match="differs in: lora"):
        checkpoint.load(path, _spec(tmp_path, lora=lora_file2))
    with pytest.raises(checkpoint.CheckpointError, match="differs in: lora"):
        checkpoint.load(path, _spec(tmp_path))


# -- bad input ----------------------------------------------------------------------------------

def _bad_files(tmp_path, lora_file):
    """name -> (file, what the message says)."""
    from safetensors.torch import load_file, save_file

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + bytes(64))
    no_lora = tmp_path / "plain.safetensors"
    save_file({"blocks.0.attn1.to_q.weight": torch.zeros(2, 2)}, str(no_lora))
    sd = load_file(lora_file)
    wrong_module = tmp_path / "wrong_module.safetensors"
    save_file({k.replace("blocks.0.", "blocks.7."): v for k, v in sd.items()}, str(wrong_module))
    wrong_shape = tmp_path / "wrong_shape.safetensors"  # a LoRA of a bigger model
    save_file({k: (torch.zeros(v.shape[0], 48) if ".lora_A." in k else v) for k, v in sd.items()}, str(wrong_shape))
    return {"missing": (tmp_path / "nope.safetensors", "no such file"),
            "garbage": (garbage, "not a readable safetensors file"),
            "no_lora": (no_lora, "holds no LoRA weights"),
            "pickle": (tmp_path / "x.bin", "not a .safetensors file"),
            "wrong_module": (wrong_module, "no such module"),
            "wrong_shape": (wrong_shape, "takes 48 inputs, the layer 24")}


def test_bad_lora_is_one_clear_error_before_any_load(tmp_path, tiny_path, lora_file):
    from longvid_dist.api import check_layout

    files = _bad_files(tmp_path, lora_file)
    (tmp_path / "x.bin").write_bytes(b"\x80\x02}q\x00.")
    for name, (path, says) in files.items():
        with pytest.raises(SpecError) as e:
            check_layout(_spec(tmp_path, lora=str(path)), None)  # spec validation, then the configs-only check
        assert e.value.field == "lora" and says in e.value.message and "\n" not in str(e.value), (name, e.value)
    for bad, says in ((f"{lora_file}:abc", "is not a number"), ({"path": lora_file, "scale": "x"}, "finite number"),
                      (f"{lora_file}:nan", "finite number"), (3, "PATH[:SCALE]"),
                      ({"file": lora_file}, "needs 'path'")):
        with pytest.raises(SpecError, match=re.escape(says)) as e:
            _spec(tmp_path, lora=bad)
        assert e.value.field == "lora"
    assert not list(tmp_path.glob("v.mkv*"))


def test_pipelines_without_a_lora_loader_are_refused(tmp_path, lora_file):
    """Every shipped family's pipeline has diffusers' LoRA loader; a pipeline without one (here
    DDPMPipeline, a real class) and Wan2.2's two experts are refused naming lora."""
    import diffusers

    from longvid_dist.api import check_lora
    from longvid_dist.models.base import check_lora_loader
    from longvid_dist.models.registry import FAMILIES

    for fam in FAMILIES.values():
        for cls in fam.pipeline_classes:
            check_lora_loader(getattr(diffusers, cls))
    with pytest.raises(ValueError, match="lora: DDPMPipeline has no LoRA loader"):
        check_lora_loader(diffusers.DDPMPipeline)
    with pytest.raises(SpecError, match="two experts") as e:
        check_lora(_spec(tmp_path, model="tiny-wan22", lora=lora_file))
    assert e.value.field == "lora"


def test_cli_refuses_bad_lora_with_exit_2_and_nothing_written(tmp_path, lora_file):
    from tests.test_cli import run_cli

    files = _bad_files(tmp_path, lora_file)
    for path in (files["wrong_module"][0], f"{lora_file}:abc"):
        out = tmp_path / "cli.mp4"
        r = run_cli(["render", "--prompt", "a cat", "--frames", "9", "--lora", str(path), "--out", str(out)])
        assert r.returncode == 2, r.stderr
        line = r.stderr.strip()
        assert line.startswith("longvid render: error: --lora: ") and "\n" not in line, r.stderr
        assert not list(tmp_path.glob("cli.mp4*"))


def test_batch_takes_lora_per_run_not_per_row(tmp_path, lora_file):
    from longvid_dist.batch.rows import check_defaults, parse_rows

    defaults = check_defaults({"lora": [f"{lora_file}:0.5"], "frames": 9})
    rows = parse_rows([json.dumps({"id": "a", "prompt": "a cat"}),
                       json.dumps({"id": "b", "prompt": "a dog", "lora": lora_file})], str(tmp_path), defaults)
    assert rows[0].spec.lora[0].scale == 0.5
    assert rows[1].state == "failed" and "unknown key 'lora'" in rows[1].reason
    with pytest.raises(SpecError, match="no such file"):
        check_defaults({"lora": [str(tmp_path / "nope.safetensors")]})


def test_executor_with_other_loras_is_refused(tmp_path, tiny_adapter, lora_file):
    from longvid_dist.api import render
    from longvid_dist.runtime.executor import LocalExecutor

    with pytest.raises(SpecError, match="executor passed in") as e:
        render(_spec(tmp_path, lora=lora_file), executor=LocalExecutor(tiny_adapter), progress=False)
    assert e.value.field == "lora" and not list(tmp_path.glob("v.mkv*"))


# -- renders ------------------------------------------------------------------------------------

GEO = dict(prompt="a red car drives in the city", negative_prompt="blurry", frames=33, height=32, width=32,
           steps=2, seed=5, checkpoint_every=0, recipe="sliding", window=4, stride=2)


@pytest.mark.ray
def test_ray_render_with_lora_equals_local(tmp_path, lora_file, ray_local):
    from longvid_dist.api import render
    from longvid_dist.io.video import read_frames

    lora = [f"{lora_file}:0.7"]
    local = RenderSpec(out=str(tmp_path / "local.mkv"), lora=lora, **GEO)
    render(local, progress=False)
    ray = RenderSpec(out=str(tmp_path / "ray.mkv"), lora=lora, **GEO)
    render(ray, ParallelConfig(workers=2), progress=False)
    base = RenderSpec(out=str(tmp_path / "base.mkv"), **GEO)
    render(base, progress=False)
    a, b = read_frames(local.out), read_frames(ray.out)
    assert a.shape == (33, 32, 32, 3) and np.array_equal(a, b)
    assert not np.array_equal(a, read_frames(base.out))  # the workers did fuse the LoRA
    side = json.loads(open(ray.out + ".json").read())
    assert side["executor"] == "RayExecutor" and len(side["workers"]) == 2
    assert side["spec"]["lora"] == [{"path": lora_file, "scale": 0.7, "sha256": local.lora[0].sha256}]


def test_causal_flex_rollout_with_lora(tmp_path, lora_file):
    """The causal rollout (``--recipe flex``, KV-cached blocks) runs on a LoRA-fused replica."""
    from longvid_dist.api import render
    from longvid_dist.io.video import read_frames

    kw = dict(prompt="a cat", recipe="flex", frames=25, height=32, width=32, seed=3, guidance=1.0,
              checkpoint_every=0)
    with_lora = render(RenderSpec(out=str(tmp_path / "l.mkv"), lora=lora_file, **kw), progress=False)
    base = render(RenderSpec(out=str(tmp_path / "b.mkv"), **kw), progress=False)
    a, b = read_frames(with_lora.out), read_frames(base.out)
    assert a.shape == b.shape == (25, 32, 32, 3) and not np.array_equal(a, b)
