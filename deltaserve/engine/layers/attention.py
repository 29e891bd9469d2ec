"""Paged attention: write this step's K/V into the block cache, attend over the cache.

This is the plain-PyTorch path (the oracle for any kernel): queries are padded per sequence,
keys/values gathered from the paged cache by an index tensor, and scaled_dot_product_attention
runs once for the whole batch — no loop over sequences. On CPU, decode steps go to a compiled
kernel that reads the cache in place (ops/attention_cpu.py).

Per layer, a model may scale q·k by its own factor (Gemma's query_pre_attn_scalar; the kernel
takes the scale) and soft-cap the logits (Gemma 2): soft-capped layers bypass both the kernel
and SDPA, which have no cap, for the eager path below (correctness first).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from deltaserve.engine.ops import attention_cpu


@dataclass
class AttentionMeta:
    """Per-step attention inputs, shared by every layer. B sequences, T packed tokens."""

    slot_mapping: torch.Tensor
    """[T] long: flat cache slot (block * block_size + offset) each new token's K/V goes to."""
    block_tables: torch.Tensor
    """[B, nb] long: each sequence's KV blocks (padded with block 0; padding masked)."""
    block_size: int
    mask: torch.Tensor
    """[B, 1, Lq, Lk] bool: True where a query may attend to a key (causal, length, window);
    Lk = nb * block_size."""
    decode_only: bool
    """Every sequence has exactly one query token (T == B, in sequence order)."""
    q_index: torch.Tensor | None = None
    """[B, Lq] long into the packed tokens; padding points at row T (a zero row)."""
    out_index: torch.Tensor | None = None
    """[T] long: where each packed token sits in the flattened [B * Lq] padded output."""
    key_ranges: torch.Tensor | None = None
    """[B, 2] long, decode-only steps on CPU: the keys [lo, hi) each sequence attends to (its
    context, cut to the sliding window)."""
    local: AttentionMeta | None = None
    """The same step windowed for the sliding layers of a model that mixes sliding and global
    layers (Gemma); this meta itself is then unwindowed."""
    parts: list[tuple[torch.Tensor, AttentionMeta]] | None = None
    """A step of decodes and prompt chunks (chunked prefill): (packed token rows [T_i], their
    own metadata) for the decode rows and for the others, attended separately."""
    seq_spans: list[tuple[int, int, int]] | None = None
    """Prompt steps of several sequences on CPU: (first packed row, queries, context length)
    of each, attended one sequence at a time over its own keys (see `_attend_each`)."""


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMeta,
    num_heads: int,
    scale: float | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """q: [T, H, D]; k, v: [T, Hkv, D]; caches: [Hkv, num_slots, D]. Returns [T, H*D].
    scale: of q·k (default D^-0.5); softcap: logits become softcap·tanh(s/softcap).

    The caches are head-major so that a sequence's context gathers as whole blocks (one
    index_select of [block_size * D] rows per head, not one small row per token) straight
    into the [Hkv, B, Lk, D] layout the matmuls read without a copy.
    """
    k_cache.index_copy_(1, meta.slot_mapping, k.transpose(0, 1))
    v_cache.index_copy_(1, meta.slot_mapping, v.transpose(0, 1))
    scale = k_cache.shape[2] ** -0.5 if scale is None else scale
    if meta.parts is None:
        return _attend(q, k_cache, v_cache, meta, num_heads, scale, softcap)
    out = q.new_empty(q.shape[0], num_heads * q.shape[2])
    for index, sub in meta.parts:
        out.index_copy_(0, index, _attend(q.index_select(0, index), k_cache, v_cache, sub,
                                          num_heads, scale, softcap))
    return out


def _attend(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMeta,
            num_heads: int, scale: float, softcap: float | None) -> torch.Tensor:
    """Attention of q [T, H, D] over the cache (this step's K/V already written): [T, H*D]."""
    hkv, _, head_dim = k_cache.shape
    if (meta.decode_only and meta.key_ranges is not None and softcap is None
            and attention_cpu.supports(q, k_cache)):
        # reads the cache in place (ops/attention_cpu.py); the path below is its oracle
        return attention_cpu.decode_attention(q, k_cache, v_cache, meta.block_tables,
                                              meta.block_size, meta.key_ranges, scale)
    if meta.seq_spans is not None and softcap is None:
        return _attend_each(q, k_cache, v_cache, meta, num_heads, scale)
    bsz, nb = meta.block_tables.shape
    flat = meta.block_tables.view(-1)
    lk = nb * meta.block_size
    kb = k_cache.view(hkv, -1, meta.block_size * head_dim).index_select(1, flat)
    vb = v_cache.view(hkv, -1, meta.block_size * head_dim).index_select(1, flat)
    kb, vb = kb.view(hkv, bsz, lk, head_dim), vb.view(hkv, bsz, lk, head_dim)
    if meta.decode_only:
        return _eager_attention(q.unsqueeze(1), kb, vb, meta.mask, num_heads, scale, softcap)
    q_ext = torch.cat([q, q.new_zeros(1, num_heads, head_dim)], dim=0)
    qb = q_ext[meta.q_index]  # [B, Lq, H, D]
    if softcap is not None:
        out = _eager_attention(qb, kb, vb, meta.mask, num_heads, scale, softcap)
    else:
        out = F.scaled_dot_product_attention(
            qb.transpose(1, 2),
            kb.transpose(0, 1),
            vb.transpose(0, 1),
            attn_mask=meta.mask,
            enable_gqa=hkv != num_heads,
            scale=scale,
        )  # [B, H, Lq, D]
        out = out.transpose(1, 2).reshape(-1, num_heads * head_dim)  # [B*Lq, H*D]
    return out.index_select(0, meta.out_index)


def _attend_each(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 meta: AttentionMeta, num_heads: int, scale: float) -> torch.Tensor:
    """One SDPA per sequence, over its own blocks only: [T, H*D], q: [T, H, D].

    The batched path pads every sequence's queries to the longest chunk and its keys to the
    longest context; with prefix caching a step's chunks differ widely (a 32-token turn beside a
    512-token prompt, each after a cached prefix) and CPU's SDPA computes the padding: measured
    1.8x faster this way on R-like steps (4 chunks of 32-256 queries over 768 cached keys, bf16,
    2 Zen 4 cores). The batched path below stays this one's oracle (tests/unit/engine).
    """
    hkv, _, head_dim = k_cache.shape
    bs = meta.block_size
    k_blocks = k_cache.view(hkv, -1, bs * head_dim)
    v_blocks = v_cache.view(hkv, -1, bs * head_dim)
    outs = []
    for b, (first, n, ctx) in enumerate(meta.seq_spans or ()):
        nb = -(-ctx // bs)
        blocks = meta.block_tables[b, :nb]
        kb = k_blocks.index_select(1, blocks).view(1, hkv, nb * bs, head_dim)  # [1, Hkv, Lk, D]
        vb = v_blocks.index_select(1, blocks).view(1, hkv, nb * bs, head_dim)
        qb = q[first:first + n].transpose(0, 1).unsqueeze(0)  # [1, H, n, D]
        out = F.scaled_dot_product_attention(
            qb, kb, vb, attn_mask=meta.mask[b:b + 1, :, :n, :nb * bs],
            enable_gqa=hkv != num_heads, scale=scale,
        )  # [1, H, n, D]
        outs.append(out[0].transpose(0, 1).reshape(n, num_heads * head_dim))
    return torch.cat(outs)


def _eager_attention(q: torch.Tensor, kb: torch.Tensor, vb: torch.Tensor, mask: torch.Tensor,
                      num_heads: int, scale: float, softcap: float | None) -> torch.Tensor:
    """Eager attention, GQA by grouping query heads per KV head (K/V never repeated).

    q: [B, Lq, H, D]; kb, vb: [Hkv, B, Lk, D]; mask: [B, 1, Lq, Lk]. Returns [B*Lq, H*D].
    Decode steps (Lq = 1) take this path: CPU's SDPA with a mask and GQA took ~4x longer on
    these shapes (it repeats K/V per query head). Prefills take it only to soft-cap.
    """
    hkv, bsz, lk, d = kb.shape
    lq = q.shape[1]
    g = num_heads // hkv
    qg = q.view(bsz, lq, hkv, g, d).permute(2, 0, 3, 1, 4).reshape(hkv, bsz, g * lq, d)
    scores = torch.matmul(qg, kb.transpose(-1, -2))  # [Hkv, B, G*Lq, Lk]
    if softcap is not None:  # as HF Gemma 2 (eager): scaled and capped in the model dtype
        scores = torch.tanh(scores.mul_(scale) / softcap).mul_(softcap).float()
    else:
        scores = scores.float().mul_(scale)
    scores = scores.view(hkv, bsz, g, lq, lk)
    scores.masked_fill_(~mask.view(1, bsz, 1, lq, lk), float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(vb.dtype).view(hkv, bsz, g * lq, lk)
    out = torch.matmul(probs, vb).view(hkv, bsz, g, lq, d)  # [Hkv, B, G, Lq, D]
    return out.permute(1, 3, 0, 2, 4).reshape(bsz * lq, num_heads * d)
