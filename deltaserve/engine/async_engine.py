"""The async engine: the step loop runs on its own thread; each request streams its outputs.

The event loop never waits for a step: new requests and aborts are handed to the step thread
through queues and take effect between steps; outputs come back with call_soon_threadsafe.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from deltaserve.engine.adapters.base import AdapterRequest
from deltaserve.engine.config import EngineConfig
from deltaserve.engine.fairness import VTCPolicy
from deltaserve.engine.grammar import Grammar, GrammarSpec
from deltaserve.engine.llm_engine import LLMEngine
from deltaserve.engine.outputs import RequestOutput
from deltaserve.engine.protocol import EngineStats, QueueFullError
from deltaserve.engine.sampling_params import SamplingParams
from deltaserve.engine.threads import single_threaded, use_intra_op_threads

logger = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    """The step loop failed; the request could not complete."""


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue


class AsyncLLMEngine:
    """Implements deltaserve.engine.protocol.EngineClient over the native LLMEngine."""

    def __init__(self, config: EngineConfig, tokenizer=None, engine: LLMEngine | None = None):
        self._started = threading.Event()
        self._thread: threading.Thread | None = None
        if engine is None:  # built on the step thread itself (see _build_and_run)
            engine = self._spawn(config, tokenizer)
        self.engine = engine
        self.config = config
        self.tokenizer = self.engine.tokenizer
        self.max_model_len = self.engine.max_model_len
        self._streams: dict[str, _Stream] = {}
        self._adds: deque[tuple] = deque()
        self._aborts: deque[str] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        # Loader threads run no parallel torch work (engine/threads.py).
        self._loaders = ThreadPoolExecutor(max_workers=2, thread_name_prefix="adapter-load",
                                           initializer=single_threaded)
        self._stats = self.engine.stats()

    # ---- lifecycle ----------------------------------------------------------------------
    def _spawn(self, config: EngineConfig, tokenizer) -> LLMEngine:
        """Start the step thread, which loads the model, and wait until it has."""
        built: list = []
        ready = threading.Event()
        self._thread = threading.Thread(target=self._build_and_run, name="engine-step",
                                        args=(config, tokenizer, built, ready), daemon=True)
        self._thread.start()
        ready.wait()
        if isinstance(built[0], BaseException):
            self._thread = None
            raise built[0]
        return built[0]

    def _build_and_run(self, config, tokenizer, built: list, ready: threading.Event) -> None:
        """The model is loaded and stepped by the same thread: when another thread had run
        torch's OpenMP regions first, libgomp saw more threads than cores and throttled its
        spin-waits, and every step ran ~18% slower on 2 cores (measured, W workload)."""
        use_intra_op_threads()
        try:
            built.append(LLMEngine(config, tokenizer))
        except BaseException as exc:  # handed to the constructor's caller
            built.append(exc)
            ready.set()
            return
        ready.set()
        self._started.wait()
        if not self._stop.is_set():
            self._run()

    async def start(self) -> None:
        if self._thread is None:  # an engine built elsewhere (tests): step it on a new thread
            self._thread = threading.Thread(target=self._run_pinned, name="engine-step",
                                            daemon=True)
            self._thread.start()
        self._started.set()

    async def shutdown(self) -> None:
        self._stop.set()
        self._started.set()
        self._wake.set()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 30)
            self._thread = None
        self._loaders.shutdown(wait=False)

    def drop_adapter(self, key: str) -> None:
        self.engine.pool.drop(key)

    def set_adapter_load_observer(self, observer) -> None:
        self.engine.pool.on_load = observer

    def set_tenant_weights(self, weights: dict[str, float]) -> None:
        """Fairness weights per tenant (vtc queue policy; fcfs ignores them), from the next step.

        One attribute swap in the policy: safe while the step thread reads the weights.
        """
        policy = self.engine.scheduler.policy
        if isinstance(policy, VTCPolicy):
            policy.set_weights(weights)

    def load_grammar_compiler(self) -> None:
        """One-time set-up of structured outputs (blocking: call it from a worker thread)."""
        self.engine.grammars.load()

    def compile_grammar(self, spec: GrammarSpec) -> Grammar:
        """Compile (or fetch cached) a structured-output grammar; GrammarError if invalid.

        Blocking (milliseconds to seconds): call it from a worker thread.
        """
        return self.engine.grammars.compile(spec)

    def stats(self) -> EngineStats:
        """Snapshot taken by the step thread after its last step (never blocks)."""
        return self._stats

    # ---- requests -----------------------------------------------------------------------
    async def generate(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        request_id: str,
        adapter: AdapterRequest | None = None,
        tenant: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        max_tokens = self.engine.check_prompt(prompt_token_ids, params)
        if self._stats.num_waiting + len(self._adds) >= self.config.max_waiting:
            raise QueueFullError(f"the waiting queue is full ({self.config.max_waiting} requests)")
        if request_id in self._streams:
            raise ValueError(f"duplicate request id {request_id!r}")
        loop = asyncio.get_running_loop()
        if adapter is not None:  # disk/Redis I/O stays off both the loop and the step thread
            await loop.run_in_executor(self._loaders, self.engine.pool.acquire, adapter)
        stream = _Stream(loop, asyncio.Queue())
        self._streams[request_id] = stream
        self._adds.append((request_id, prompt_token_ids, params, max_tokens, adapter, tenant))
        self._wake.set()
        finished = False
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            if not finished:  # cancelled or the consumer went away: free everything now
                self._aborts.append(request_id)
                self._wake.set()
            self._streams.pop(request_id, None)

    async def abort(self, request_id: str) -> None:
        self._aborts.append(request_id)
        self._wake.set()

    # ---- step thread --------------------------------------------------------------------
    def _run_pinned(self) -> None:
        use_intra_op_threads()
        self._run()

    def _run(self) -> None:
        eng = self.engine
        while not self._stop.is_set():
            self._drain_inbox()
            if not eng.has_unfinished():
                self._stats = eng.stats()
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            try:
                outputs = eng.step()
            except Exception as e:  # a bug must not take the server down: fail what ran
                logger.exception("engine step failed; aborting running requests")
                self._fail_all(e)
                continue
            self._deliver_all(outputs)
            self._stats = eng.stats()

    def _drain_inbox(self) -> None:
        eng = self.engine
        while self._adds:
            rid, prompt, params, max_tokens, adapter, tenant = self._adds.popleft()
            if rid not in self._streams:  # cancelled before it was queued
                if adapter is not None:
                    eng.pool.release(adapter.key)
                continue
            eng.enqueue(rid, prompt, params, max_tokens, adapter, tenant)
        while self._aborts:
            out = eng.abort(self._aborts.popleft())
            if out is not None:
                self._deliver(out.request_id, out)

    def _deliver_all(self, outputs: list[RequestOutput]) -> None:
        """One wake-up of each event loop per step, not one per request: every
        call_soon_threadsafe writes to the loop's self-pipe and costs the loop a wake-up."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, RequestOutput]]] = {}
        for out in outputs:
            stream = self._streams.get(out.request_id)
            if stream is not None:
                by_loop.setdefault(stream.loop, []).append((stream.queue, out))
        for loop, items in by_loop.items():
            loop.call_soon_threadsafe(_put_all, items)

    def _deliver(self, request_id: str, item) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, item)

    def _fail_all(self, error: Exception) -> None:
        for rid in list(self.engine.requests):
            self.engine.abort(rid)
            self._deliver(rid, EngineDeadError(f"engine step failed: {error}"))


def _put_all(items: list[tuple[asyncio.Queue, RequestOutput]]) -> None:
    for queue, out in items:
        queue.put_nowait(out)
