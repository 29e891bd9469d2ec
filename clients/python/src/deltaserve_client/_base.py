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
from typing import Any

import httpx
from pydantic import BaseModel, ValidationError

from deltaserve_client._retry import RetryPolicy, should_retry_exception, should_retry_status
from deltaserve_client._version import __version__
from deltaserve_client.errors import APIConnectionError, APITimeoutError, DeltaserveError
from deltaserve_client.params import OPTION_KEYS

logger = logging.getLogger("deltaserve_client")

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


def transport_error(exc: httpx.TransportError) -> APIConnectionError:
    """The typed error for a failure below HTTP."""
    try:
        request: httpx.Request | None = exc.request
    except RuntimeError:  # raised by httpx when the error has no request attached
        request = None
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(request)
    return APIConnectionError(f"Connection error: {exc!r}", request=request)


def import_openai() -> Any:
    """The `openai` module (an optional dependency), with a clear error when it is missing."""
    try:
        import openai
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "client.openai() needs the openai package: pip install 'deltaserve-client[openai]'"
        ) from exc
    return openai


class BaseClient:
    """Configuration and request encoding common to Client and AsyncClient."""

    def __init__(
        self,
        base_url: str | httpx.URL,
        api_key: str | None,
        timeout: float | httpx.Timeout | None,
        max_retries: int,
        initial_retry_delay: float,
        max_retry_delay: float,
        default_headers: Mapping[str, str] | None,
    ) -> None:
        self.base_url = api_root(base_url)
        """The server root, e.g. `http://127.0.0.1:8000`."""
        self.api_key = api_key
        self.timeout = timeout
        self.retry = RetryPolicy(max_retries, initial_retry_delay, max_retry_delay)
        self._default_headers = dict(default_headers or {})

    @property
    def api_url(self) -> str:
        """The OpenAI-compatible API's root: `<base_url>/v1`."""
        return f"{self.base_url}/v1"

    @property
    def max_retries(self) -> int:
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

    def _request_args(self, spec: RequestSpec, files: ExitStack) -> dict[str, Any]:
        """Keyword arguments of httpx's build_request; upload files are opened into `files`."""
        body = spec.json
        extra = spec.options.get("extra_body")
        if extra:
            body = {**(body or {}), **to_json(extra)}
        args: dict[str, Any] = {
            "method": spec.method,
            "url": f"{self.api_url}{spec.path}",
            "headers": self._headers(spec),
            "timeout": spec.options.get("timeout", self.timeout),
        }
        if body is not None:
            args["json"] = body
        if spec.form is not None:
            args["data"] = spec.form
        if spec.files is not None:
            args["files"] = [
                ("files", (name, files.enter_context(path.open("rb")), "application/octet-stream"))
                for name, path in spec.files
            ]
        return args

    @staticmethod
    def _wait_after_status(policy: RetryPolicy, attempt: int, response: httpx.Response) -> float | None:
        """Seconds to wait before retrying after a failed status; None: raise now."""
        if attempt >= policy.max_retries or not should_retry_status(response.status_code):
            return None
        wait = policy.delay(attempt, response)
        logger.info(
            "%s %s -> %d; retry %d/%d in %.2fs", response.request.method, response.request.url,
            response.status_code, attempt + 1, policy.max_retries, wait,
        )  # fmt: skip
        return wait

    @staticmethod
    def _wait_after_error(
        policy: RetryPolicy, attempt: int, exc: httpx.TransportError
    ) -> float | None:
        """Seconds to wait before retrying after a transport failure; None: raise now."""
        if attempt >= policy.max_retries or not should_retry_exception(exc):
            return None
        wait = policy.delay(attempt, None)
        logger.info("%r; retry %d/%d in %.2fs", exc, attempt + 1, policy.max_retries, wait)
        return wait

    @staticmethod
    def _parse(spec: RequestSpec, response: httpx.Response) -> Any:
        try:
            body = response.json()
        except ValueError as exc:
            raise DeltaserveError(
                f"The server's answer is not JSON: {response.text[:200]!r}",
                status_code=response.status_code,
                response=response,
            ) from exc
        try:
            return spec.parse(body)
        except (ValidationError, AttributeError, TypeError) as exc:
            raise DeltaserveError(
                f"Unexpected answer from the server: {exc}",
                status_code=response.status_code, body=body, response=response,
            ) from exc  # fmt: skip
