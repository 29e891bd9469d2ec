"""ASGI middleware: request body size limit (413 before the app parses anything), HTTP metrics."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deltaserve.entrypoints.errors import PayloadTooLargeError

logger = logging.getLogger(__name__)


class BodySizeLimitMiddleware:
    """Reads the whole body up to `max_bytes`, then replays it to the app; larger bodies get 413.

    Both a declared Content-Length and the bytes actually received count, so chunked uploads
    cannot slip past the limit. Paths in `streamed` (adapter uploads) have their own, larger
    limit and are not buffered here: their body streams to the app (which spools multipart
    files to disk) through a counting `receive` that raises PayloadTooLargeError past it.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, streamed: dict[str, int] | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.streamed = streamed or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        limit = self.streamed.get(scope.get("path", ""))
        declared = _content_length(scope)
        if declared is not None and declared > (limit or self.max_bytes):
            await self._reject(send, declared, limit or self.max_bytes)
            return
        if limit is not None:
            await self.app(scope, _counting(receive, limit), send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client is gone; nothing to answer
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._reject(send, size, self.max_bytes)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send: Send, size: int, limit: int) -> None:
        logger.info("rejecting a request body of at least %d bytes (limit %d)", size, limit)
        error = _too_large(limit)
        payload = json.dumps(error.to_dict()).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"The request body is larger than this server's limit of {limit} bytes."
    )


def _counting(receive: Receive, limit: int) -> Receive:
    """`receive` that raises PayloadTooLargeError (→ 413) once more than `limit` bytes came."""
    size = 0

    async def wrapped() -> Message:
        nonlocal size
        message = await receive()
        size += len(message.get("body", b""))
        if size > limit:
            raise _too_large(limit)
        return message

    return wrapped


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class HttpMetricsMiddleware:
    """Counts every HTTP response by tenant, route template and status code.

    The route template (`/v1/adapters/{name}`, never the raw path) comes from the route FastAPI
    matched (it records itself in the scope); requests that matched none count as "unmatched".
    The tenant is what authentication put in the request state ("none" before or without it).
    An exception escaping the app counts as a 500 and propagates.
    """

    def __init__(self, app: ASGIApp, record: Callable[[str, str, int], None]):
        self.app = app
        self.record = record

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            tenant = (scope.get("state") or {}).get("tenant") or "none"
            self.record(str(tenant), route, status)
