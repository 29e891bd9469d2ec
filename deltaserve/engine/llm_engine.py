"""The synchronous engine: add_request / step / abort. One step = schedule → execute → update."""

from __future__ import annotations

import logging
import random
import time

import torch

from deltaserve.engine.adapters.base import AdapterError, AdapterRequest
from deltaserve.engine.adapters.lora import load_lora
from deltaserve.engine.adapters.pool import Adapter, AdapterPool
from deltaserve.engine.adapters.proxy import SmallModels, load_proxy, read_tokenizer_vocab
from deltaserve.engine.adapters.sparse_delta import load_sparse_delta
from deltaserve.engine.config import EngineConfig, ModelConfig
from deltaserve.engine.fairness import make_policy
from deltaserve.engine.grammar import GrammarCompiler, advance
from deltaserve.engine.hardware import (
    ADAPTER_POOL_MEMORY_SHARE,
    PROXY_MEMORY_SHARE,
    device_memory_bytes,
    keep_freed_memory,
)
from deltaserve.engine.kv_cache import BlockAllocator, KVCache, kv_bytes_per_block
from deltaserve.engine.model_runner import ModelRunner
from deltaserve.engine.models.loader import load_model
from deltaserve.engine.ops import lora_cpu
from deltaserve.engine.ops.lora import FUSED_MODULES, tune_shrink
from deltaserve.engine.outputs import CompletionOutput, RequestOutput, TokenLogprob
from deltaserve.engine.prefix_cache import base_identity, root_key
from deltaserve.engine.protocol import EngineStats
from deltaserve.engine.proxy_runner import ProxyRunner
from deltaserve.engine.request import Request, Sequence
from deltaserve.engine.sampler import SamplerOutput
from deltaserve.engine.sampling_params import SamplingParams
from deltaserve.engine.scheduler import Scheduler, SchedulerConfig, SchedulerOutput
from deltaserve.engine.stopping import check_stop, stop
from deltaserve.engine.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

_CPU_KV_DEFAULT = 512 << 20


class LLMEngine:
    def __init__(self, config: EngineConfig, tokenizer=None):
        self.config = config
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.device = config.resolve_device()
        if self.device.type == "cpu" and not keep_freed_memory():
            logger.info("malloc tuning unavailable (not glibc): step temporaries may page-fault")
        self.model_config = ModelConfig.from_dir(config.model)
        self.dtype, dtype_reason = config.torch_dtype(self.device)
        logger.info("serving dtype %s on %s: %s", str(self.dtype).removeprefix("torch."),
                    self.device, dtype_reason)
        mc = self.model_config
        self.max_model_len = min(config.max_model_len or mc.max_position_embeddings,
                                 mc.max_position_embeddings)
        self.model = load_model(config.model, mc, self.max_model_len, self.device, self.dtype,
                                config.quantization)
        rows = tune_shrink(self.device, self.dtype, mc.hidden_size)
        logger.info("LoRA shrink: transposed form up to %d rows per adapter on this machine", rows)
        if self.device.type == "cpu":  # compiled now, not in the first step
            logger.info("CPU LoRA kernel for decode steps: %s",
                        "built" if lora_cpu.available() else "unavailable (PyTorch path)")
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(config.model)
        self.eos_token_ids = set(mc.eos_token_ids)
        self._adapter_budget = config.adapter_device_bytes or self._default_adapter_budget()
        num_blocks = self._num_kv_blocks()
        self.small_models = SmallModels(
            mc, read_tokenizer_vocab(config.model), self._proxy_budget, num_blocks,
            config.block_size, self.max_model_len, self.device, self.dtype,
        )
        self.block_allocator = BlockAllocator(num_blocks, config.block_size,
                                              enable_caching=config.enable_prefix_caching)
        self._base_id = base_identity(config.model) if config.enable_prefix_caching else ""
        self.kv_cache = KVCache(mc, num_blocks, config.block_size, self.device, self.dtype)
        self.pool = AdapterPool(
            self._load_adapter, self.device, self.dtype,
            device_budget_bytes=self._adapter_budget,
            host_max_adapters=config.max_cpu_adapters,
            host_budget_bytes=config.adapter_host_bytes,
        )
        budget = config.step_token_budget(self.device, self.max_model_len)
        self.proxy_runner = ProxyRunner(self.pool.peek, config.block_size, self.device, self.dtype)
        self.scheduler = Scheduler(
            SchedulerConfig(
                max_num_seqs=config.max_num_seqs, max_num_batched_tokens=budget,
                max_loras=config.max_loras or config.max_num_seqs,
                adapter_budget_bytes=self.pool.device_budget_bytes,
                mixed_prefill_decode=config.mixed_prefill_decode,
                enable_chunked_prefill=config.enable_chunked_prefill,
            ),
            self.block_allocator,
            adapter_bytes=self.pool.device_bytes,
            policy=make_policy(config),
            side=self.proxy_runner,
        )
        self.runner = ModelRunner(self.model, mc, self.kv_cache, self.pool, config.block_size,
                                  self.device, self.dtype)
        self.runner.proxy = self.proxy_runner
        self.requests: dict[str, Request] = {}
        self.grammars = GrammarCompiler(self.tokenizer, mc.vocab_size, sorted(self.eos_token_ids))
        """Structured-output grammars for this tokenizer (compiled on request, cached)."""
        self._rng = random.Random(config.seed)
        self._next_seq_id = 0
        self.steps_total = 0
        self.last_batch_size = 0
        self.last_batch_adapters = 0
        logger.info("engine ready: %s on %s (%s), %d KV blocks of %d tokens, max_model_len %d, "
                    "step budget %d tokens, chunked prefill %s, prefix caching %s",
                    config.model, self.device, self.dtype, num_blocks, config.block_size,
                    self.max_model_len, budget, _on(config.enable_chunked_prefill),
                    _on(config.enable_prefix_caching) + (f" ({config.prefix_cache_scope} scope)"
                                                         if config.enable_prefix_caching else ""))

    # ---- setup --------------------------------------------------------------------------
    def _num_kv_blocks(self) -> int:
        cfg, mc = self.config, self.model_config
        per_block = kv_bytes_per_block(mc, cfg.block_size, self.dtype)
        budget = cfg.kv_cache_memory_bytes
        auto_cuda = budget is None and self.device.type == "cuda"
        if budget is None and self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            budget = int(free * cfg.gpu_memory_utilization)
        budget = budget or _CPU_KV_DEFAULT
        if cfg.proxy_memory_bytes is not None:
            self._proxy_budget = cfg.proxy_memory_bytes
        elif auto_cuda:
            self._proxy_budget = budget // 4
        else:  # a share of RAM: the small models' weights alone can outgrow a KV quarter
            self._proxy_budget = max(budget // 4,
                                     int(PROXY_MEMORY_SHARE * device_memory_bytes(self.device)))
        if auto_cuda:  # small models and adapters come out of the automatic KV budget
            budget -= self._proxy_budget + self._adapter_budget
        num_blocks = budget // per_block
        need = -(-self.max_model_len // cfg.block_size) + 1
        if num_blocks < need:
            raise ValueError(
                f"KV cache budget of {budget} bytes holds {num_blocks} blocks; one sequence of "
                f"max_model_len={self.max_model_len} needs {need}. Raise kv_cache_memory_bytes "
                "or lower max_model_len."
            )
        return int(num_blocks)

    def _default_adapter_budget(self) -> int:
        """With max_loras: room for that many adapters of max_lora_rank on every module, so any
        step fits. Without: a share of the device's memory (the scheduler then admits as many
        distinct adapters per step as their real sizes fit)."""
        if self.config.max_loras is not None:
            return self.config.max_loras * self._max_lora_bytes()
        return int(ADAPTER_POOL_MEMORY_SHARE * device_memory_bytes(self.device))

    def _max_lora_bytes(self) -> int:
        """Device bytes of the largest LoRA accepted: max_lora_rank on every module."""
        ins, outs = self.model.in_sizes(), self.model.out_sizes()
        # A fused module's LoRA (Phi-3) is stored as its parts: count the parts only.
        per_rank = sum(ins[m] + outs[m] for m in ins if m not in FUSED_MODULES)
        per_rank *= self.model_config.num_hidden_layers
        elem = torch.tensor([], dtype=self.dtype).element_size()
        return self.config.max_lora_rank * per_rank * elem

    @property
    def effective_max_loras(self) -> int:
        """Distinct adapters a step can always hold: the explicit cap, else as many of the
        largest LoRAs as the pool's budget fits (smaller ones fit more), at most max_num_seqs."""
        if self.config.max_loras is not None:
            return self.config.max_loras
        fit = self.pool.device_budget_bytes // max(1, self._max_lora_bytes())
        return max(1, min(self.config.max_num_seqs, fit))

    def _load_adapter(self, req: AdapterRequest) -> Adapter:
        ins, outs, layers = self.model.in_sizes(), self.model.out_sizes(), self.model_config.num_hidden_layers
        if req.kind == "lora":
            adapter = load_lora(req.name, req.path, ins, outs, layers, self.config.max_lora_rank)
        elif req.kind == "sparse_delta":
            adapter = load_sparse_delta(req.name, req.path, ins, outs, layers)
        elif req.kind == "proxy":
            return load_proxy(req.name, req.path, self.small_models, self.config.max_lora_rank)
        else:
            raise AdapterError(f"adapter kind {req.kind!r} is not supported by this engine")
        elem = torch.tensor([], dtype=self.dtype).element_size()
        need = adapter.device_nbytes(elem)
        if need > self.pool.device_budget_bytes:
            raise AdapterError(
                f"adapter {req.name!r} needs {need} bytes on the device, more than the whole "
                f"adapter pool ({self.pool.device_budget_bytes} bytes)"
            )
        return adapter

    # ---- requests -----------------------------------------------------------------------
    def add_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        adapter: AdapterRequest | None = None,
        tenant: str | None = None,
    ) -> None:
        """Validate and queue a request. Loads its adapter into host memory if needed."""
        if request_id in self.requests:
            raise ValueError(f"duplicate request id {request_id!r}")
        max_tokens = self.check_prompt(prompt_token_ids, params)
        if adapter is not None:
            self.pool.acquire(adapter)
        self.enqueue(request_id, prompt_token_ids, params, max_tokens, adapter, tenant)

    def check_prompt(self, prompt_token_ids: list[int], params: SamplingParams) -> int:
        """Raise ValueError for a prompt that cannot run; return the resolved max_tokens."""
        n = len(prompt_token_ids)
        if n == 0:
            raise ValueError("the prompt is empty")
        vocab = self.model_config.vocab_size
        if any(not 0 <= t < vocab for t in prompt_token_ids):
            raise ValueError(f"prompt token ids must be in [0, {vocab})")
        room = self.max_model_len - n
        if params.max_tokens is None:
            if room < 1:
                raise ValueError(
                    f"the prompt has {n} tokens, which leaves no room to generate in this "
                    f"model's context of {self.max_model_len} tokens"
                )
            return room
        if params.max_tokens > room:
            raise ValueError(
                f"this model's maximum context length is {self.max_model_len} tokens; the "
                f"prompt has {n} tokens and max_tokens is {params.max_tokens} "
                f"({n + params.max_tokens} in all). Shorten the prompt or lower max_tokens."
            )
        return params.max_tokens

    def enqueue(self, request_id, prompt, params, max_tokens, adapter, tenant=None) -> None:
        """Queue a request whose prompt was checked and whose adapter was acquired."""
        req = Request(request_id, list(prompt), params, max_tokens,
                      adapter_key=adapter.key if adapter else None,
                      adapter_name=adapter.name if adapter else None, tenant=tenant,
                      adapter_kind=adapter.kind if adapter else None)
        if self.config.enable_prefix_caching:
            req.cache_root = root_key(self._base_id, req.adapter_kind,
                                      adapter.uid if adapter else None, tenant,
                                      self.config.prefix_cache_scope)
        base_seed = params.seed if params.seed is not None else self._rng.getrandbits(32)
        for i in range(params.n):
            seq = Sequence(self._next_seq_id, req, i, seed=(base_seed + i * 0x9E3779B9) & 0xFFFFFFFF)
            self._next_seq_id += 1
            req.seqs.append(seq)
            self.scheduler.add(seq)
        self.requests[request_id] = req

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stop a request now: its KV blocks and adapter reference are returned at once."""
        req = self.requests.get(request_id)
        if req is None:
            return None
        for seq in req.seqs:
            if not seq.finished:
                seq.finish_reason = "abort"
                self.scheduler.finish(seq)
        return self._finish_request(req)

    def _finish_request(self, req: Request) -> RequestOutput:
        req.metrics.finished_time = time.monotonic()
        self.requests.pop(req.request_id, None)
        if req.adapter_key is not None:
            self.pool.release(req.adapter_key)
        return self._output(req)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    # ---- the step -----------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        sched = self.scheduler.schedule()
        if sched.is_empty:
            return []
        now = time.monotonic()
        for item in sched.scheduled:
            m = item.seq.request.metrics
            if m.first_scheduled_time is None:
                m.first_scheduled_time = now
        protected = set(self.scheduler.running_adapters())
        result = self.runner.execute(sched, protected)
        self.steps_total += 1
        self.last_batch_size = len(sched.scheduled)
        self.last_batch_adapters = len(sched.adapters)
        return self._update(sched, result)

    def _update(self, sched: SchedulerOutput, result: SamplerOutput) -> list[RequestOutput]:
        token_ids = result.token_ids.tolist()  # the step's one host sync
        lps = result.logprobs.tolist() if result.logprobs is not None else None
        top_ids = result.top_ids.tolist() if result.top_ids is not None else None
        top_lps = result.top_logprobs.tolist() if result.top_logprobs is not None else None
        now = time.monotonic()
        touched: dict[str, Request] = {}
        for req, scores in result.prompt_logprobs or ():
            req.prompt_logprobs = scores
        i = -1  # row of the sampler's output: only items that reached their last token
        for item in sched.scheduled:
            seq = item.seq
            sampled = item.samples
            seq.num_computed_tokens += item.num_new_tokens
            self.scheduler.cache_computed(seq)
            if not sampled:  # a prompt chunk: nothing to emit yet
                continue
            i += 1
            if seq.request.max_tokens == 0:  # scoring only: the prefill was the work
                stop(seq, self.tokenizer, "length", None)
                self.scheduler.finish(seq)
                touched[seq.request.request_id] = seq.request
                continue
            seq.output_token_ids.append(token_ids[i])
            if seq.params.logprobs is not None:
                k = seq.params.logprobs
                top = list(zip(top_ids[i][:k], top_lps[i][:k], strict=True)) if k else []
                seq.output_logprobs.append(TokenLogprob(token_ids[i], lps[i], top))
            if seq.request.metrics.first_token_time is None:
                seq.request.metrics.first_token_time = now
            grammar_done = advance(seq, token_ids[i])
            check_stop(seq, self.tokenizer, self.eos_token_ids, self.max_model_len)
            if grammar_done and not seq.finished:
                stop(seq, self.tokenizer, "stop", None)
            if seq.finished:
                self.scheduler.finish(seq)
            touched[seq.request.request_id] = seq.request
        outputs = []
        for req in touched.values():
            if req.finished:
                outputs.append(self._finish_request(req))
            elif req.params.output_kind == "cumulative":
                outputs.append(self._output(req))
        return outputs

    def _output(self, req: Request) -> RequestOutput:
        outs = [
            CompletionOutput(
                index=s.index, text=s.text, token_ids=list(s.output_token_ids),
                logprobs=list(s.output_logprobs) if s.params.logprobs is not None else None,
                finish_reason=s.finish_reason, stop_reason=s.stop_reason,
            )
            for s in req.seqs
        ]
        return RequestOutput(req.request_id, req.prompt_token_ids, outs, req.finished,
                             req.metrics, adapter=req.adapter_name,
                             prompt_logprobs=req.prompt_logprobs,
                             num_cached_tokens=req.num_cached_tokens)

    # ---- conveniences -------------------------------------------------------------------
    def generate(
        self,
        prompts: list[list[int]],
        params: SamplingParams | list[SamplingParams],
        adapters: list[AdapterRequest | None] | None = None,
    ) -> list[RequestOutput]:
        """Run prompts to completion (offline batch); outputs in prompt order."""
        plist = params if isinstance(params, list) else [params] * len(prompts)
        alist = adapters or [None] * len(prompts)
        ids = [f"gen-{self._next_seq_id}-{i}" for i in range(len(prompts))]
        for rid, prompt, p, a in zip(ids, prompts, plist, alist, strict=True):
            self.add_request(rid, prompt, p, a)
        final: dict[str, RequestOutput] = {}
        while self.has_unfinished():
            for out in self.step():
                if out.finished:
                    final[out.request_id] = out
        return [final[r] for r in ids]

    def stats(self) -> EngineStats:
        ps = self.pool.stats
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            kv_cache_usage=self.block_allocator.usage,
            max_loras=self.effective_max_loras,
            device=self.device.type,
            dtype=str(self.dtype).removeprefix("torch."),
            running_adapters=self._names(self.scheduler.running),
            waiting_adapters=self._names(self.scheduler.waiting),
            num_preemptions_total=self.scheduler.num_preemptions,
            last_batch_size=self.last_batch_size,
            last_batch_adapters=self.last_batch_adapters,
            steps_total=self.steps_total,
            adapters_resident={"device": ps.device_resident, "host": ps.host_resident},
            adapters_resident_bytes={"device": ps.device_bytes, "host": ps.host_bytes},
            adapter_cache_hits={"device": ps.device_hits, "host": ps.host_hits},
            adapter_cache_misses={"device": ps.device_misses, "host": ps.host_misses},
            prefix_cache_queries=dict(self.scheduler.prefix_stats.queries),
            prefix_cache_hits=dict(self.scheduler.prefix_stats.hits),
        )

    @staticmethod
    def _names(seqs: list[Sequence]) -> list[str]:
        return sorted({s.request.adapter_name for s in seqs if s.request.adapter_name})


def _on(flag: bool) -> str:
    return "on" if flag else "off"
