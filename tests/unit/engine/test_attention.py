"""layers/attention.py: paged attention (decode fast path and general path) against a naive
per-sequence softmax(q kᵀ/√d) v over each sequence's own keys."""

from __future__ import annotations

import pytest
import torch

from deltaserve.engine.layers.attention import AttentionMeta, paged_attention
from deltaserve.engine.ops import attention_cpu

BS, HKV, D, BLOCKS = 4, 2, 8, 40


def _reference(q, k_ctx, v_ctx, heads):
    """q: [H, D]; k_ctx, v_ctx: [L, Hkv, D] (the sequence's whole context, new token included)."""
    rep = heads // k_ctx.shape[1]
    k = k_ctx.float().repeat_interleave(rep, dim=1)  # [L, H, D]
    v = v_ctx.float().repeat_interleave(rep, dim=1)
    scores = torch.einsum("hd,lhd->hl", q.float(), k) / D**0.5
    return torch.einsum("hl,lhd->hd", scores.softmax(-1), v).reshape(-1)


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("kernel", [False, True], ids=["torch", "cpu-kernel"])
@pytest.mark.parametrize(("heads", "dtype", "tol"),
                         [(2, torch.float32, 1e-5), (6, torch.float32, 1e-5),
                          (6, torch.bfloat16, 2e-2)])
def test_decode_step_matches_naive_attention(heads, dtype, tol, kernel, window, monkeypatch):
    """Both decode paths: the gathered cache with a mask (PyTorch) and the kernel reading the
    cache in place from key ranges (ops/attention_cpu.py), with and without a window."""
    calls = []
    real = attention_cpu.decode_attention
    monkeypatch.setattr(attention_cpu, "decode_attention",
                        lambda *a: (calls.append(1), real(*a))[1])
    g = torch.Generator().manual_seed(heads)
    lens = [1, 5, 9, 12]  # context lengths including this step's token
    firsts = [max(0, n - window) if window else 0 for n in lens]  # first key each attends to
    k_cache = torch.randn(HKV, BLOCKS * BS, D, generator=g).to(dtype)
    v_cache = torch.randn(HKV, BLOCKS * BS, D, generator=g).to(dtype)
    perm = torch.randperm(BLOCKS, generator=g).tolist()
    nb = max(-(-n // BS) for n in lens)
    tables = [perm[i * nb:(i + 1) * nb][: -(-n // BS)] for i, n in enumerate(lens)]
    bt = torch.zeros(len(lens), nb, dtype=torch.long)
    for i, t in enumerate(tables):
        bt[i, : len(t)] = torch.tensor(t)
    slots = torch.tensor([t[(n - 1) // BS] * BS + (n - 1) % BS for t, n in zip(tables, lens, strict=True)])
    pos = torch.arange(nb * BS)[None, :]
    mask = (pos < torch.tensor(lens)[:, None]) & (pos >= torch.tensor(firsts)[:, None])
    meta = AttentionMeta(slot_mapping=slots, block_tables=bt, block_size=BS,
                         mask=mask.view(len(lens), 1, 1, -1), decode_only=True)
    if kernel:
        assert attention_cpu.supports(torch.empty(0, dtype=dtype), torch.empty(0, dtype=dtype))
        meta.key_ranges = torch.tensor(list(zip(firsts, lens, strict=True)))
    q = torch.randn(len(lens), heads, D, generator=g).to(dtype)
    k = torch.randn(len(lens), HKV, D, generator=g).to(dtype)
    v = torch.randn(len(lens), HKV, D, generator=g).to(dtype)
    out = paged_attention(q, k, v, k_cache, v_cache, meta, heads)
    assert len(calls) == int(kernel)
    for b, (t, n, first) in enumerate(zip(tables, lens, firsts, strict=True)):
        ctx = torch.tensor([t[i // BS] * BS + i % BS for i in range(first, n)])
        assert torch.equal(k_cache[:, ctx[-1]], k[b]), "this step's K was written to its slot"
        want = _reference(q[b], k_cache[:, ctx].transpose(0, 1), v_cache[:, ctx].transpose(0, 1),
                          heads)
        torch.testing.assert_close(out[b].float(), want, atol=tol, rtol=tol)
