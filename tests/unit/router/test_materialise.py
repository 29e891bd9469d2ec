"""Materialisation against a direct einsum over the MHR authors' layout
([heads, inventory, d_in/heads, r] for A, [heads, inventory, r, d_out/heads] for B)."""

from __future__ import annotations

import pytest
import torch

from deltaserve.router.materialise import MixShapeError, materialise, mhr_z_weights, mix_pair


def _members(n: int, rank: int, d_in: int, d_out: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    keys = [(0, "q_proj"), (1, "down_proj")]
    return [
        {k: (torch.randn(rank, d_in, generator=g), torch.randn(d_out, rank, generator=g)) for k in keys}
        for _ in range(n)
    ]


def _oracle(members, routing: torch.Tensor, key) -> tuple[torch.Tensor, torch.Tensor]:
    """The MHR reference: per-head adapters in [h, J, d_in/h, r] / [h, J, r, d_out/h]."""
    h = routing.shape[0]
    rank, d_in = members[0][key][0].shape
    d_out = members[0][key][1].shape[0]
    a = torch.stack([m[key][0].T.reshape(h, d_in // h, rank) for m in members], dim=1)
    b = torch.stack(
        [m[key][1].T.reshape(rank, h, d_out // h).permute(1, 0, 2) for m in members], dim=1
    )
    a_mix = torch.einsum("hj,hjdr->hdr", routing, a)  # [h, d_in/h, r]
    b_mix = torch.einsum("hj,hjro->hro", routing, b)  # [h, r, d_out/h]
    return a_mix.reshape(d_in, rank).T, b_mix.permute(1, 0, 2).reshape(rank, d_out).T


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_materialised_weights_equal_the_einsum_over_the_mhr_layout(heads: int) -> None:
    members = _members(3, rank=4, d_in=16, d_out=8)
    routing = torch.rand(heads, 3, generator=torch.Generator().manual_seed(heads))
    mixed = materialise(members, routing)
    assert set(mixed) == set(members[0])
    for key, (a, b) in mixed.items():
        want_a, want_b = _oracle(members, routing, key)
        assert a.shape == (4, 16) and b.shape == (8, 4)  # every head keeps the full rank
        torch.testing.assert_close(a, want_a, rtol=0, atol=1e-6)
        torch.testing.assert_close(b, want_b, rtol=0, atol=1e-6)


def test_one_head_is_polytropon_and_uniform_is_the_average() -> None:
    members = _members(2, rank=2, d_in=6, d_out=4)
    a, b = materialise(members, torch.full((1, 2), 0.5))[(0, "q_proj")]
    torch.testing.assert_close(a, (members[0][(0, "q_proj")][0] + members[1][(0, "q_proj")][0]) / 2)
    torch.testing.assert_close(b, (members[0][(0, "q_proj")][1] + members[1][(0, "q_proj")][1]) / 2)


def test_head_blocks_only_see_their_own_weights() -> None:
    members = _members(2, rank=2, d_in=8, d_out=4)
    a, b = materialise(members, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))[(1, "down_proj")]
    a0, b0 = members[0][(1, "down_proj")]
    a1, b1 = members[1][(1, "down_proj")]
    assert torch.equal(a[:, :4], a0[:, :4]) and torch.equal(a[:, 4:], a1[:, 4:])
    assert torch.equal(b[:2], b0[:2]) and torch.equal(b[2:], b1[2:])


def test_gradients_flow_to_the_routing() -> None:
    members = _members(3, rank=2, d_in=4, d_out=4)
    logits = torch.zeros(2, 3, requires_grad=True)
    mixed = materialise(members, mhr_z_weights(logits))
    sum(a.sum() + b.square().sum() for a, b in mixed.values()).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    torch.testing.assert_close(mhr_z_weights(torch.zeros(2, 4)), torch.full((2, 4), 0.25))


@pytest.mark.parametrize("heads, d_in, d_out", [(3, 16, 8), (4, 16, 6)])
def test_heads_must_divide_both_widths(heads: int, d_in: int, d_out: int) -> None:
    a, b = torch.zeros(2, 2, d_in), torch.zeros(2, d_out, 2)
    with pytest.raises(MixShapeError, match="divisible by heads"):
        mix_pair(a, b, torch.ones(heads, 2))


def test_members_must_share_modules_and_shapes() -> None:
    ranks = _members(1, rank=2, d_in=4, d_out=4) + _members(1, rank=3, d_in=4, d_out=4)
    with pytest.raises(MixShapeError, match="differ"):
        materialise(ranks, torch.ones(1, 2))
    fewer = _members(2, rank=2, d_in=4, d_out=4)
    del fewer[1][(0, "q_proj")]
    with pytest.raises(MixShapeError, match="different modules"):
        materialise(fewer, torch.ones(1, 2))
    with pytest.raises(MixShapeError, match="routing must be"):
        materialise(_members(2, 2, 4, 4), torch.ones(1, 3))
