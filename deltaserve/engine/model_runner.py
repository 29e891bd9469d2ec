"""Turns a SchedulerOutput into tensors, runs the model and samples: prepare → forward → sample."""

from __future__ import annotations

import torch

from deltaserve.engine import prompt_logprobs
from deltaserve.engine.adapters.batch import AdapterBatch
from deltaserve.engine.adapters.lora import LoRAAdapter
from deltaserve.engine.adapters.pool import AdapterPool
from deltaserve.engine.adapters.sparse_delta import SparseDeltaAdapter
from deltaserve.engine.adapters.stack_cache import StackCache
from deltaserve.engine.config import ModelConfig
from deltaserve.engine.grammar import apply_bitmask
from deltaserve.engine.inputs import StepInputs, build_inputs
from deltaserve.engine.kv_cache import KVCache
from deltaserve.engine.models.decoder import CausalLM
from deltaserve.engine.ops.lora import LoRARows, LoRAStack
from deltaserve.engine.ops.sparse_delta import DeltaRows, SparseDeltaStack
from deltaserve.engine.proxy_runner import ProxyRunner
from deltaserve.engine.request import Sequence
from deltaserve.engine.sampler import SamplerOutput, SamplingTensors, sample
from deltaserve.engine.scheduler import SchedulerOutput


class ModelRunner:
    def __init__(
        self,
        model: CausalLM,
        cfg: ModelConfig,
        kv: KVCache,
        pool: AdapterPool,
        block_size: int,
        device: torch.device,
        dtype: torch.dtype,
    ):
        self.model = model
        self.cfg = cfg
        self.kv = kv
        self.pool = pool
        self.block_size = block_size
        self.device = device
        self.dtype = dtype
        self._loras: StackCache[LoRAStack] = StackCache(pool, self._lora_stack)
        self._deltas: StackCache[SparseDeltaStack] = StackCache(pool, self._delta_stack)
        self.proxy: ProxyRunner | None = None
        """Runs proxy-tuning small models and combines their logits (set by the engine)."""

    def execute(self, sched: SchedulerOutput, protected: set[str]) -> SamplerOutput:
        """Run one step; the output has a row for each scheduled item that samples, in order."""
        adapters = self._adapter_batch(sched, protected)  # also orders rows by adapter
        inputs = self.prepare(sched)
        index = inputs.logits_index
        scoring = prompt_logprobs.plan(sched.scheduled, self.device)
        if scoring is not None:  # rows scoring their prompt: logits at every prompt position
            index = torch.cat([index, scoring.index])
        logits = self.model(
            inputs.input_ids, inputs.positions, self.kv.layers, inputs.attn, index, adapters,
        )
        b = len(sched.scheduled)
        logits, extra = logits[:b], logits[b:]
        if self.proxy is not None:  # its small models compute every row, chunks included
            logits = self.proxy.combine(sched.scheduled, logits)
        done = [i for i, it in enumerate(sched.scheduled) if it.samples]
        if len(done) < b:  # prompt chunks that leave part of their prompt sample nothing
            logits = logits.index_select(0, torch.tensor(done, dtype=torch.long, device=logits.device))
        seqs = [sched.scheduled[i].seq for i in done]
        apply_bitmask(logits, seqs)
        out = sample(logits, self.sampling_tensors(seqs, logits.shape[1]))
        if scoring is not None:
            combine = self.proxy.combine_prompt if self.proxy is not None else None
            out.prompt_logprobs = prompt_logprobs.score(scoring, extra, combine)
        return out

    # ---- inputs -------------------------------------------------------------------------
    def prepare(self, sched: SchedulerOutput) -> StepInputs:
        rows = [(it.seq, it.num_new_tokens) for it in sched.scheduled]
        return build_inputs(rows, [it.seq.block_table for it in sched.scheduled],
                            self.block_size, self.cfg.global_window, self.device,
                            self.cfg.local_window)

    # ---- adapters -----------------------------------------------------------------------
    def _adapter_batch(self, sched: SchedulerOutput, protected: set[str]) -> AdapterBatch | None:
        keys = sched.adapters
        if not keys:
            return None
        # proxy keys are neither: their rows run the base model plainly (see proxy_runner.py)
        delta_keys = [k for k in keys if isinstance(self.pool.peek(k), SparseDeltaAdapter)]
        lora_keys = [k for k in keys if isinstance(self.pool.peek(k), LoRAAdapter)]
        stack_keys = (self._loras.covering(lora_keys, protected | set(delta_keys))
                      if lora_keys else [])
        dkeys = (self._deltas.covering(delta_keys, protected | set(stack_keys))
                 if delta_keys else [])
        lora_slot = {k: i for i, k in enumerate(stack_keys)}
        delta_slot = {k: i for i, k in enumerate(dkeys)}
        # Rows of one adapter side by side (LoRA rows, then delta rows, base rows last): for
        # uniform batches the ops then work on views of the packed rows (no gather/scatter).
        # Outputs follow this order.
        n_l, n_d = len(lora_slot), len(delta_slot)
        sched.scheduled.sort(key=lambda it: lora_slot.get(
            it.seq.adapter_key, n_l + delta_slot.get(it.seq.adapter_key, n_d)))
        lora_row_slots: list[int] = []
        delta_row_slots: list[int] = []
        for item in sched.scheduled:
            key, n = item.seq.adapter_key, item.num_new_tokens
            lora_row_slots.extend([lora_slot.get(key, -1)] * n)
            delta_row_slots.extend([delta_slot.get(key, -1)] * n)
        batch = AdapterBatch()
        if lora_keys:
            batch.lora_stack = self._loras.stack
            batch.lora_rows = LoRARows.build(lora_row_slots, n_l, self.device, self.dtype)
        if delta_keys:
            batch.delta_stack = self._deltas.stack
            batch.delta_rows = DeltaRows.build(delta_row_slots, n_d, self.device, self.dtype)
        return batch

    def _lora_stack(self, adapters: list[LoRAAdapter]) -> LoRAStack:
        return LoRAStack([a.tensors for a in adapters], self.model.out_sizes(),
                         self.cfg.num_hidden_layers, self.device, self.dtype)

    def _delta_stack(self, deltas: list[SparseDeltaAdapter]) -> SparseDeltaStack:
        return SparseDeltaStack([d.tensors for d in deltas], self.model.in_sizes(),
                                self.model.out_sizes(), self.cfg.num_hidden_layers, self.device,
                                self.dtype)

    # ---- sampling -----------------------------------------------------------------------
    def sampling_tensors(self, seqs: list[Sequence], vocab: int) -> SamplingTensors:
        temps, top_p, top_k, seeds, steps = [], [], [], [], []
        banned_r, banned_t = [], []
        max_lp = -1
        eos = self.cfg.eos_token_ids
        for row, seq in enumerate(seqs):
            p = seq.params
            temps.append(p.temperature)
            top_p.append(p.top_p)
            top_k.append(p.top_k if p.top_k > 0 else vocab)
            seeds.append(seq.seed)
            steps.append(len(seq.output_token_ids))
            if p.logprobs is not None:
                max_lp = max(max_lp, p.logprobs)
            if len(seq.output_token_ids) < p.min_tokens:
                ban = list(p.stop_token_ids) + ([] if p.ignore_eos else eos)
                banned_r.extend([row] * len(ban))
                banned_t.extend(ban)
        dev = self.device
        return SamplingTensors(
            temperature=torch.tensor(temps, dtype=torch.float32, device=dev),
            top_p=torch.tensor(top_p, dtype=torch.float32, device=dev),
            top_k=torch.tensor(top_k, dtype=torch.long, device=dev),
            seeds=torch.tensor(seeds, dtype=torch.long, device=dev),
            steps=torch.tensor(steps, dtype=torch.long, device=dev),
            banned_rows=torch.tensor(banned_r, dtype=torch.long, device=dev),
            banned_tokens=torch.tensor(banned_t, dtype=torch.long, device=dev),
            all_greedy=all(t == 0 for t in temps),
            need_filter=any(p < 1.0 for p in top_p) or any(k < vocab for k in top_k),
            max_logprobs=max_lp,
        )

