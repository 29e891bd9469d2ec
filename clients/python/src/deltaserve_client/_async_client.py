"""The asynchronous client: the same surface as Client, with `await`."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Unpack, overload

import httpx

from deltaserve_client import _endpoints as ep
from deltaserve_client._base import (
    DEFAULT_TIMEOUT,
    BaseClient,
    RequestSpec,
    import_openai,
    transport_error,
)
from deltaserve_client._streaming import AsyncStream
from deltaserve_client.errors import error_from_response
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


class AsyncClient(BaseClient):
    """An asyncio deltaserve client: `models`, `completions`, `chat.completions`, `adapters`;
    every call is awaited. Arguments as for `Client`.

    Args:
        base_url: the server's root, e.g. `http://127.0.0.1:8000` (`/v1` is added).
        api_key: the tenant's key, sent as `Authorization: Bearer <key>` (None: open server).
        timeout: seconds (or an httpx.Timeout) per request; per call with `timeout=`.
        max_retries: retries on 429, 503 and connection failures; per call with `max_retries=`.
        initial_retry_delay: first backoff in seconds (doubling, with jitter; a server's
            `Retry-After` wins).
        max_retry_delay: longest backoff in seconds.
        default_headers: headers sent with every request.
        http_client: an httpx.AsyncClient to use (its transport, proxies, event hooks); it is not
            closed by `close()`.

    Use it as an async context manager, or `await close()`, to release its connections.
    """

    def __init__(
        self,
        base_url: str | httpx.URL,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        max_retries: int = 2,
        initial_retry_delay: float = 0.5,
        max_retry_delay: float = 8.0,
        default_headers: Mapping[str, str] | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(
            base_url, api_key, timeout, max_retries, initial_retry_delay, max_retry_delay,
            default_headers,
        )  # fmt: skip
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.AsyncClient(timeout=timeout)
        self.models = AsyncModels(self)
        self.completions = AsyncCompletions(self)
        self.chat = AsyncChat(self)
        self.adapters = AsyncAdapters(self)

    async def _execute(self, spec: RequestSpec) -> Any:
        """Send `spec`, retrying as the policy allows; the parsed result, or a typed error."""
        policy = self._policy(spec)
        attempt = 0
        while True:
            with ExitStack() as files:
                request = self._http.build_request(**self._request_args(spec, files))
                try:
                    response = await self._http.send(request, stream=spec.stream_to is not None)
                except httpx.TransportError as exc:
                    wait = self._wait_after_error(policy, attempt, exc)
                    if wait is None:
                        raise transport_error(exc) from exc
                    await asyncio.sleep(wait)
                    attempt += 1
                    continue
            if response.is_success:
                if spec.stream_to is not None:
                    return AsyncStream(response, spec.stream_to)
                return self._parse(spec, response)
            await response.aread()
            await response.aclose()
            wait = self._wait_after_status(policy, attempt, response)
            if wait is None:
                raise error_from_response(response)
            await asyncio.sleep(wait)
            attempt += 1

    def openai(self, **kwargs: Any) -> _openai.AsyncOpenAI:
        """An `openai.AsyncOpenAI` for the same server, key, timeout and retries (needs the
        `openai` package: `pip install 'deltaserve-client[openai]'`); `kwargs` override."""
        return import_openai().AsyncOpenAI(**{**self._openai_settings(), **kwargs})

    async def close(self) -> None:
        """Close the connections (not those of an `http_client` passed in)."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncModels:
    """`async_client.models`: what the caller may use as `model`."""

    def __init__(self, client: AsyncClient):
        self._client = client

    async def list(self, **options: Unpack[RequestOptions]) -> builtins.list[Model]:
        """As `Client.models.list`."""
        return await self._client._execute(ep.list_models(options))


class AsyncCompletions:
    """`async_client.completions`: OpenAI's (legacy) text completions."""

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

    async def create(
        self, model: str, prompt: ep.Prompt, *, stream: bool = False,
        **params: Unpack[CompletionParams],
    ) -> Completion | AsyncStream[CompletionChunk]:  # fmt: skip
        """As `Client.completions.create`; `stream=True` gives an async iterator."""
        return await self._client._execute(ep.completion(model, prompt, stream, params))


class AsyncChatCompletions:
    """`async_client.chat.completions`: OpenAI's chat completions."""

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

    async def create(
        self, model: str, messages: ep.Messages, *, stream: bool = False,
        **params: Unpack[ChatParams],
    ) -> ChatCompletion | AsyncStream[ChatCompletionChunk]:  # fmt: skip
        """As `Client.chat.completions.create`; `stream=True` gives an async iterator."""
        return await self._client._execute(ep.chat_completion(model, messages, stream, params))


class AsyncChat:
    """`async_client.chat`: holds `completions`."""

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
