"""The synchronous client."""

from __future__ import annotations

import builtins
import itertools
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Unpack, overload

import httpx

from deltaserve_client import _endpoints as ep
from deltaserve_client._base import BaseClient, RequestSpec, import_openai, resource
from deltaserve_client._streaming import Stream
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


class Models:
    """`client.models`: what the caller may use as `model`."""

    def __init__(self, client: Client):
        self._client = client

    def list(self, **options: Unpack[RequestOptions]) -> builtins.list[Model]:
        """The base model and every adapter visible to the caller (adapters have `parent` =
        the base model's id and a `kind`)."""
        return self._client._execute(ep.list_models(options))


class Completions:
    """`client.completions`: OpenAI's (legacy) text completions."""

    def __init__(self, client: Client):
        self._client = client

    @overload
    def create(
        self, model: str, prompt: ep.Prompt, *, stream: Literal[False] = False,
        **params: Unpack[CompletionParams],
    ) -> Completion: ...  # fmt: skip

    @overload
    def create(
        self, model: str, prompt: ep.Prompt, *, stream: Literal[True],
        **params: Unpack[CompletionParams],
    ) -> Stream[CompletionChunk]: ...  # fmt: skip

    @overload
    def create(
        self, model: str, prompt: ep.Prompt, *, stream: bool, **params: Unpack[CompletionParams]
    ) -> Completion | Stream[CompletionChunk]: ...

    def create(
        self, model: str, prompt: ep.Prompt, *, stream: bool = False,
        **params: Unpack[CompletionParams],
    ) -> Completion | Stream[CompletionChunk]:  # fmt: skip
        """Complete `prompt` with `model` (the base model's id or an adapter's name).

        `params` are OpenAI's (max_tokens, temperature, n, stop, seed, logprobs, ...), vLLM's
        (top_k, min_tokens, ignore_eos, structured_outputs, ...) and deltaserve's (`adapters`
        for an ad-hoc mix, `heads`, `routing`, `proxy_alpha`); see `CompletionParams`. With
        `stream=True` the result is an iterator of CompletionChunk.
        """
        return self._client._execute(ep.completion(model, prompt, stream, params))


class ChatCompletions:
    """`client.chat.completions`: OpenAI's chat completions."""

    def __init__(self, client: Client):
        self._client = client

    @overload
    def create(
        self, model: str, messages: ep.Messages, *, stream: Literal[False] = False,
        **params: Unpack[ChatParams],
    ) -> ChatCompletion: ...  # fmt: skip

    @overload
    def create(
        self, model: str, messages: ep.Messages, *, stream: Literal[True],
        **params: Unpack[ChatParams],
    ) -> Stream[ChatCompletionChunk]: ...  # fmt: skip

    @overload
    def create(
        self, model: str, messages: ep.Messages, *, stream: bool, **params: Unpack[ChatParams]
    ) -> ChatCompletion | Stream[ChatCompletionChunk]: ...

    def create(
        self, model: str, messages: ep.Messages, *, stream: bool = False,
        **params: Unpack[ChatParams],
    ) -> ChatCompletion | Stream[ChatCompletionChunk]:  # fmt: skip
        """Answer the chat `messages` with `model`, rendered with the base model's chat template.

        `params` as for `completions.create` (see `ChatParams`); with `stream=True` the result
        is an iterator of ChatCompletionChunk (`choices[i].delta.content`).
        """
        return self._client._execute(ep.chat_completion(model, messages, stream, params))


class Chat:
    """`client.chat`: holds `completions`."""

    def __init__(self, client: Client):
        self.completions = ChatCompletions(client)


class Adapters:
    """`client.adapters`: register, inspect and remove adapters (your tenant's, and shared
    ones for admins)."""

    def __init__(self, client: Client):
        self._client = client

    def upload(
        self, name: str, path: str | Path, shared: bool | None = None, replace: bool = False,
        **options: Unpack[RequestOptions],
    ) -> Adapter:  # fmt: skip
        """Upload the adapter directory `path` (every file in it) and register it as `name`.

        `shared=True` (admins only) makes it visible to every tenant; None lets the server
        decide (shared for admins, the caller's tenant otherwise). `replace=True` atomically
        replaces an adapter of yours with the same name (else 409 ConflictError).
        """
        return self._client._execute(ep.upload_adapter(name, path, shared, replace, options))

    def register(
        self, name: str, source: str, shared: bool | None = None, replace: bool = False,
        **options: Unpack[RequestOptions],
    ) -> Adapter:  # fmt: skip
        """Register the directory `source` on the server's disk (under an operator-allowed
        `--adapter-source-root`) as `name`; `shared` and `replace` as for `upload`."""
        return self._client._execute(ep.register_adapter(name, source, shared, replace, options))

    def list(self, **options: Unpack[RequestOptions]) -> builtins.list[Adapter]:
        """Every adapter the caller may use: shared ones and its tenant's."""
        return self._client._execute(ep.list_adapters(options))

    def get(self, name: str, **options: Unpack[RequestOptions]) -> Adapter:
        """One adapter (NotFoundError for an unknown one or another tenant's)."""
        return self._client._execute(ep.get_adapter(name, options))

    def delete(self, name: str, **options: Unpack[RequestOptions]) -> AdapterDeleted:
        """Unregister an adapter: new requests get 404 at once; running ones finish."""
        return self._client._execute(ep.delete_adapter(name, options))


class Client(BaseClient[httpx.Client]):
    """A deltaserve client: `models`, `completions`, `chat.completions` and `adapters`.

    Args:
        base_url: the server's root, e.g. `http://127.0.0.1:8000` (`/v1` is added; a trailing
            `/v1` is tolerated).
        api_key: the tenant's key, sent as `Authorization: Bearer <key>` (None: open server).
        timeout: seconds (or an httpx.Timeout) per request; per call with `timeout=`.
        max_retries: retries on 429, 503 and connection failures; per call with `max_retries=`.
        initial_retry_delay: first backoff in seconds (doubling, minus up to 25% jitter; a
            server's `Retry-After` wins).
        max_retry_delay: longest backoff in seconds.
        default_headers: headers sent with every request.
        http_client: an httpx.Client to use (its transport, proxies, event hooks); it is not
            closed by `close()`.

    Use it as a context manager, or call `close()`, to release its connections.
    """

    _http_class = httpx.Client
    models = resource(Models)
    completions = resource(Completions)
    chat = resource(Chat)
    adapters = resource(Adapters)

    def _send(self, spec: RequestSpec) -> httpx.Response:
        with ExitStack() as files:
            return self._http.send(self._build(spec, files), stream=spec.stream_to is not None)

    def _execute(self, spec: RequestSpec) -> Any:
        """Send `spec`, retrying as the policy allows; the parsed result, or a typed error."""
        policy = self._policy(spec)
        for attempt in itertools.count():
            try:
                response = self._send(spec)
            except httpx.TransportError as exc:
                time.sleep(self._wait_or_raise(policy, attempt, exc))
                continue
            if response.is_success:
                return self._result(spec, response, Stream)
            response.read()  # the error body (of a streamed request too)
            response.close()
            time.sleep(self._wait_or_raise(policy, attempt, response))

    def openai(self, **kwargs: Any) -> _openai.OpenAI:
        """An `openai.OpenAI` client for the same server, key, timeout and retries (needs the
        `openai` package: `pip install 'deltaserve-client[openai]'`); `kwargs` override."""
        return import_openai().OpenAI(**{**self._openai_settings(), **kwargs})

    def close(self) -> None:
        """Close the connections (not those of an `http_client` passed in)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
