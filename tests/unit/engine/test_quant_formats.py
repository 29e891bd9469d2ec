"""Pack -> dequantise round trips of every quantized format against independent writers."""

from __future__ import annotations

import pytest
import torch

from deltaserve.engine.quant import awq, gptq
from deltaserve.engine.quant.formats import QuantWeight, pack_int4, stack, unpack_int4
from deltaserve.engine.quant.quantize import quantize_int4, quantize_int8
from tests.quant_helpers import awq_tensors, gptq_tensors, plain_dequant

OUT, IN = 48, 256


def _known(bits: int, gs: int, act_order: bool, seed: int = 0):
    """Random integer weights, zero points (1..maxq: GPTQ v1 cannot store 0) and scales."""
    g = torch.Generator().manual_seed(seed)
    maxq = (1 << bits) - 1
    groups = IN // gs
    q = torch.randint(0, maxq + 1, (OUT, IN), generator=g)
    z = torch.randint(1, maxq + 1, (groups, OUT), generator=g)
    s = (torch.rand(groups, OUT, generator=g) + 0.1).half().float()
    g_idx = torch.arange(IN) // gs
    if act_order:  # desc_act: groups assigned to a permutation of the columns
        g_idx = g_idx[torch.randperm(IN, generator=g)]
    return q, z, s, g_idx


def test_int4_nibbles_round_trip():
    q = torch.randint(0, 16, (5, 12))
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 6)
    for n in range(5):
        for j in range(6):  # column 2j in the low nibble, 2j+1 in the high one
            assert int(packed[n, j]) == int(q[n, 2 * j]) | (int(q[n, 2 * j + 1]) << 4)
    assert torch.equal(unpack_int4(packed), q.to(torch.int16))


def test_int8_per_channel_symmetric():
    w = torch.randn(OUT, IN) * torch.linspace(0.1, 3, OUT).unsqueeze(1)
    qw = quantize_int8(w, torch.float32)
    assert qw.qweight.dtype == torch.int8 and qw.scales.shape == (OUT, 1)
    s = w.abs().amax(1, keepdim=True) / 127
    assert torch.equal(qw.dequantize(torch.float32), qw.qweight.float() * s)
    assert (qw.dequantize(torch.float32) - w).abs().le(s / 2 + 1e-6).all()


@pytest.mark.parametrize("in_features,group", [(256, 128), (64, 64)])
def test_int4_group_wise(in_features, group):
    w = torch.randn(OUT, in_features)
    qw = quantize_int4(w, torch.float32)
    assert qw.group_size == group and qw.qweight.shape == (OUT, in_features // 2)
    q = unpack_int4(qw.qweight).float()
    want = torch.empty_like(w)
    for k in range(in_features):  # element by element: (q - z) * s of column k's group
        want[:, k] = (q[:, k] - qw.zeros[:, k // group]) * qw.scales[:, k // group]
    got = qw.dequantize(torch.float32)
    assert torch.equal(got, want)
    step = qw.scales.repeat_interleave(group, dim=1)
    assert (got - w).abs().le(step / 2 + 1e-6).all()


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("v1", [True, False])
def test_gptq_dequantises_known_weights(bits, act_order, v1):
    q, z, s, g_idx = _known(bits, 64, act_order)
    qc = {"bits": bits, "group_size": 64, "desc_act": act_order,
          "checkpoint_format": "gptq" if v1 else "gptq_v2"}
    qw = gptq.to_engine(gptq_tensors(q, z, s, g_idx, bits, v1), qc, torch.float32)
    assert (qw.g_idx is None) == (not act_order)
    assert torch.equal(qw.dequantize(torch.float32), plain_dequant(q, z, s, g_idx))


def test_gptq_symmetric_and_one_group():
    q, _, s, _ = _known(4, IN, False)
    z = torch.full((1, OUT), 8)  # sym: the midpoint, stored as 7 in v1
    t = gptq_tensors(q, z, s, torch.zeros(IN, dtype=torch.long), 4)
    assert int(t["qzeros"][0, 0]) == 0x77777777
    qw = gptq.to_engine(t, {"bits": 4, "group_size": -1, "sym": True}, torch.float32)
    assert torch.equal(qw.dequantize(torch.float32), plain_dequant(q, z, s, torch.zeros(IN).long()))


def test_awq_dequantises_known_weights():
    q, z, s, g_idx = _known(4, 128, False)
    t = awq_tensors(q, z, s)
    assert t["qweight"].shape == (IN, OUT // 8) and t["qzeros"].shape == (IN // 128, OUT // 8)
    qw = awq.to_engine(t, {"bits": 4, "group_size": 128, "version": "gemm"}, torch.float32)
    assert torch.equal(qw.dequantize(torch.float32), plain_dequant(q, z, s, g_idx))


def test_awq_interleaved_order():
    """Column j of a pack of 8 sits in nibble AWQ_ORDER.index(j): [0, 4, 1, 5, 2, 6, 3, 7]."""
    word = sum(v << (4 * i) for i, v in enumerate([0, 2, 4, 6, 1, 3, 5, 7]))  # < 2^31
    cols = awq.unpack_awq(torch.tensor([[word]], dtype=torch.int32))
    assert cols.tolist() == [[0, 1, 2, 3, 4, 5, 6, 7]]


def test_stack_keeps_shard_order_and_splits_layouts():
    a, b = quantize_int4(torch.randn(16, 64), torch.float32), quantize_int4(torch.randn(8, 64),
                                                                           torch.float32)
    merged = stack([a, b])
    assert len(merged) == 1
    want = torch.cat([a.dequantize(torch.float32), b.dequantize(torch.float32)])
    assert torch.equal(merged[0].dequantize(torch.float32), want)
    shards = []
    for act_order in (True, False):  # an act-order shard has its own g_idx: kept apart
        q, z, s, g_idx = _known(4, 64, act_order, seed=int(act_order))
        shards.append(gptq.to_engine(gptq_tensors(q, z, s, g_idx, 4),
                                     {"bits": 4, "group_size": 64}, torch.float32))
    assert stack(shards) == shards


def test_quant_weight_rejects_other_bits():
    with pytest.raises(ValueError, match="4- and 8-bit"):
        QuantWeight(3, torch.zeros(2, 2, dtype=torch.uint8), torch.ones(2, 1), None, 2)
