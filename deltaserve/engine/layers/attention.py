"""Paged attention: write this step's K/V into the block cache, attend over the cache.

This is the plain-PyTorch path (CPU, and the oracle for any GPU kernel): queries are padded
per sequence, keys/values gathered from the paged cache by an index tensor, and
scaled_dot_product_attention runs once for the whole batch — no loop over sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AttentionMeta:
    """Per-step attention inputs, shared by every layer. B sequences, T packed tokens."""

    slot_mapping: torch.Tensor
    """[T] long: flat cache slot (block * block_size + offset) each new token's K/V goes to."""
    kv_index: torch.Tensor
    """[B, Lk] long: flat cache slots of each sequence's context (padded; padding masked)."""
    mask: torch.Tensor
    """[B, 1, Lq, Lk] bool: True where a query may attend to a key (causal, length, window)."""
    decode_only: bool
    """Every sequence has exactly one query token (T == B, in sequence order)."""
    q_index: torch.Tensor | None = None
    """[B, Lq] long into the packed tokens; padding points at row T (a zero row)."""
    out_index: torch.Tensor | None = None
    """[T] long: where each packed token sits in the flattened [B * Lq] padded output."""


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMeta,
    num_heads: int,
) -> torch.Tensor:
    """q: [T, H, D]; k, v: [T, Hkv, D]; caches: [num_slots, Hkv, D]. Returns [T, H*D]."""
    k_cache.index_copy_(0, meta.slot_mapping, k)
    v_cache.index_copy_(0, meta.slot_mapping, v)
    bsz = meta.kv_index.shape[0]
    head_dim = q.shape[-1]
    if meta.decode_only:
        qb = q.view(bsz, 1, num_heads, head_dim)
    else:
        q_ext = torch.cat([q, q.new_zeros(1, num_heads, head_dim)], dim=0)
        qb = q_ext[meta.q_index]  # [B, Lq, H, D]
    # index_select on a flat index is several times faster than advanced indexing on CPU.
    flat = meta.kv_index.view(-1)
    kb = k_cache.index_select(0, flat).view(bsz, -1, *k_cache.shape[1:])  # [B, Lk, Hkv, D]
    vb = v_cache.index_select(0, flat).view(bsz, -1, *v_cache.shape[1:])
    out = F.scaled_dot_product_attention(
        qb.transpose(1, 2),
        kb.transpose(1, 2),
        vb.transpose(1, 2),
        attn_mask=meta.mask,
        enable_gqa=kb.shape[2] != num_heads,
    )  # [B, H, Lq, D]
    out = out.transpose(1, 2).reshape(-1, num_heads * head_dim)  # [B*Lq, H*D]
    if not meta.decode_only:
        out = out.index_select(0, meta.out_index)
    return out
