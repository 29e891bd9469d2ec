"""Step inputs: packed token ids/positions and paged-attention metadata for a list of rows.

Shared by the base model's runner and the proxy-tuning small models (which run the same rows
over their own block tables).
"""

from __future__ import annotations

from dataclasses import dataclass

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
    ids, pos, slots, last = [], [], [], []
    starts, q_lens = [], []
    for (seq, n), bt in zip(rows, tables, strict=True):
        start = seq.num_computed_tokens
        ids.extend(seq.token_slice(start, start + n))
        p = range(start, start + n)
        pos.extend(p)
        slots.extend(bt[i // bs] * bs + i % bs for i in p)
        last.append(len(ids) - 1)
        starts.append(start)
        q_lens.append(n)
    slot_t = torch.tensor(slots, dtype=torch.long, device=device)
    attn = _step_meta(starts, q_lens, tables, last, slot_t, bs, sliding_window, device)
    if local_window:  # per-layer windows (Gemma): the sliding layers' own metadata
        attn.local = _step_meta(starts, q_lens, tables, last, slot_t, bs, local_window, device)
    return StepInputs(
        torch.tensor(ids, dtype=torch.long, device=device),
        torch.tensor(pos, dtype=torch.long, device=device),
        torch.tensor(last, dtype=torch.long, device=device),
        attn,
    )


def _step_meta(starts, q_lens, tables, last, slots: torch.Tensor, bs: int,
               sliding_window: int | None, dev: torch.device) -> AttentionMeta:
    decodes = [i for i, n in enumerate(q_lens) if n == 1]
    if 0 < len(decodes) < len(q_lens):
        # A chunked-prefill step: decode rows and prompt chunks attend separately, so the
        # decodes keep their kernel and are not padded to the chunks' query length.
        return _mixed_meta(starts, q_lens, tables, last, decodes, slots, bs, sliding_window, dev)
    return _attention_meta(starts, q_lens, tables, slots, bs, sliding_window, dev)


def _mixed_meta(starts, q_lens, tables, last, decodes, slots: torch.Tensor, bs: int,
                sliding_window: int | None, dev: torch.device) -> AttentionMeta:
    """Two sub-steps over the same packed tokens: the decode rows, and the others."""
    chunks = [i for i in range(len(q_lens)) if q_lens[i] != 1]
    parts = []
    for sel in (decodes, chunks):
        tokens = [t for i in sel for t in range(last[i] - q_lens[i] + 1, last[i] + 1)]
        idx = torch.tensor(tokens, dtype=torch.long, device=dev)
        sub = _attention_meta([starts[i] for i in sel], [q_lens[i] for i in sel],
                              [tables[i] for i in sel], slots.index_select(0, idx), bs,
                              sliding_window, dev)
        parts.append((idx, sub))
    return AttentionMeta(slot_mapping=slots, block_tables=None, block_size=bs, mask=None,
                         decode_only=False, parts=parts)


def _attention_meta(starts, q_lens, tables, slots: torch.Tensor, bs: int,
                    sliding_window: int | None, dev: torch.device) -> AttentionMeta:
    """Rows' packed tokens are consecutive, in row order; row b has q_lens[b] queries at
    positions starts[b] .. starts[b] + q_lens[b] - 1."""
    total = len(slots)
    bsz = len(starts)
    ctx_lens = [s + n for s, n in zip(starts, q_lens, strict=True)]
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
        slot_mapping=slots,
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
        base = 0
        for b, n in enumerate(q_lens):
            q_index[b, :n] = torch.arange(base, base + n)
            out_index[base:base + n] = b * lq + torch.arange(n)
            base += n
        meta.q_index, meta.out_index = q_index.to(dev), out_index.to(dev)
        if dev.type == "cpu" and bsz > 1:  # unpadded, one sequence at a time (layers/attention.py)
            firsts = [0, *torch.tensor(q_lens).cumsum(0)[:-1].tolist()]
            meta.seq_spans = list(zip(firsts, q_lens, ctx_lens, strict=True))
    return meta
