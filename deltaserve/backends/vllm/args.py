"""From the serve settings to vLLM's engine arguments (plain data: vllm is not imported).

The flags the issue names are passed through; `--vllm-engine-arg KEY=VALUE` reaches any other
`vllm.engine.arg_utils.AsyncEngineArgs` field and wins over what is derived here.
"""

from __future__ import annotations

import json
from typing import Any

from deltaserve.backends.vllm.config import VLLMBackendConfig

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM accepts for max_lora_rank (LoRAConfig.MaxLoRARanks)."""


DEFAULT_MAX_LORAS = 8
"""vLLM needs a fixed number of LoRA slots per batch; without --max-loras, this many."""


class EngineArgError(ValueError):
    """A `--vllm-engine-arg` that cannot be used."""


def lora_rank_cap(max_lora_rank: int) -> int:
    """The smallest rank vLLM accepts that is >= --max-lora-rank."""
    for rank in VLLM_LORA_RANKS:
        if rank >= max_lora_rank:
            return rank
    raise EngineArgError(
        f"--max-lora-rank {max_lora_rank} is above vLLM's largest ({VLLM_LORA_RANKS[-1]})"
    )


def parse_engine_args(items: list[str]) -> dict[str, Any]:
    """["key=value", ...] → {key: value}; a value is JSON when it parses, else a string."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise EngineArgError(f"--vllm-engine-arg {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def engine_kwargs(settings: VLLMBackendConfig) -> dict[str, Any]:
    """Keyword arguments of AsyncEngineArgs for `settings` (LoRA always enabled)."""
    max_loras = settings.max_loras or settings.max_gpu_adapters or DEFAULT_MAX_LORAS
    max_cpu_loras = max(settings.max_cpu_loras or settings.max_cpu_adapters, max_loras)
    kwargs: dict[str, Any] = {
        "model": settings.model,
        "served_model_name": settings.base_model_id,
        "dtype": settings.dtype,
        "seed": settings.seed,
        "max_num_seqs": settings.max_num_seqs,
        "tensor_parallel_size": settings.tensor_parallel_size,
        "pipeline_parallel_size": settings.pipeline_parallel_size,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        "enforce_eager": settings.enforce_eager,
        "enable_lora": True,
        "max_loras": max_loras,
        "max_lora_rank": lora_rank_cap(settings.max_lora_rank),
        "max_cpu_loras": max_cpu_loras,
        "enable_prefix_caching": settings.enable_prefix_caching,
        "enable_chunked_prefill": settings.enable_chunked_prefill,
        # Our stat logger feeds /metrics; vLLM's own loggers would only print.
        "disable_log_stats": False,
    }
    if settings.max_model_len is not None:
        kwargs["max_model_len"] = settings.max_model_len
    if settings.max_num_batched_tokens is not None:
        kwargs["max_num_batched_tokens"] = settings.max_num_batched_tokens
    if settings.distributed_executor_backend is not None:
        kwargs["distributed_executor_backend"] = settings.distributed_executor_backend
    kwargs.update(parse_engine_args(settings.vllm_engine_arg))
    return kwargs
