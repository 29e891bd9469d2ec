"""Step inputs: packed token ids/positions and paged-attention metadata for a list of rows.

Shared by the base model's runner and the proxy-tuning small models (which run the same rows
over their own block tables).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from deltaserve.engine.layers.attention import AttentionMeta
from deltaserve.engine.request import Sequence


@dataclass
class StepInputs:
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    logits_index: torch.Tensor  # [B]: packed row of each sequence's last token
    attn: AttentionMeta


def build_inputs(
    rows: list[tuple[Sequence, int]],
    tables: list[list[int]],
    block_size: int,
    sliding_window: int | None,
    device: torch.device,
    local_window: int | None = None,
) -> StepInputs:
    """rows: (sequence, tokens to compute this step); tables: the block table of each row.

    sliding_window: the window of every layer (None: global attention); local_window: the
    window of the sliding layers of a model that mixes both, given in `attn.local`.
    """
    bs = block_size
    ids, pos, slots, q_index_rows, last = [], [], [], [], []
    starts, q_lens, ctx_lens = [], [], []
    for (seq, n), bt in zip(rows, tables, strict=True):
        start = seq.num_computed_tokens
        base = len(ids)
        ids.extend(seq.token_slice(start, start + n))
        p = list(range(start, start + n))
        pos.extend(p)
        slots.extend(bt[i // bs] * bs + i % bs for i in p)
        q_index_rows.append(list(range(base, base + n)))
        last.append(base + n - 1)
        starts.append(start)
        q_lens.append(n)
        ctx_lens.append(start + n)
    attn = _attention_meta(starts, q_lens, ctx_lens, tables, q_index_rows, slots, bs,
                           sliding_window, device)
    if local_window:
        # Per-layer windows (Gemma): the sliding layers' mask and key ranges, the rest shared.
        local = _attention_meta(starts, q_lens, ctx_lens, tables, q_index_rows, slots, bs,
                                local_window, device)
        attn.local = replace(attn, mask=local.mask, key_ranges=local.key_ranges)
    return StepInputs(
        torch.tensor(ids, dtype=torch.long, device=device),
        torch.tensor(pos, dtype=torch.long, device=device),
        torch.tensor(last, dtype=torch.long, device=device),
        attn,
    )


def _attention_meta(starts, q_lens, ctx_lens, tables, q_rows, slots, bs: int,
                    sliding_window: int | None, dev: torch.device) -> AttentionMeta:
    total = len(slots)
    bsz = len(starts)
    nb = -(-max(ctx_lens) // bs)
    bt = torch.zeros(bsz, nb, dtype=torch.long)
    for i, t in enumerate(tables):
        k = min(len(t), nb)
        bt[i, :k] = torch.tensor(t[:k], dtype=torch.long)
    lq = max(q_lens)
    decode_only = lq == 1
    q_len_t = torch.tensor(q_lens)
    qi = torch.arange(lq)
    q_pos = torch.tensor(starts).unsqueeze(1) + qi  # [B, Lq] absolute query positions
    k_pos = torch.arange(nb * bs)
    mask = (k_pos.view(1, 1, -1) <= q_pos.unsqueeze(-1)) & (
        k_pos.view(1, 1, -1) < torch.tensor(ctx_lens).view(-1, 1, 1)
    )
    if sliding_window:
        mask &= k_pos.view(1, 1, -1) > q_pos.unsqueeze(-1) - sliding_window
    pad_q = qi.unsqueeze(0) >= q_len_t.unsqueeze(1)  # [B, Lq]
    mask[:, :, 0] |= pad_q  # padded query rows attend to one key (avoids NaN; discarded)
    meta = AttentionMeta(
        slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev),
        block_tables=bt.to(dev),
        block_size=bs,
        mask=mask.unsqueeze(1).to(dev),
        decode_only=decode_only,
    )
    if decode_only and dev.type == "cpu":  # for the CPU decode kernel (ops/attention_cpu.py)
        hi = torch.tensor(ctx_lens, dtype=torch.long)
        lo = (hi - sliding_window).clamp_(min=0) if sliding_window else torch.zeros_like(hi)
        meta.key_ranges = torch.stack([lo, hi], dim=1)
    elif not decode_only:
        q_index = torch.full((bsz, lq), total, dtype=torch.long)
        out_index = torch.empty(total, dtype=torch.long)
        for b, rows in enumerate(q_rows):
            q_index[b, : len(rows)] = torch.tensor(rows)
            out_index[rows[0] : rows[-1] + 1] = b * lq + torch.arange(len(rows))
        meta.q_index, meta.out_index = q_index.to(dev), out_index.to(dev)
    return meta
