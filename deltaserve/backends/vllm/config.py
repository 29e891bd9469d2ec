"""What the vLLM backend is told: the `deltaserve serve` settings it reads, as a protocol.

The entrypoints' `Settings` satisfies it as is; the backend never imports the entrypoints
(backends sit beside the engine, below the HTTP layer).
"""

from __future__ import annotations

from typing import Protocol


class VLLMBackendConfig(Protocol):
    """The serve settings (same names, same meaning) that become vLLM engine arguments."""

    model: str
    dtype: str
    seed: int
    max_num_seqs: int
    max_waiting: int
    max_model_len: int | None
    max_num_batched_tokens: int | None
    enable_chunked_prefill: bool
    enable_prefix_caching: bool
    max_lora_rank: int
    max_loras: int | None
    max_gpu_adapters: int | None
    max_cpu_loras: int | None
    max_cpu_adapters: int
    tensor_parallel_size: int
    pipeline_parallel_size: int
    distributed_executor_backend: str | None
    gpu_memory_utilization: float
    enforce_eager: bool
    vllm_engine_arg: list[str]

    @property
    def base_model_id(self) -> str:
        """The base model's id in the API (served_model_name)."""
        ...
