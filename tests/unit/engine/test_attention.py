"""layers/attention.py: paged attention (decode fast path and general path) against a naive
per-sequence softmax(q kᵀ/√d) v over each sequence's own keys."""

from __future__ import annotations

import pytest
import torch

from deltaserve.engine.hardware import cpu_flags
from deltaserve.engine.inputs import _attention_meta
from deltaserve.engine.layers.attention import AttentionMeta, _eager_attention, paged_attention
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


@pytest.mark.parametrize(("scale", "softcap"), [(0.3, None), (0.3, 2.0), (None, 1.5)])
@pytest.mark.parametrize("decode", [True, False], ids=["decode", "prefill"])
def test_scale_and_softcap_match_naive_attention(scale, softcap, decode, monkeypatch):
    """A per-layer q·k scale (Gemma's query_pre_attn_scalar) and logit soft-capping (Gemma 2):
    the CPU kernel takes the scale; soft-capped layers bypass it for the eager path."""
    calls = []
    real = attention_cpu.decode_attention
    monkeypatch.setattr(attention_cpu, "decode_attention",
                        lambda *a: (calls.append(1), real(*a))[1])
    g = torch.Generator().manual_seed(3)
    heads, n = 4, 6  # one sequence of n tokens in block table [0, 1]
    q_len = 1 if decode else n
    k_cache = torch.zeros(HKV, BLOCKS * BS, D)
    v_cache = torch.zeros(HKV, BLOCKS * BS, D)
    k_ctx, v_ctx = torch.randn(n, HKV, D, generator=g) * 3, torch.randn(n, HKV, D, generator=g)
    k_cache[:, : n - q_len] = k_ctx[: n - q_len].transpose(0, 1)
    v_cache[:, : n - q_len] = v_ctx[: n - q_len].transpose(0, 1)
    q = torch.randn(q_len, heads, D, generator=g) * 3
    k_pos, q_pos = torch.arange(2 * BS), torch.arange(n - q_len, n)
    mask = (k_pos[None, :] <= q_pos[:, None]).view(1, 1, q_len, -1)
    meta = AttentionMeta(slot_mapping=torch.arange(n - q_len, n), block_tables=torch.tensor([[0, 1]]),
                         block_size=BS, mask=mask, decode_only=decode)
    if decode:
        meta.key_ranges = torch.tensor([[0, n]])
    else:
        meta.q_index, meta.out_index = torch.arange(q_len).view(1, -1), torch.arange(q_len)
    out = paged_attention(q, k_ctx[n - q_len:], v_ctx[n - q_len:], k_cache, v_cache, meta, heads,
                          scale, softcap)
    assert len(calls) == int(decode and softcap is None)
    k = k_ctx.repeat_interleave(heads // HKV, dim=1)  # [n, H, D]
    v = v_ctx.repeat_interleave(heads // HKV, dim=1)
    s = torch.einsum("qhd,lhd->hql", q, k) * (D**-0.5 if scale is None else scale)
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    s = s.masked_fill(~mask.view(1, q_len, -1)[..., :n], float("-inf"))
    want = torch.einsum("hql,lhd->qhd", s.softmax(-1), v).reshape(q_len, -1)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_prompt_chunks_attend_unpadded_like_the_batched_path(window, dtype, tol):
    """Prompt chunks after cached prefixes (chunked prefill + prefix caching): the CPU path
    that attends one sequence at a time over its own keys equals the padded batched path and
    a naive softmax over each query's keys."""
    g = torch.Generator().manual_seed(7)
    heads = 6
    starts, q_lens = [0, 8, 13, 3], [5, 3, 1, 9]  # tokens already cached, queries this step
    ctx_lens = [s + n for s, n in zip(starts, q_lens, strict=True)]
    perm = torch.randperm(BLOCKS, generator=g).tolist()
    tables, used = [], 0
    for n in ctx_lens:
        tables.append(perm[used:used + -(-n // BS)])
        used += len(tables[-1])
    slots = torch.tensor([t[p // BS] * BS + p % BS
                          for t, s, n in zip(tables, starts, q_lens, strict=True)
                          for p in range(s, s + n)])  # fmt: skip
    meta = _attention_meta(starts, q_lens, tables, slots, BS, window, torch.device("cpu"))
    assert meta.seq_spans == [(0, 5, 5), (5, 3, 11), (8, 1, 14), (9, 9, 12)]
    k_cache = torch.randn(HKV, BLOCKS * BS, D, generator=g).to(dtype)
    v_cache = torch.randn(HKV, BLOCKS * BS, D, generator=g).to(dtype)
    total = sum(q_lens)
    q = torch.randn(total, heads, D, generator=g).to(dtype)
    k = torch.randn(total, HKV, D, generator=g).to(dtype)
    v = torch.randn(total, HKV, D, generator=g).to(dtype)
    each = paged_attention(q, k, v, k_cache.clone(), v_cache.clone(), meta, heads)
    meta.seq_spans = None
    batched = paged_attention(q, k, v, k_cache, v_cache, meta, heads)
    torch.testing.assert_close(each, batched, atol=tol, rtol=tol)
    row = 0
    for t, s, n in zip(tables, starts, q_lens, strict=True):
        for p in range(s, s + n):
            first = max(0, p + 1 - window) if window else 0
            ctx = torch.tensor([t[i // BS] * BS + i % BS for i in range(first, p + 1)])
            want = _reference(q[row], k_cache[:, ctx].transpose(0, 1),
                              v_cache[:, ctx].transpose(0, 1), heads)
            torch.testing.assert_close(each[row].float(), want, atol=tol, rtol=tol)
            row += 1


@pytest.mark.parametrize(("heads", "head_dim"), [(12, 64), (8, 128), (10, 64)])
def test_bf16_decode_kernel_variants_agree(heads, head_dim):
    """bf16 decode attention: the AVX512-BF16 variant (where this CPU has it: G = heads / 2 up
    to 8, head dim 64/128) equals the generic kernel and the eager PyTorch path over a
    scattered block table; elsewhere `fast` takes the generic items and changes nothing."""
    g = torch.Generator().manual_seed(heads)
    bs, kv_heads, lens = 16, 2, [1, 17, 40, 100]
    nb = -(-max(lens) // bs)
    num_blocks = len(lens) * nb + 3
    k_cache = torch.randn(kv_heads, num_blocks * bs, head_dim, generator=g).to(torch.bfloat16)
    v_cache = torch.randn(kv_heads, num_blocks * bs, head_dim, generator=g).to(torch.bfloat16)
    tables = torch.randperm(num_blocks, generator=g)[: len(lens) * nb].view(len(lens), nb)
    firsts = [0, 0, 9, 30]  # a window cuts the last two
    ranges = torch.tensor(list(zip(firsts, lens, strict=True)))
    q = torch.randn(len(lens), heads, head_dim, generator=g).to(torch.bfloat16)
    fast = attention_cpu.decode_attention(q, k_cache, v_cache, tables, bs, ranges, fast=True)
    generic = attention_cpu.decode_attention(q, k_cache, v_cache, tables, bs, ranges, fast=False)
    assert attention_cpu.has_bf16_fast_path(heads, kv_heads, head_dim) == (
        "avx512_bf16" in cpu_flags() and heads // kv_heads <= 8)  # fmt: skip
    kb = k_cache.view(kv_heads, -1, bs * head_dim).index_select(1, tables.view(-1))
    vb = v_cache.view(kv_heads, -1, bs * head_dim).index_select(1, tables.view(-1))
    pos = torch.arange(nb * bs)[None, :]
    mask = (pos < ranges[:, 1:]) & (pos >= ranges[:, :1])
    eager = _eager_attention(q.unsqueeze(1), kb.view(kv_heads, len(lens), -1, head_dim),
                             vb.view(kv_heads, len(lens), -1, head_dim),
                             mask.view(len(lens), 1, 1, -1), heads, head_dim**-0.5, None)
    torch.testing.assert_close(fast.float(), generic.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(fast.float(), eager.float(), atol=2e-2, rtol=2e-2)
