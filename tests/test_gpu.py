"""GPU-only paths, marked ``gpu`` and skipped without CUDA (``benchmarks/gpu_check.sh`` runs
them on a CUDA machine): fused flash attention with its log-sum-exp, TSA through compiled
flex-attention, NCCL sequence-parallel groups, bf16 renders, xfuser when installed."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_flash_attention_lse_matches_explicit(dtype):
    from longvid_dist.methods.lse_attention import _explicit_attention_with_lse, attention_with_lse

    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 300, 4, 64, device="cuda", generator=g, dtype=dtype) for _ in range(3))
    out, lse = attention_with_lse(q, k, v)
    ref, ref_lse = _explicit_attention_with_lse(q.float(), k.float(), v.float(), None, 64 ** -0.5)
    assert torch.isfinite(out).all() and lse.dtype == torch.float32
    assert torch.allclose(out.float(), ref, atol=2e-2, rtol=2e-2)
    assert torch.allclose(lse, ref_lse, atol=1e-2)


@cuda
def test_tsa_flex_attention_matches_dense_masked():
    from longvid_dist.methods.freeloc import tsa_flex_attention, tsa_mask

    grid = (12, 4, 4)  # frames x h x w tokens
    s = grid[0] * grid[1] * grid[2]
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, s, 2, 32, device="cuda", generator=g) for _ in range(3))
    got = tsa_flex_attention(q, k, v, grid, D1=2, D2=5)  # compiled on CUDA: the fused block-sparse kernel
    mask = tsa_mask(grid, D1=2, D2=5, device="cuda")
    ref = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                           attn_mask=mask).transpose(1, 2)
    assert torch.allclose(got, ref, atol=2e-3, rtol=2e-3)


@cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL groups need 2 GPUs (one rank per GPU)")
def test_nccl_split_forward_equals_unsplit(tmp_path):
    from longvid_dist.models.tiny import tiny_model_path
    from longvid_dist.models.wan import WanAdapter

    from .sp_oracle import run_cases, split_forward

    ref = run_cases(WanAdapter.load(str(tiny_model_path("tiny-wan")), device="cuda:0"))
    got = split_forward(2, 1, str(tmp_path / "out.pt"), backend="nccl")
    for case, r in ref.items():
        assert torch.allclose(got[case], r.cpu(), atol=1e-4, rtol=1e-4), case


@cuda
def test_bf16_prediction_is_finite_and_close_to_fp32():
    from longvid_dist.models.tiny import tiny_model_path
    from longvid_dist.models.wan import WanAdapter

    path = str(tiny_model_path("tiny-wan"))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 6, 8, 8, generator=g)
    outs = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = WanAdapter.load(path, device="cuda", dtype=dtype)
        cond = a.encode_prompt("a red car at night", "blurry", 5.0)
        outs[dtype] = a.predict(x.to("cuda"), torch.tensor(700), cond).float().cpu()
    ref, got = outs[torch.float32], outs[torch.bfloat16]
    assert torch.isfinite(got).all()
    assert (got - ref).norm() / ref.norm() < 5e-2


@cuda
def test_bf16_render_is_finite_and_close_to_fp32(tmp_path):
    import numpy as np

    from longvid_dist import RenderSpec, render
    from longvid_dist.io.video import read_frames

    frames = {}
    for dtype in ("float32", "bfloat16"):
        spec = RenderSpec(prompt="a red car at night", frames=21, steps=3, recipe="glc", window=3, height=64,
                          width=64, seed=0, device="cuda", dtype=dtype, out=str(tmp_path / f"{dtype}.mkv"))
        render(spec, progress=False)
        frames[dtype] = read_frames(spec.out).astype(np.float32)
    assert np.isfinite(frames["bfloat16"]).all()
    assert np.abs(frames["bfloat16"] - frames["float32"]).mean() < 8.0  # of 255


@cuda
def test_xfuser_backend_when_installed():
    pytest.importorskip("xfuser")
    from longvid_dist.config import ParallelConfig, SpecError
    from longvid_dist.models.registry import FAMILIES, adapter_class
    from longvid_dist.models.tiny import tiny_model_path
    from longvid_dist.runtime.ray_executor import check_sequence_parallel

    # importable on this machine: the refusal must name the missing implementation, not the import
    with pytest.raises(SpecError, match="not implemented"):
        check_sequence_parallel(FAMILIES["wan"], adapter_class(FAMILIES["wan"]), str(tiny_model_path("tiny-wan")),
                                ParallelConfig(workers=2, ulysses_degree=2, sp_backend="xfuser"))
