"""Server-sent events: a streaming response that always cleans up its generation.

Starlette cancels a streaming body when the client disconnects; this response additionally
closes the body iterator and calls `on_close` whatever happened (finished, client gone, send
failed, server cancelled the task at the drain deadline), shielded from that cancellation, so
the engine's requests are always aborted and the in-flight count always drops.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Send

from deltaserve.engine.outputs import RequestOutput
from deltaserve.entrypoints.errors import sse_error

logger = logging.getLogger(__name__)

DONE = "data: [DONE]\n\n"


def sse_data(payload: dict[str, Any]) -> str:
    """One SSE event carrying a JSON payload."""
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def event_stream(
    prelude: list[str],
    first: tuple[int, RequestOutput],
    rest: AsyncIterator[tuple[int, RequestOutput]],
    events: Callable[[int, RequestOutput], list[str]],
    final: Callable[[], str | None],
) -> AsyncIterator[str]:
    """prelude, events for every output (`first`, then `rest`), `final` if any, then [DONE].

    An error after the headers went out is reported in-band as an error event, as vLLM does.
    """
    try:
        for event in prelude:
            yield event
        for event in events(*first):
            yield event
        async for i, out in rest:
            for event in events(i, out):
                yield event
        last = final()
        if last is not None:
            yield last
    except Exception as exc:
        yield sse_error(exc)
    yield DONE


class EventStreamResponse(StreamingResponse):
    """text/event-stream response over an async iterator of already-framed events."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], Awaitable[None]]):
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._content = content
        self._on_close = on_close

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self._content.aclose()  # type: ignore[attr-defined]
                finally:
                    await self._on_close()

    async def __call__(self, scope: Any, receive: Any, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # stream_response may never have run (e.g. the task was cancelled before it began).
            with anyio.CancelScope(shield=True):
                await self._on_close()
