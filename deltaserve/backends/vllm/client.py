"""`VLLMEngineClient`: deltaserve.engine.protocol.EngineClient over vLLM's AsyncLLM (v1).

The engine runs in-process (its core in the worker processes vLLM starts). Base requests go
as they are; `lora` adapters (and mixes, which the router materialised into a PEFT LoRA
directory) go as LoRARequests whose path is the store's local content. Other kinds are
refused before anything is queued (400 naming `--engine native`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.inputs import TokensPrompt
from vllm.lora.request import LoRARequest
from vllm.platforms import current_platform
from vllm.usage.usage_lib import UsageContext
from vllm.v1.engine.async_llm import AsyncLLM

from deltaserve.backends.vllm.adapters import LoRAIds, check_kind, check_lora_config
from deltaserve.backends.vllm.args import EngineArgError, engine_kwargs
from deltaserve.backends.vllm.config import VLLMBackendConfig
from deltaserve.backends.vllm.convert import OutputConverter, vllm_sampling_params
from deltaserve.backends.vllm.stats import StatsFeed
from deltaserve.engine.adapters.base import AdapterError, AdapterRequest
from deltaserve.engine.outputs import RequestOutput
from deltaserve.engine.protocol import EngineStats, QueueFullError
from deltaserve.engine.sampling_params import SamplingParams
from deltaserve.engine.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)


def _engine_config(kwargs: dict):
    try:
        args = AsyncEngineArgs(**kwargs)
    except TypeError as exc:  # an unknown --vllm-engine-arg key
        raise EngineArgError(f"not a vLLM engine argument: {exc}") from None
    return args.create_engine_config(UsageContext.OPENAI_API_SERVER)


class VLLMEngineClient:
    """The server's engine interface, driving vLLM."""

    def __init__(self, settings: VLLMBackendConfig):
        kwargs = engine_kwargs(settings)
        self.config = _engine_config(kwargs)
        self.max_model_len: int = self.config.model_config.max_model_len
        self.vocab_size: int = self.config.model_config.get_vocab_size()
        self.tokenizer = load_tokenizer(settings.model)
        self.max_waiting = settings.max_waiting
        self.max_lora_rank = settings.max_lora_rank
        self._ids = LoRAIds()
        self._loads: dict[int, asyncio.Future[None]] = {}
        self._hits = {"host": 0}
        self._misses = {"host": 0}
        dtype = str(self.config.model_config.dtype).removeprefix("torch.")
        self._feed = StatsFeed(kwargs["max_loras"], current_platform.device_type, dtype,
                               self._adapter_stats)  # fmt: skip
        self._on_load: Callable[[str, float], None] | None = None
        self._engine: AsyncLLM | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Future] = set()
        self._active = 0
        """Requests between admission and their last output (vLLM's gauges lag by a step)."""

    # ---- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        if self._engine is None:
            self._loop = asyncio.get_running_loop()
            self._engine = AsyncLLM.from_vllm_config(
                self.config, usage_context=UsageContext.OPENAI_API_SERVER,
                stat_loggers=[self._feed.factory],
            )  # fmt: skip

    async def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None

    def stats(self) -> EngineStats:
        return self._feed.stats(idle=self._active == 0)

    def _adapter_stats(self) -> dict:
        return {
            "adapters_resident": {"host": self._ids.known()},
            "adapter_cache_hits": dict(self._hits),
            "adapter_cache_misses": dict(self._misses),
        }

    def set_adapter_load_observer(self, observer: Callable[[str, float], None]) -> None:
        self._on_load = observer

    # ---- adapters -----------------------------------------------------------------------
    def drop_adapter(self, key: str) -> None:
        """Forget an adapter's id; vLLM frees it now, or when its last request ends."""
        int_id = self._ids.drop(key)
        if int_id is not None:
            self._remove_soon(int_id)

    def _remove_soon(self, int_id: int) -> None:
        if self._loop is None or self._engine is None:
            return
        engine = self._engine

        def schedule() -> None:
            task = asyncio.ensure_future(engine.remove_lora(int_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        self._loop.call_soon_threadsafe(schedule)

    async def _lora_request(self, adapter: AdapterRequest) -> LoRARequest:
        """The adapter as a LoRARequest, loaded into vLLM's host cache on its first use."""
        check_kind(adapter)
        slot, new = self._ids.slot(adapter)
        request = LoRARequest(slot.name, slot.int_id, slot.path)
        if new:
            self._misses["host"] += 1
            self._loads[slot.int_id] = asyncio.ensure_future(self._load(adapter, request))
        else:
            self._hits["host"] += 1
        load = self._loads.get(slot.int_id)
        if load is not None:
            await asyncio.shield(load)
            self._loads.pop(slot.int_id, None)
        return request

    async def _load(self, adapter: AdapterRequest, request: LoRARequest) -> None:
        assert self._engine is not None
        start = time.monotonic()
        try:
            check_lora_config(Path(adapter.path), self.max_lora_rank)
            await self._engine.add_lora(request)
        except Exception as exc:  # vLLM refused the weights: the request gets a 400
            self._ids.forget_new(adapter, request.lora_int_id)
            self._loads.pop(request.lora_int_id, None)
            if isinstance(exc, AdapterError):
                raise
            raise AdapterError(f"vLLM could not load it: {exc}") from None
        if self._on_load is not None:
            self._on_load("host", time.monotonic() - start)

    # ---- requests -----------------------------------------------------------------------
    def _check_prompt(self, prompt: list[int], params: SamplingParams) -> None:
        """The native engine's checks, so both engines refuse the same requests alike."""
        n = len(prompt)
        if n == 0:
            raise ValueError("the prompt is empty")
        if any(not 0 <= t < self.vocab_size for t in prompt):
            raise ValueError(f"prompt token ids must be in [0, {self.vocab_size})")
        if n + max(params.max_tokens or 0, 1) > self.max_model_len:
            raise ValueError(
                f"this model's maximum context length is {self.max_model_len} tokens; the "
                f"prompt has {n} tokens and max_tokens is {params.max_tokens}. Shorten the "
                "prompt or lower max_tokens."
            )
        if self._feed.snapshot.num_waiting >= self.max_waiting:
            raise QueueFullError(f"the waiting queue is full ({self.max_waiting} requests)")

    async def generate(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        request_id: str,
        adapter: AdapterRequest | None = None,
        tenant: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        if self._engine is None:
            raise RuntimeError("the vLLM engine is not started")
        if params.grammar is not None:  # the server asks compile_grammar first; we have none
            raise ValueError("structured outputs are not available with --engine vllm")
        self._check_prompt(prompt_token_ids, params)
        lora = await self._lora_request(adapter) if adapter is not None else None
        if lora is not None:
            self._ids.hold(lora.lora_int_id)
        conv = OutputConverter(
            request_id, list(prompt_token_ids), params, time.monotonic(),
            adapter.name if adapter is not None else None,
        )  # fmt: skip
        stream = self._engine.generate(
            TokensPrompt(prompt_token_ids=list(prompt_token_ids)),
            vllm_sampling_params(params), request_id, lora_request=lora,
        )  # fmt: skip
        self._active += 1
        try:
            async for out in stream:
                yield conv.convert(out, time.monotonic())
        finally:
            self._active -= 1
            await stream.aclose()  # cancelled or abandoned: vLLM aborts the request
            if lora is not None and self._ids.release(lora.lora_int_id):
                self._remove_soon(lora.lora_int_id)

    async def abort(self, request_id: str) -> None:
        if self._engine is not None:
            await self._engine.abort(request_id)
