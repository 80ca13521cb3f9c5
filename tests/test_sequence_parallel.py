"""Sequence parallelism: a window's forward split over ``ulysses * ring`` processes equals the
single-process forward, for plain attention and every attention patch (CPU, fp32, gloo)."""

from __future__ import annotations

import pytest

from .sp_oracle import CASES, run_cases, split_forward


@pytest.fixture(scope="module")
def reference(tiny_adapter):
    return run_cases(tiny_adapter)


@pytest.mark.parametrize("ulysses,ring", [(2, 1), (1, 2), (2, 2)], ids=["U2", "R2", "U2R2"])
def test_split_forward_equals_single_process(tmp_path, reference, ulysses, ring):
    got = split_forward(ulysses, ring, str(tmp_path / "out.pt"))
    assert sorted(got) == sorted(CASES)
    for case, ref in reference.items():
        err = (got[case] - ref).abs().max().item()
        assert err <= 1e-6, (case, err)
    # the cases really differ from plain attention (each patch is exercised)
    assert all((reference[c] - reference["plain"]).abs().max() > 1e-4 for c in CASES if c != "plain")
