"""ops/norm_cpu.py: the one-pass CPU RMSNorm against the PyTorch form (HF Llama's rounding)."""

from __future__ import annotations

import pytest
import torch

from deltaserve.engine.layers.norm import RMSNorm
from deltaserve.engine.ops import norm_cpu


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("rows", "hidden"), [(1, 64), (7, 200), (64, 768), (300, 1024)])
def test_kernel_matches_the_pytorch_form(dtype, rows, hidden, monkeypatch):
    g = torch.Generator().manual_seed(rows * hidden)
    norm = RMSNorm(hidden, 1e-5).to(dtype)
    norm.weight.copy_(torch.randn(hidden, generator=g))
    # a strided view (rows of a wider tensor), as a residual stream slice can be
    x = (torch.randn(rows, hidden + 16, generator=g) * 3).to(dtype)[:, :hidden]
    assert norm_cpu.supports(x, norm.weight)
    calls = []
    real = norm_cpu.rms_norm
    monkeypatch.setattr(norm_cpu, "rms_norm", lambda *a: (calls.append(1), real(*a))[1])
    got = norm(x)
    assert calls == [1]
    want = norm.reference(x)
    # The float32 sum of squares runs in another order than torch's: a row's scale may differ
    # in its last bit (float32 rows then differ by an ulp), which moves a bf16 result across a
    # rounding boundary only rarely.
    ulp = 2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -22
    torch.testing.assert_close(got.float(), want.float(), rtol=ulp, atol=1e-6)
    if dtype == torch.bfloat16:
        assert (got == want).float().mean() > 0.99


def test_other_inputs_take_the_pytorch_form():
    norm = RMSNorm(8, 1e-6)
    x = torch.randn(2, 3, 8)  # not [rows, hidden]
    assert not norm_cpu.supports(x, norm.weight)
    torch.testing.assert_close(norm(x), norm.reference(x))
    assert not norm_cpu.supports(torch.randn(4, 8, dtype=torch.float16), norm.weight.half())
