"""The proxy-tuning logit combination against its row-by-row reference."""

from __future__ import annotations

import pytest
import torch

from deltaserve.engine.ops.proxy import proxy_combine, proxy_combine_reference
from deltaserve.engine.sampling_params import SamplingParams


def test_combine_matches_reference_and_leaves_other_rows() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 11, generator=g)
    rows = torch.tensor([4, 0, 2])
    expert, anti = torch.randn(3, 11, generator=g), torch.randn(3, 11, generator=g)
    alpha = torch.tensor([0.5, 1.0, 2.0])
    got = proxy_combine(logits, rows, expert, anti, alpha)
    torch.testing.assert_close(got, proxy_combine_reference(logits, rows, expert, anti, alpha))
    torch.testing.assert_close(got[[1, 3, 5]], logits[[1, 3, 5]])
    torch.testing.assert_close(got[4], logits[4] + 0.5 * (expert[0] - anti[0]))


def test_alpha_zero_is_the_base_and_bf16_inputs_upcast() -> None:
    logits = torch.randn(2, 5)
    e, a = torch.randn(1, 5).bfloat16(), torch.randn(1, 5).bfloat16()
    out = proxy_combine(logits, torch.tensor([1]), e, a, torch.zeros(1))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, logits)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_proxy_alpha_must_be_finite(bad: float) -> None:
    with pytest.raises(ValueError, match="proxy_alpha"):
        SamplingParams(proxy_alpha=bad)
