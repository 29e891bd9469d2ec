"""A scripted EngineClient for the server's unit tests (the integration tests use the real one).

Sample j of a request generates the characters of `script` starting at offset j, one byte
token per step, honouring max_tokens, stop strings and logprobs; failures are injected with
`fail_with`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from deltaserve.engine.adapters.base import AdapterRequest
from deltaserve.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput, TokenLogprob
from deltaserve.engine.protocol import EngineStats
from deltaserve.engine.sampling_params import SamplingParams
from tests.integration.server.tiny_model import build_tokenizer

_TOKENIZER = None


def shared_tokenizer():
    """One byte-level tokenizer for all unit tests (building it costs ~0.5 s)."""
    global _TOKENIZER
    if _TOKENIZER is None:
        _TOKENIZER = build_tokenizer()
    return _TOKENIZER


@dataclass
class Submitted:
    prompt_token_ids: list[int]
    params: SamplingParams
    request_id: str
    adapter: AdapterRequest | None


@dataclass
class FakeEngine:
    """Implements deltaserve.engine.protocol.EngineClient without a model."""

    script: str = "hello world, this is a fake engine speaking. "
    max_model_len: int = 64
    step_delay_s: float = 0.0
    fail_with: BaseException | None = None
    """Raised when a request is submitted (admission errors)."""
    fail_after_steps: int | None = None
    """Raise RuntimeError after this many steps (an engine failure mid-request)."""
    tokenizer: object = field(default_factory=shared_tokenizer)
    submitted: list[Submitted] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    started: bool = False
    stopped: bool = False
    running: set[str] = field(default_factory=set)
    dropped: list[str] = field(default_factory=list)

    async def start(self) -> None:
        self.started = True

    async def shutdown(self) -> None:
        self.stopped = True

    def stats(self) -> EngineStats:
        return EngineStats(
            num_running=len(self.running),
            max_loras=4,
            running_adapters=["a1", "a2"] if self.running else [],
            last_batch_size=3,
            last_batch_adapters=2,
            steps_total=7,
            adapters_resident={"device": 2, "host": 5},
        )

    def drop_adapter(self, key: str) -> None:
        self.dropped.append(key)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)
        self.running.discard(request_id)

    def _token(self, text: str) -> int:
        return self.tokenizer.encode(text, add_special_tokens=False)[0]

    async def generate(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        request_id: str,
        adapter: AdapterRequest | None = None,
        tenant: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        if self.fail_with is not None:
            raise self.fail_with
        self.submitted.append(Submitted(prompt_token_ids, params, request_id, adapter))
        self.running.add(request_id)
        samples = [
            CompletionOutput(j, "", [], [] if params.logprobs is not None else None)
            for j in range(params.n)
        ]
        metrics = RequestMetrics(arrival_time=time.monotonic())
        max_tokens = params.max_tokens or self.max_model_len - len(prompt_token_ids)
        try:
            for step in range(max_tokens):
                if self.fail_after_steps is not None and step >= self.fail_after_steps:
                    raise RuntimeError("engine exploded")
                if self.step_delay_s:
                    await asyncio.sleep(self.step_delay_s)
                else:
                    await asyncio.sleep(0)
                for s in samples:
                    if not s.finished:
                        self._advance(s, step, params, max_tokens)
                finished = all(s.finished for s in samples)
                yield RequestOutput(
                    request_id,
                    prompt_token_ids,
                    [_copy(s) for s in samples],
                    finished,
                    metrics,
                    adapter.name if adapter else None,
                )
                if finished:
                    return
        finally:
            self.running.discard(request_id)

    def _advance(
        self, s: CompletionOutput, step: int, params: SamplingParams, max_tokens: int
    ) -> None:
        char = self.script[(s.index + step) % len(self.script)]
        token = self._token(char)
        s.token_ids.append(token)
        s.text += char
        if s.logprobs is not None:
            top = [(token, -0.5), (self._token("z"), -1.5), (self._token("q"), -2.5)]
            s.logprobs.append(TokenLogprob(token, -0.5, top[: params.logprobs or 0]))
        for stop in params.stop:
            at = s.text.find(stop)
            if at != -1:
                s.text = (
                    s.text[: at + len(stop)] if params.include_stop_str_in_output else s.text[:at]
                )
                s.finish_reason, s.stop_reason = "stop", stop
                return
        if len(s.token_ids) >= max_tokens:
            s.finish_reason = "length"


def _copy(s: CompletionOutput) -> CompletionOutput:
    return CompletionOutput(
        s.index,
        s.text,
        list(s.token_ids),
        None if s.logprobs is None else list(s.logprobs),
        s.finish_reason,
        s.stop_reason,
    )
