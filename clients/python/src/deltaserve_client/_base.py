"""What the sync and async clients share: configuration, request specs and their encoding.

A resource method builds a `RequestSpec` (pure data: method, path, body, how to parse the
answer); the client's `_execute` sends it with retries. Only `_execute` and the resource
wrappers differ between `Client` and `AsyncClient`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from deltaserve_client._retry import RetryPolicy, should_retry_exception, should_retry_status
from deltaserve_client._version import __version__
from deltaserve_client.errors import DeltaserveError, error_from_response, transport_error
from deltaserve_client.params import OPTION_KEYS

logger = logging.getLogger("deltaserve_client")

R = TypeVar("R")
H = TypeVar("H", httpx.Client, httpx.AsyncClient)

DEFAULT_TIMEOUT = 600.0
"""Seconds; generations can be long, so this is generous (as in the openai package)."""


@dataclass
class RequestSpec:
    """One API call, before it is sent."""

    method: str
    path: str
    """Below the API root, e.g. `/completions`."""
    parse: Callable[[Any], Any] = lambda body: body
    """Turns the JSON answer into the returned object."""
    json: Any = None
    form: dict[str, str] | None = None
    files: list[tuple[str, Path]] | None = None
    """Multipart uploads: (name inside the adapter directory, local file)."""
    stream_to: type[BaseModel] | None = None
    """With streaming, the chunk type; the answer is then a (Async)Stream of it."""
    options: dict[str, Any] = field(default_factory=dict)


def split_options(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(body fields, per-call options) from a method's keyword arguments."""
    body = {k: v for k, v in params.items() if k not in OPTION_KEYS}
    options = {k: v for k, v in params.items() if k in OPTION_KEYS}
    return body, options


def to_json(value: Any) -> Any:
    """A JSON-ready copy: pydantic models dumped, tuples as lists, None-valued keys dropped."""
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_none=True)
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


def api_root(base_url: str | httpx.URL) -> str:
    """The server root without a trailing slash (a trailing `/v1` is tolerated and removed)."""
    url = str(base_url).rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def import_openai() -> Any:
    """The `openai` module (an optional dependency), with a clear error when it is missing."""
    try:
        import openai
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "client.openai() needs the openai package: pip install 'deltaserve-client[openai]'"
        ) from exc
    return openai


class resource(Generic[R]):  # noqa: N801 - used like a field declaration
    """A client attribute holding one resource object (e.g. `models`), made on first use."""

    def __init__(self, factory: Callable[[Any], R]):
        self._factory = factory
        self._slot = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self._slot = f"_resource_{name}"

    def __get__(self, client: Any, owner: type | None = None) -> R:
        if client is None:
            return self  # type: ignore[return-value]  # class attribute access
        made: R | None = client.__dict__.get(self._slot)
        if made is None:
            made = client.__dict__[self._slot] = self._factory(client)
        return made


class BaseClient(Generic[H]):
    """Configuration, request encoding and the retry decisions of Client and AsyncClient
    (whose docstrings describe the arguments)."""

    _http_class: type[H]

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
        http_client: H | None = None,
    ) -> None:
        self.base_url = api_root(base_url)
        """The server root, e.g. `http://127.0.0.1:8000`."""
        self.api_key = api_key
        self.timeout = timeout
        self.retry = RetryPolicy(max_retries, initial_retry_delay, max_retry_delay)
        self._default_headers = dict(default_headers or {})
        self._owns_http = http_client is None
        self._http: H = http_client if http_client is not None else self._http_class(timeout=timeout)

    @property
    def api_url(self) -> str:
        """The OpenAI-compatible API's root: `<base_url>/v1`."""
        return f"{self.base_url}/v1"

    @property
    def max_retries(self) -> int:
        """Default retries per call."""
        return self.retry.max_retries

    def _openai_settings(self) -> dict[str, Any]:
        """Arguments for an openai client pointed at this server with the same settings."""
        return {
            "base_url": self.api_url, "api_key": self.api_key or "unused",
            "timeout": self.timeout, "max_retries": self.max_retries,
        }  # fmt: skip

    def _policy(self, spec: RequestSpec) -> RetryPolicy:
        retries = spec.options.get("max_retries")
        if retries is None:
            return self.retry
        return RetryPolicy(retries, self.retry.initial_delay, self.retry.max_delay, self.retry.jitter)

    def _headers(self, spec: RequestSpec) -> dict[str, str]:
        headers = {"User-Agent": f"deltaserve-client/{__version__}", "Accept": "application/json"}
        if spec.stream_to is not None:
            headers["Accept"] = "text/event-stream"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        headers.update(self._default_headers)
        headers.update(spec.options.get("extra_headers") or {})
        return headers

    def _build(self, spec: RequestSpec, files: ExitStack) -> httpx.Request:
        """The httpx request for `spec`; upload files are opened into `files`."""
        body = spec.json
        extra = spec.options.get("extra_body")
        if extra:
            body = {**(body or {}), **to_json(extra)}
        uploads = None
        if spec.files is not None:
            uploads = [
                ("files", (name, files.enter_context(path.open("rb")), "application/octet-stream"))
                for name, path in spec.files
            ]
        return self._http.build_request(
            spec.method, f"{self.api_url}{spec.path}", json=body, data=spec.form, files=uploads,
            headers=self._headers(spec), timeout=spec.options.get("timeout", self.timeout),
        )  # fmt: skip

    @staticmethod
    def _wait_or_raise(
        policy: RetryPolicy, attempt: int, failure: httpx.Response | httpx.TransportError
    ) -> float:
        """Seconds to wait before retrying after `failure` (a read error response or a
        transport error); raises its typed error when it may not be retried."""
        if isinstance(failure, httpx.Response):
            retry = should_retry_status(failure.status_code)
            error: DeltaserveError = error_from_response(failure)
            wait = policy.delay(attempt, failure)
        else:
            retry = should_retry_exception(failure)
            error = transport_error(failure)
            wait = policy.delay(attempt, None)
        if attempt >= policy.max_retries or not retry:
            raise error from (failure if isinstance(failure, Exception) else None)
        logger.info("%s; retry %d/%d in %.2fs", error, attempt + 1, policy.max_retries, wait)
        return wait

    @staticmethod
    def _result(spec: RequestSpec, response: httpx.Response, stream: type) -> Any:
        """A successful response → the stream (`stream` class) or the parsed object."""
        if spec.stream_to is not None:
            return stream(response, spec.stream_to)
        try:
            body = response.json()
        except ValueError as exc:
            raise DeltaserveError(
                f"The server's answer is not JSON: {response.text[:200]!r}",
                status_code=response.status_code, response=response,
            ) from exc  # fmt: skip
        try:
            return spec.parse(body)
        except (ValidationError, AttributeError, TypeError) as exc:
            raise DeltaserveError(
                f"Unexpected answer from the server: {exc}",
                status_code=response.status_code, body=body, response=response,
            ) from exc  # fmt: skip
