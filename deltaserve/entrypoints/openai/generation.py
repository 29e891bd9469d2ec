"""Running one HTTP request's prompts through the engine, shared by completions and chat.

`GenerationRun` submits one engine request per prompt, merges their output streams, aborts
whatever did not finish when it is closed (client gone, error, drain timeout) and records the
request metrics; `respond` serves it as JSON or as an event stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from deltaserve.engine.adapters.base import AdapterRequest
from deltaserve.engine.outputs import RequestOutput
from deltaserve.engine.sampling_params import SamplingParams
from deltaserve.entrypoints.adapters import AdapterLease
from deltaserve.entrypoints.errors import (
    ClientClosedRequestError,
    ServiceUnavailableError,
    translate_engine_error,
)
from deltaserve.entrypoints.openai.prompts import PromptInput
from deltaserve.entrypoints.openai.sse import EventStreamResponse
from deltaserve.entrypoints.state import ServerState
from deltaserve.tenancy.auth import DEFAULT_TENANT
from deltaserve.tenancy.quotas import Reservation

logger = logging.getLogger(__name__)

T = TypeVar("T")
_background: set[asyncio.Future[Any]] = set()
"""Abort tasks kept alive while they run (they must finish even if their caller is cancelled)."""



def _keep(future: asyncio.Future[Any]) -> asyncio.Future[Any]:
    """Hold a reference to a fire-and-forget task until it is done."""
    _background.add(future)
    future.add_done_callback(_background.discard)
    return future


async def merge_async_iterators(
    *iterators: AsyncIterator[T],
) -> AsyncIterator[tuple[int, T]]:
    """Items of several async iterators as they come, tagged with the iterator's index.

    On exit (exhausted, error, cancellation or aclose) the pending reads are cancelled and the
    iterators closed, which aborts their engine requests.
    """
    pending: dict[asyncio.Future[T], int] = {}
    try:
        if len(iterators) == 1:  # the common case needs no tasks
            async for item in iterators[0]:
                yield 0, item
            return
        pending = {asyncio.ensure_future(anext(it)): i for i, it in enumerate(iterators)}
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                i = pending.pop(task)
                try:
                    item = task.result()
                except StopAsyncIteration:
                    continue
                pending[asyncio.ensure_future(anext(iterators[i]))] = i
                yield i, item
    finally:
        # Cancelling a pending read cancels the engine iterator inside it (which aborts);
        # the awaits below may themselves be cancelled, which is fine: the work is scheduled.
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        for it in iterators:
            with contextlib.suppress(Exception):
                await it.aclose()  # type: ignore[attr-defined]


class GenerationRun:
    """The engine requests behind one HTTP request (one per prompt), with cleanup and metrics."""

    def __init__(
        self,
        state: ServerState,
        request_id: str,
        prompts: list[PromptInput],
        params: list[SamplingParams],
        adapter: AdapterRequest | None,
        lease: AdapterLease | None = None,
        tenant: str = DEFAULT_TENANT,
        reservation: Reservation | None = None,
    ):
        """`lease` (if any) pins `adapter`'s version; it is released when the run closes, and
        the quota `reservation` (if any) is reconciled to the tokens really used."""
        assert state.engine is not None
        self.state = state
        self.engine = state.engine
        self.request_id = request_id
        self.prompts = prompts
        self.params = params
        self.adapter = lease.adapter if lease is not None else adapter
        self.lease = lease
        self.engine_ids = [f"{request_id}-{i}" for i in range(len(prompts))]
        self.last: list[RequestOutput | None] = [None] * len(prompts)
        self._arrival = time.monotonic()
        self._first_token: list[float | None] = [None] * len(prompts)
        self._stream: AsyncIterator[tuple[int, RequestOutput]] | None = None
        self._closed = False
        self._shutting_down = False
        self.tenant = tenant
        self.reservation = reservation
        self._failed = False
        state.runs.add(self)

    def stream(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """Cumulative outputs of all prompts as (prompt index, output); call once."""
        assert self._stream is None, "stream() may be called once"
        self._stream = self._run()
        return self._stream

    async def _run(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        iters = [
            self.engine.generate(p.token_ids, sp, rid, self.adapter, tenant=self.tenant)
            for p, sp, rid in zip(self.prompts, self.params, self.engine_ids, strict=True)
        ]
        try:
            async for i, out in merge_async_iterators(*iters):
                self._observe(i, out)
                if self._shutting_down and any(o.finish_reason == "abort" for o in out.outputs):
                    raise ServiceUnavailableError(
                        "The server shut down before this request finished.", code="shutdown"
                    )
                yield i, out
        except Exception as exc:
            self._failed = True
            mapped = translate_engine_error(exc)
            if mapped is None:
                raise
            raise mapped from exc
        finally:
            await self._abort_unfinished()

    def _observe(self, i: int, out: RequestOutput) -> None:
        now = time.monotonic()
        self.last[i] = out
        if self._first_token[i] is None and any(o.token_ids for o in out.outputs):
            # The engine's own stamp (same monotonic clock): a final-only output arrives long
            # after its first token.
            self._first_token[i] = out.metrics.first_token_time or now
        if out.finished:
            self._record(i, out, now)

    def _record(self, i: int, out: RequestOutput, now: float) -> None:
        first = self._first_token[i]
        self.state.metrics.record_request(
            prompt_tokens=len(out.prompt_token_ids),
            generation_tokens=sum(len(o.token_ids) for o in out.outputs),
            finish_reasons=[o.finish_reason or "abort" for o in out.outputs],
            ttft_s=None if first is None else first - self._arrival,
            e2e_s=now - self._arrival,
        )
        m = out.metrics
        wait = None if m.first_scheduled_time is None else m.first_scheduled_time - m.arrival_time
        self.state.metrics.tenants.record_tokens(
            self.tenant, len(out.prompt_token_ids), sum(len(o.token_ids) for o in out.outputs), wait
        )
        if first is not None:
            for o in out.outputs:
                if len(o.token_ids) > 1:
                    self.state.metrics.record_inter_token((now - first) / (len(o.token_ids) - 1))

    async def _abort_unfinished(self) -> None:
        """Abort (in the engine) every prompt that did not finish; the abort outlives cancellation."""
        todo = [i for i, out in enumerate(self.last) if out is None or not out.finished]
        if not todo:
            return
        logger.info("aborting %s (%d unfinished)", self.request_id, len(todo))
        now = time.monotonic()
        for i in todo:
            out = self.last[i]
            if out is not None:
                aborted = RequestOutput(
                    out.request_id, out.prompt_token_ids, out.outputs, True, out.metrics
                )
                self._record(i, aborted, now)
        aborts = asyncio.gather(
            *(self.engine.abort(self.engine_ids[i]) for i in todo), return_exceptions=True
        )
        await asyncio.shield(_keep(aborts))

    def shut_down(self) -> None:
        """Abort the unfinished engine requests now (drain deadline); the client gets a 503."""
        self._shutting_down = True
        todo = [
            rid
            for rid, out in zip(self.engine_ids, self.last, strict=True)
            if not (out and out.finished)
        ]
        for rid in todo:
            _keep(asyncio.ensure_future(self.engine.abort(rid)))

    async def aclose(self) -> None:
        """Stop everything still running (idempotent); the request stops counting as in flight."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._stream is not None:
                await self._stream.aclose()  # type: ignore[attr-defined]
        finally:
            self.state.runs.discard(self)
            if self.lease is not None:
                self.lease.release()
            self.state.metrics.tenants.record_outcome(self.tenant, self._outcome())
            if self.reservation is not None:
                await self.state.quotas.finish(self.reservation, self.tokens_used())

    def _outcome(self) -> str:
        if self._failed:
            return "error"
        done = all(
            out is not None and out.finished and all(o.finish_reason != "abort" for o in out.outputs)
            for out in self.last
        )
        return "success" if done else "abort"

    def tokens_used(self) -> int:
        """Prompt + generated tokens of every prompt that reached the engine."""
        return sum(
            len(out.prompt_token_ids) + sum(len(o.token_ids) for o in out.outputs)
            for out in self.last
            if out is not None
        )

    async def first(self) -> tuple[int, RequestOutput]:
        """Wait for the first output (admission errors surface here, before any response)."""
        assert self._stream is not None
        try:
            return await anext(self._stream)
        except StopAsyncIteration:
            raise RuntimeError("the engine ended a request without output") from None


async def consume(stream: AsyncIterator[Any]) -> None:
    """Consume a stream to its end (its side effects are what counts)."""
    async for _ in stream:
        pass


async def until_done_or_disconnected(work: Awaitable[T], request: Request) -> T:
    """Await `work`, cancelling it (which aborts its engine requests) if the client goes away.

    The disconnect is an event, not a poll: once the body is read, the server's next ASGI
    message for this request is `http.disconnect` (vLLM's listen_for_disconnect). Polling
    `is_disconnected()` woke the event loop 4 times a second per waiting request, which on a
    small machine takes the cores from the step loop.
    """
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        logger.info("client disconnected before the response was ready")
        raise ClientClosedRequestError("The client closed the request.")
    finally:
        for pending in (task, gone):
            if not pending.done():
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending


async def _disconnected(request: Request) -> None:
    """Return when the client has gone (the body was already read by the endpoint)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def respond(
    run: GenerationRun,
    raw: Request,
    stream: bool,
    events: Callable[
        [tuple[int, RequestOutput], AsyncIterator[tuple[int, RequestOutput]]], AsyncIterator[str]
    ],
    body: Callable[[], BaseModel],
) -> Response:
    """Serve `run` as an event stream or, when it has finished, as one JSON body.

    A stream's headers go out with the first output, so admission errors (429, 400) are still
    plain HTTP errors. Whatever happens, the run is closed: by the stream when it ends, else here.
    """
    handed_off = False
    try:
        outputs = run.stream()
        if stream:
            first = await until_done_or_disconnected(run.first(), raw)
            response = EventStreamResponse(events(first, outputs), on_close=run.aclose)
            handed_off = True
            return response
        await until_done_or_disconnected(consume(outputs), raw)
        return JSONResponse(body().model_dump(mode="json"))
    finally:
        if not handed_off:
            await run.aclose()
