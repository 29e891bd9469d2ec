"""The asynchronous client: the surface of Client, awaited."""

from __future__ import annotations

import asyncio
import builtins
import itertools
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Unpack, overload

import httpx

from deltaserve_client import _endpoints as ep
from deltaserve_client._base import BaseClient, RequestSpec, import_openai, resource
from deltaserve_client._streaming import AsyncStream
from deltaserve_client.params import ChatParams, CompletionParams, RequestOptions
from deltaserve_client.types import (
    Adapter,
    AdapterDeleted,
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    CompletionChunk,
    Model,
)

if TYPE_CHECKING:
    import openai as _openai


class AsyncModels:
    """`async_client.models`: as `Client.models`."""

    def __init__(self, client: AsyncClient):
        self._client = client

    async def list(self, **options: Unpack[RequestOptions]) -> builtins.list[Model]:
        """As `Client.models.list`."""
        return await self._client._execute(ep.list_models(options))


class AsyncCompletions:
    """`async_client.completions`: as `Client.completions`."""

    def __init__(self, client: AsyncClient):
        self._client = client

    @overload
    async def create(
        self, model: str, prompt: ep.Prompt, *, stream: Literal[False] = False,
        **params: Unpack[CompletionParams],
    ) -> Completion: ...  # fmt: skip

    @overload
    async def create(
        self, model: str, prompt: ep.Prompt, *, stream: Literal[True],
        **params: Unpack[CompletionParams],
    ) -> AsyncStream[CompletionChunk]: ...  # fmt: skip

    @overload
    async def create(
        self, model: str, prompt: ep.Prompt, *, stream: bool, **params: Unpack[CompletionParams]
    ) -> Completion | AsyncStream[CompletionChunk]: ...

    async def create(
        self, model: str, prompt: ep.Prompt, *, stream: bool = False,
        **params: Unpack[CompletionParams],
    ) -> Completion | AsyncStream[CompletionChunk]:  # fmt: skip
        """As `Client.completions.create`; `stream=True` gives an async iterator."""
        return await self._client._execute(ep.completion(model, prompt, stream, params))


class AsyncChatCompletions:
    """`async_client.chat.completions`: as `Client.chat.completions`."""

    def __init__(self, client: AsyncClient):
        self._client = client

    @overload
    async def create(
        self, model: str, messages: ep.Messages, *, stream: Literal[False] = False,
        **params: Unpack[ChatParams],
    ) -> ChatCompletion: ...  # fmt: skip

    @overload
    async def create(
        self, model: str, messages: ep.Messages, *, stream: Literal[True],
        **params: Unpack[ChatParams],
    ) -> AsyncStream[ChatCompletionChunk]: ...  # fmt: skip

    @overload
    async def create(
        self, model: str, messages: ep.Messages, *, stream: bool, **params: Unpack[ChatParams]
    ) -> ChatCompletion | AsyncStream[ChatCompletionChunk]: ...

    async def create(
        self, model: str, messages: ep.Messages, *, stream: bool = False,
        **params: Unpack[ChatParams],
    ) -> ChatCompletion | AsyncStream[ChatCompletionChunk]:  # fmt: skip
        """As `Client.chat.completions.create`; `stream=True` gives an async iterator."""
        return await self._client._execute(ep.chat_completion(model, messages, stream, params))


class AsyncChat:
    """`async_client.chat`: as `Client.chat`."""

    def __init__(self, client: AsyncClient):
        self.completions = AsyncChatCompletions(client)


class AsyncAdapters:
    """`async_client.adapters`: as `Client.adapters`."""

    def __init__(self, client: AsyncClient):
        self._client = client

    async def upload(
        self, name: str, path: str | Path, shared: bool | None = None, replace: bool = False,
        **options: Unpack[RequestOptions],
    ) -> Adapter:  # fmt: skip
        """As `Client.adapters.upload`."""
        spec = ep.upload_adapter(name, path, shared, replace, options)
        return await self._client._execute(spec)

    async def register(
        self, name: str, source: str, shared: bool | None = None, replace: bool = False,
        **options: Unpack[RequestOptions],
    ) -> Adapter:  # fmt: skip
        """As `Client.adapters.register`."""
        spec = ep.register_adapter(name, source, shared, replace, options)
        return await self._client._execute(spec)

    async def list(self, **options: Unpack[RequestOptions]) -> builtins.list[Adapter]:
        """As `Client.adapters.list`."""
        return await self._client._execute(ep.list_adapters(options))

    async def get(self, name: str, **options: Unpack[RequestOptions]) -> Adapter:
        """As `Client.adapters.get`."""
        return await self._client._execute(ep.get_adapter(name, options))

    async def delete(self, name: str, **options: Unpack[RequestOptions]) -> AdapterDeleted:
        """As `Client.adapters.delete`."""
        return await self._client._execute(ep.delete_adapter(name, options))


class AsyncClient(BaseClient[httpx.AsyncClient]):
    """An asyncio deltaserve client: the surface of `Client`, every call awaited, streams
    iterated with `async for`. The arguments are Client's (`http_client`: an httpx.AsyncClient).
    Use it with `async with`, or `await close()`, to release its connections.
    """

    _http_class = httpx.AsyncClient
    models = resource(AsyncModels)
    completions = resource(AsyncCompletions)
    chat = resource(AsyncChat)
    adapters = resource(AsyncAdapters)

    async def _send(self, spec: RequestSpec) -> httpx.Response:
        with ExitStack() as files:
            stream = spec.stream_to is not None
            return await self._http.send(self._build(spec, files), stream=stream)

    async def _execute(self, spec: RequestSpec) -> Any:
        """Send `spec`, retrying as the policy allows; the parsed result, or a typed error."""
        policy = self._policy(spec)
        for attempt in itertools.count():
            try:
                response = await self._send(spec)
            except httpx.TransportError as exc:
                await asyncio.sleep(self._wait_or_raise(policy, attempt, exc))
                continue
            if not response.is_success:
                await response.aread()
                await response.aclose()
                await asyncio.sleep(self._wait_or_raise(policy, attempt, response))
                continue
            return self._result(spec, response, AsyncStream)

    def openai(self, **kwargs: Any) -> _openai.AsyncOpenAI:
        """An `openai.AsyncOpenAI` for the same server, key, timeout and retries (needs the
        `openai` package); `kwargs` override."""
        return import_openai().AsyncOpenAI(**{**self._openai_settings(), **kwargs})

    async def close(self) -> None:
        """Close the connections (not those of an `http_client` passed in)."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
