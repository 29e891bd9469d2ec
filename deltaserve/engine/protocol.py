"""EngineClient: the one interface the HTTP layer drives, whichever engine runs behind it.

Two implementations: the native `deltaserve.engine.async_engine.AsyncLLMEngine` and
`deltaserve.backends.vllm.client.VLLMEngineClient`; `entrypoints/engine_factory.py` picks one per
`--engine`. Both satisfy the protocol structurally (neither imports the other).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from deltaserve.engine.adapters.base import AdapterRequest
from deltaserve.engine.outputs import RequestOutput
from deltaserve.engine.sampling_params import SamplingParams


@dataclass
class EngineStats:
    """A snapshot for /metrics and the gateway protocol, taken between steps."""

    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0
    """Fraction (0..1) of KV blocks in use."""
    max_loras: int = 0
    """Distinct adapters allowed in one step."""
    device: str = ""
    """Where the base model runs ('cpu', 'cuda')."""
    dtype: str = ""
    """The serving dtype ('float32', 'bfloat16', 'float16')."""
    running_adapters: list[str] = field(default_factory=list)
    waiting_adapters: list[str] = field(default_factory=list)
    num_preemptions_total: int = 0
    last_batch_size: int = 0
    """Sequences in the last executed step."""
    last_batch_adapters: int = 0
    """Distinct adapters in the last executed step."""
    steps_total: int = 0
    adapters_resident: dict[str, int] = field(default_factory=dict)
    """Adapters resident per tier ('device', 'host')."""
    adapters_resident_bytes: dict[str, int] = field(default_factory=dict)
    """Bytes of resident adapters per tier ('device', 'host')."""
    adapter_cache_hits: dict[str, int] = field(default_factory=dict)
    """Cumulative lookups served by each tier ('device', 'host')."""
    adapter_cache_misses: dict[str, int] = field(default_factory=dict)
    """Cumulative lookups each tier could not serve."""
    prefix_cache_queries: dict[str, int] = field(default_factory=dict)
    """Cumulative prompt tokens looked up in the prefix cache, per adapter kind ('base', ...)."""
    prefix_cache_hits: dict[str, int] = field(default_factory=dict)
    """Cumulative prompt tokens found there, per adapter kind."""


class EngineClient(Protocol):
    """What the HTTP layer needs from an engine. All methods are safe to call from the event loop."""

    tokenizer: Any
    """A transformers tokenizer (encode/decode/apply_chat_template)."""
    max_model_len: int
    """Context length: prompt + generated tokens must fit."""

    def generate(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        request_id: str,
        adapter: AdapterRequest | None = None,
        tenant: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Stream cumulative outputs; the last one has finished=True.

        Cancelling the iterator (client gone) aborts the request and frees its resources.
        Raises AdapterError for an adapter that cannot be loaded, ValueError for bad input,
        QueueFullError when the waiting queue is full.
        """
        ...

    async def abort(self, request_id: str) -> None:
        """Abort a request; a no-op for unknown or finished ids."""
        ...

    def drop_adapter(self, key: str) -> None:
        """Forget an adapter's weights (by AdapterRequest.key) once no request holds it."""
        ...

    def set_adapter_load_observer(self, observer: Callable[[str, float], None]) -> None:
        """Call observer(tier, seconds) after each adapter load into a tier (any thread)."""
        ...

    def stats(self) -> EngineStats: ...

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...


class QueueFullError(RuntimeError):
    """The waiting queue is at its limit; the request was not admitted (HTTP 429)."""
