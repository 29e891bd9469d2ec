"""layers/attention.py: paged attention (decode fast path and general path) against a naive
per-sequence softmax(q kᵀ/√d) v over each sequence's own keys."""

from __future__ import annotations

import pytest
import torch

from deltaserve.engine.layers.attention import AttentionMeta, paged_attention

BS, HKV, D, BLOCKS = 4, 2, 8, 40


def _reference(q, k_ctx, v_ctx, heads):
    """q: [H, D]; k_ctx, v_ctx: [L, Hkv, D] (the sequence's whole context, new token included)."""
    rep = heads // k_ctx.shape[1]
    k = k_ctx.float().repeat_interleave(rep, dim=1)  # [L, H, D]
    v = v_ctx.float().repeat_interleave(rep, dim=1)
    scores = torch.einsum("hd,lhd->hl", q.float(), k) / D**0.5
    return torch.einsum("hl,lhd->hd", scores.softmax(-1), v).reshape(-1)


@pytest.mark.parametrize(("heads", "dtype", "tol"),
                         [(2, torch.float32, 1e-5), (6, torch.float32, 1e-5),
                          (6, torch.bfloat16, 2e-2)])
def test_decode_step_matches_naive_attention(heads, dtype, tol):
    g = torch.Generator().manual_seed(heads)
    lens = [1, 5, 9, 12]  # context lengths including this step's token
    k_cache = torch.randn(HKV, BLOCKS * BS, D, generator=g).to(dtype)
    v_cache = torch.randn(HKV, BLOCKS * BS, D, generator=g).to(dtype)
    perm = torch.randperm(BLOCKS, generator=g).tolist()
    nb = max(-(-n // BS) for n in lens)
    tables = [perm[i * nb:(i + 1) * nb][: -(-n // BS)] for i, n in enumerate(lens)]
    bt = torch.zeros(len(lens), nb, dtype=torch.long)
    for i, t in enumerate(tables):
        bt[i, : len(t)] = torch.tensor(t)
    slots = torch.tensor([t[(n - 1) // BS] * BS + (n - 1) % BS for t, n in zip(tables, lens, strict=True)])
    mask = (torch.arange(nb * BS)[None, :] < torch.tensor(lens)[:, None]).view(len(lens), 1, 1, -1)
    meta = AttentionMeta(slot_mapping=slots, block_tables=bt, block_size=BS, mask=mask,
                         decode_only=True)
    q = torch.randn(len(lens), heads, D, generator=g).to(dtype)
    k = torch.randn(len(lens), HKV, D, generator=g).to(dtype)
    v = torch.randn(len(lens), HKV, D, generator=g).to(dtype)
    out = paged_attention(q, k, v, k_cache, v_cache, meta, heads)
    for b, (t, n) in enumerate(zip(tables, lens, strict=True)):
        ctx = torch.tensor([t[i // BS] * BS + i % BS for i in range(n)])
        assert torch.equal(k_cache[:, ctx[-1]], k[b]), "this step's K was written to its slot"
        want = _reference(q[b], k_cache[:, ctx].transpose(0, 1), v_cache[:, ctx].transpose(0, 1),
                          heads)
        torch.testing.assert_close(out[b].float(), want, atol=tol, rtol=tol)
