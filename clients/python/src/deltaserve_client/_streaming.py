"""Server-sent events → typed chunks, for `stream=True`.

The server sends `data: {json}` events and ends with `data: [DONE]`. An error after the
stream started (the status line was already 200) arrives as `data: {"error": {...}}` and is
raised here as a DeltaserveError without a status code.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from typing import Any, Generic, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from deltaserve_client.errors import DeltaserveError, error_from_body, transport_error

T = TypeVar("T", bound=BaseModel)

DONE = "[DONE]"


class SSEDecoder:
    """Collects the `data:` lines of one event; an empty line ends the event."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> str | None:
        """Feed one line (without its newline); returns an event's data when one is complete."""
        if not line:
            if not self._data:
                return None
            data, self._data = "\n".join(self._data), []
            return data
        field, _, value = line.partition(":")
        if field == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None  # comments (": ...") and other fields (event, id, retry) carry nothing here

    def flush(self) -> str | None:
        """The last event's data when the stream ended without a final empty line."""
        return self.feed("")


class ChunkParser(Generic[T]):
    """SSE lines → chunks of type `cast_to`; `done` turns true at `[DONE]`. Raises the error an
    error event carries."""

    def __init__(self, cast_to: type[T]):
        self._decoder = SSEDecoder()
        self._cast_to = cast_to
        self.done = False

    def feed(self, line: str) -> list[T]:
        """The chunks completed by `line` (none after `[DONE]`)."""
        data = self._decoder.feed(line)
        return self._parse(data)

    def end(self) -> list[T]:
        """The chunk of an unterminated last event, if any."""
        return self._parse(self._decoder.flush())

    def _parse(self, data: str | None) -> list[T]:
        if data is None or self.done:
            return []
        if data.strip() == DONE:
            self.done = True
            return []
        try:
            payload: Any = json.loads(data)
        except ValueError as exc:
            raise DeltaserveError(f"Unexpected event from the server: {data[:200]!r}") from exc
        if isinstance(payload, dict) and "error" in payload:
            raise error_from_body(payload, None, "The stream ended with an error.")
        try:
            return [self._cast_to.model_validate(payload)]
        except ValidationError as exc:
            raise DeltaserveError(f"Unexpected event from the server: {exc}", body=payload) from exc


class Stream(Generic[T]):
    """An iterator of chunks over one streaming response; closes it when exhausted.

    Use as `for chunk in stream:`; call `close()` (or use `with stream:`) to stop early; the
    server then aborts the generation.
    """

    def __init__(self, response: httpx.Response, cast_to: type[T]):
        self.response = response
        self._cast_to = cast_to
        self._iterator = self._iterate()

    def _iterate(self) -> Generator[T, None, None]:
        parser = ChunkParser(self._cast_to)
        try:
            for line in self.response.iter_lines():
                yield from parser.feed(line)
                if parser.done:
                    return
            yield from parser.end()
        except httpx.TransportError as exc:
            raise transport_error(exc) from exc
        finally:
            self.response.close()

    def __iter__(self) -> Iterator[T]:
        return self._iterator

    def __next__(self) -> T:
        return next(self._iterator)

    def close(self) -> None:
        """Stop reading and release the connection."""
        self._iterator.close()
        self.response.close()

    def __enter__(self) -> Stream[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncStream(Generic[T]):
    """The async iterator of chunks of one streaming response (`async for chunk in stream:`)."""

    def __init__(self, response: httpx.Response, cast_to: type[T]):
        self.response = response
        self._cast_to = cast_to
        self._iterator = self._iterate()

    async def _iterate(self) -> AsyncGenerator[T, None]:
        parser = ChunkParser(self._cast_to)
        try:
            async for line in self.response.aiter_lines():
                for chunk in parser.feed(line):
                    yield chunk
                if parser.done:
                    return
            for chunk in parser.end():
                yield chunk
        except httpx.TransportError as exc:
            raise transport_error(exc) from exc
        finally:
            await self.response.aclose()

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iterator

    async def __anext__(self) -> T:
        return await self._iterator.__anext__()

    async def close(self) -> None:
        """Stop reading and release the connection."""
        await self._iterator.aclose()
        await self.response.aclose()

    async def __aenter__(self) -> AsyncStream[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
