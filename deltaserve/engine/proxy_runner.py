"""Runs the proxy-tuning small models for the proxy rows of a step and combines the logits.

Each small model mirrors the scheduled proxy rows: same token ids and positions as the base
rows (the vocabulary is shared), its own block table per (sequence, role). The scheduler calls
`grow`/`free` (the SideCaches protocol) so a proxy row is only admitted or decoded when every
small model it needs can hold it, and preemption, abort and completion free those blocks too.
An expert that is a LoRA on its anti-expert runs in the same forward as the anti-expert rows:
one batch with each row twice (as anti, and as expert through the multi-LoRA path).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch

from deltaserve.engine.adapters.batch import AdapterBatch
from deltaserve.engine.adapters.proxy import ProxyAdapter, SmallModel
from deltaserve.engine.inputs import build_inputs
from deltaserve.engine.ops.lora import LoRARows, LoRAStack
from deltaserve.engine.ops.proxy import proxy_combine
from deltaserve.engine.request import Sequence
from deltaserve.engine.scheduler import ScheduledSeq

# One small-model row: (index among the step's proxy rows, role, scheduled item, adapter).
_Entry = tuple[int, str, ScheduledSeq, ProxyAdapter]


class ProxyRunner:
    def __init__(self, lookup: Callable[[str], object], block_size: int, device: torch.device,
                 dtype: torch.dtype):
        self._lookup = lookup  # adapter key → loaded adapter (the pool's peek)
        self.block_size, self.device, self.dtype = block_size, device, dtype
        # Per small model: the expert LoRAs last stacked (sorted keys) and their stack, reused
        # while a step's experts are the same (decode steps of a steady batch).
        self._stacks: weakref.WeakKeyDictionary[SmallModel, tuple[tuple[str, ...], LoRAStack]] = \
            weakref.WeakKeyDictionary()  # a small model unloaded takes its stack along

    def proxy_of(self, seq: Sequence) -> ProxyAdapter | None:
        if seq.adapter_key is None:
            return None
        ad = self._lookup(seq.adapter_key)
        return ad if isinstance(ad, ProxyAdapter) else None

    # ---- SideCaches (called by the scheduler) ---------------------------------------------
    def grow(self, seq: Sequence, num_tokens: int) -> bool:
        """Give seq blocks for num_tokens in every small model it needs; all or nothing."""
        px = self.proxy_of(seq)
        if px is None:
            return True
        need: dict[SmallModel, int] = {}
        for sm, role in px.streams():
            have = len(sm.tables.get((seq.seq_id, role), ()))
            need[sm] = need.get(sm, 0) + max(0, sm.blocks.blocks_for(num_tokens) - have)
        if not all(sm.blocks.can_allocate(n) for sm, n in need.items()):
            return False
        for sm, role in px.streams():
            table = sm.tables.setdefault((seq.seq_id, role), [])
            table.extend(sm.blocks.allocate(max(0, sm.blocks.blocks_for(num_tokens) - len(table))))
        return True

    def free(self, seq: Sequence) -> None:
        px = self.proxy_of(seq)
        if px is None:
            return
        for sm, role in px.streams():
            table = sm.tables.pop((seq.seq_id, role), None)
            if table is not None:
                sm.blocks.free(table)

    # ---- the step -------------------------------------------------------------------------
    def combine(self, items: list[ScheduledSeq], logits: torch.Tensor) -> torch.Tensor:
        """logits: [B, V] base logits of `items` (same order); returns the combined logits."""
        entries: dict[SmallModel, list[_Entry]] = {}
        rows, alphas = [], []
        for i, item in enumerate(items):
            px = self.proxy_of(item.seq)
            if px is None:
                continue
            p = len(rows)
            rows.append(i)
            a = item.seq.params.proxy_alpha
            alphas.append(px.alpha if a is None else a)
            entries.setdefault(px.anti, []).append((p, "anti", item, px))
            entries.setdefault(px.expert, []).append((p, "expert", item, px))
        if not rows:
            return logits
        n, vocab = len(rows), logits.shape[1]
        by_role = {r: torch.empty(n, vocab, device=logits.device) for r in ("anti", "expert")}
        for sm, ents in entries.items():
            out = self._forward(sm, ents)  # [len(ents), V]
            for role in ("anti", "expert"):
                sel = [k for k, e in enumerate(ents) if e[1] == role]
                if sel:
                    idx = torch.tensor([ents[k][0] for k in sel], device=logits.device)
                    src = out.index_select(0, torch.tensor(sel, device=out.device))
                    by_role[role].index_copy_(0, idx, src)
        dev = logits.device
        return proxy_combine(logits, torch.tensor(rows, device=dev), by_role["expert"],
                             by_role["anti"], torch.tensor(alphas, dtype=torch.float32, device=dev))

    def combine_prompt(self, item: ScheduledSeq, logits: torch.Tensor) -> torch.Tensor:
        """logits: [n, V] base logits at positions 0..n-1 of a row computing its whole prompt
        (prompt logprobs); returns them proxy-combined (non-proxy rows: unchanged).

        The small models recompute those positions: their KV writes repeat this step's.
        """
        px = self.proxy_of(item.seq)
        if px is None:
            return logits
        n = logits.shape[0]
        by_role: dict[str, torch.Tensor] = {}
        for sm in dict.fromkeys(s for s, _ in px.streams()):
            ents = [(0, role, item, px) for s, role in px.streams() if s is sm]
            out = self._forward(sm, ents, prompt_positions=n)  # [len(ents) * n, V]
            for k, e in enumerate(ents):
                by_role[e[1]] = out[k * n:(k + 1) * n]
        a = item.seq.params.proxy_alpha
        alpha = torch.full((n,), px.alpha if a is None else a, device=logits.device)
        return proxy_combine(logits, torch.arange(n, device=logits.device), by_role["expert"],
                             by_role["anti"], alpha)

    def _forward(self, sm: SmallModel, ents: list[_Entry],
                 prompt_positions: int | None = None) -> torch.Tensor:
        """One forward of small model `sm` over its rows; returns logits [len(ents), V]
        (with prompt_positions=n: [len(ents) * n, V], positions 0..n-1 of each entry)."""
        seqs = [(e[2].seq, e[2].num_new_tokens) for e in ents]
        tables = [sm.tables[(e[2].seq.seq_id, e[1])] for e in ents]
        inputs = build_inputs(seqs, tables, self.block_size, sm.cfg.global_window, self.device,
                              sm.cfg.local_window)
        batch = self._lora_batch(sm, ents)
        index = inputs.logits_index
        if prompt_positions is not None:
            step = ents[0][2].num_new_tokens  # every entry is the same row
            index = torch.cat([torch.arange(k * step, k * step + prompt_positions)
                               for k in range(len(ents))]).to(self.device)
        return sm.model(inputs.input_ids, inputs.positions, sm.kv.layers, inputs.attn,
                        index, batch)

    def _lora_batch(self, sm: SmallModel, ents: list[_Entry]) -> AdapterBatch | None:
        """Expert rows whose expert is a LoRA on `sm` go through the multi-LoRA path."""
        experts = {px.lora_key: px.expert_lora.tensors for _, role, _, px in ents
                   if role == "expert" and px.expert_lora is not None}
        if not experts:
            return None
        keys = tuple(sorted(experts))
        slot_of = {k: i for i, k in enumerate(keys)}
        slots: list[int] = []
        for _, role, item, px in ents:
            expert = role == "expert" and px.expert_lora is not None
            slots.extend([slot_of[px.lora_key] if expert else -1] * item.num_new_tokens)
        cached = self._stacks.get(sm)
        if cached is None or cached[0] != keys:
            m = sm.model
            stack = LoRAStack([experts[k] for k in keys], m.out_sizes(), sm.cfg.num_hidden_layers,
                              self.device, self.dtype)
            cached = self._stacks[sm] = (keys, stack)
        return AdapterBatch(lora_stack=cached[1],
                            lora_rows=LoRARows.build(slots, len(keys), self.device, self.dtype))
