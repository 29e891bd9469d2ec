"""Typed errors, built from the server's OpenAI-shaped error bodies.

Every error response of deltaserve looks like::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "n", "code": null}}

`error_from_response` turns one into the `DeltaserveError` subclass for its status, so callers
can write `except NotFoundError:` instead of comparing numbers. Failures below HTTP (no
connection, timeouts) are `APIConnectionError` / `APITimeoutError`; they are also
`DeltaserveError`s, so one `except DeltaserveError` catches everything this package raises.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

__all__ = [
    "APIConnectionError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "DeltaserveError",
    "InternalServerError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServiceUnavailableError",
    "UnprocessableEntityError",
    "error_from_response",
    "transport_error",
]

REQUEST_ID_HEADERS = ("x-request-id", "request-id")


class DeltaserveError(Exception):
    """Base of every error this package raises.

    Attributes:
        message: the server's human-readable message (or a description of the failure).
        status_code: the HTTP status; None when no response was received, or for an error
            reported inside an already-started event stream.
        type: the error's `type` (e.g. `invalid_request_error`), when the server sent one.
        code: the machine-readable `code` (e.g. `model_not_found`, `queue_full`), if any.
        param: the request field the error is about (e.g. `temperature`), if any.
        request_id: the server's request id header, when present.
        body: the parsed JSON body (None if the body was not JSON).
        response: the httpx response, when there was one.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        type: str | None = None,  # noqa: A002 - OpenAI's field name
        code: str | None = None,
        param: str | None = None,
        request_id: str | None = None,
        body: Any = None,
        response: httpx.Response | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.type = type
        self.code = code
        self.param = param
        self.request_id = request_id
        self.body = body
        self.response = response

    def __str__(self) -> str:
        details = [f"{k}={v}" for k, v in (("code", self.code), ("param", self.param)) if v]
        prefix = f"{self.status_code}: " if self.status_code is not None else ""
        suffix = f" ({', '.join(details)})" if details else ""
        return f"{prefix}{self.message}{suffix}"


class BadRequestError(DeltaserveError):
    """400 (or 422): the request is malformed or asks for something the server cannot do."""


class UnprocessableEntityError(BadRequestError):
    """422: well-formed but unusable content, e.g. an invalid adapter upload."""


class AuthenticationError(DeltaserveError):
    """401: no API key, or an unknown one."""


class PermissionDeniedError(DeltaserveError):
    """403: the key is valid but may not do this (e.g. delete a shared adapter)."""


class NotFoundError(DeltaserveError):
    """404: no such model or adapter, or the caller may not see it (another tenant's)."""


class ConflictError(DeltaserveError):
    """409: the adapter name is taken (pass `replace=True` to replace your own)."""


class PayloadTooLargeError(DeltaserveError):
    """413: the request body or adapter is larger than the server allows."""


class RateLimitError(DeltaserveError):
    """429: a quota is exhausted or the server's queue is full (retried before raising)."""


class InternalServerError(DeltaserveError):
    """5xx other than 503: the server failed."""


class ServiceUnavailableError(InternalServerError):
    """503: the server is starting, draining or cannot reach its adapter store (retried)."""


class APIConnectionError(DeltaserveError):
    """No usable response: the connection failed or dropped (retried before raising)."""

    def __init__(self, message: str = "Connection error.", *, request: httpx.Request | None = None):
        super().__init__(message)
        self.request = request


class APITimeoutError(APIConnectionError):
    """The request timed out (raise `timeout` per call or on the client for long generations)."""

    def __init__(self, request: httpx.Request | None = None):
        super().__init__("Request timed out.", request=request)


_BY_STATUS: dict[int, type[DeltaserveError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def error_class(status_code: int) -> type[DeltaserveError]:
    """The error class for an HTTP status (unknown 4xx: BadRequestError; 5xx: InternalServerError)."""
    if status_code in _BY_STATUS:
        return _BY_STATUS[status_code]
    return InternalServerError if status_code >= 500 else BadRequestError


def error_from_body(
    body: Any, status_code: int | None, fallback: str, **extra: Any
) -> DeltaserveError:
    """The typed error for an OpenAI error body (`{"error": {...}}`); `fallback` is the message
    used when the body has none."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        # Not OpenAI-shaped (e.g. a proxy in front of the server): keep what there is.
        detail = body.get("detail") if isinstance(body, dict) else None
        err = {"message": detail if isinstance(detail, str) else fallback}
    cls = error_class(status_code) if status_code is not None else DeltaserveError
    return cls(
        str(err.get("message") or fallback),
        status_code=status_code,
        type=_str_or_none(err.get("type")),
        code=_str_or_none(err.get("code")),
        param=_str_or_none(err.get("param")),
        body=body,
        **extra,
    )


def error_from_response(response: httpx.Response) -> DeltaserveError:
    """The typed error for a non-2xx response (its body must already be read)."""
    try:
        body: Any = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    fallback = response.text.strip() or response.reason_phrase or f"HTTP {response.status_code}"
    request_id = next((response.headers[h] for h in REQUEST_ID_HEADERS if h in response.headers), None)
    return error_from_body(
        body, response.status_code, fallback, request_id=request_id, response=response
    )


def transport_error(exc: httpx.TransportError) -> APIConnectionError:
    """The typed error for a failure below HTTP (no response, or a stream cut short)."""
    try:
        request: httpx.Request | None = exc.request
    except RuntimeError:  # raised by httpx when the error has no request attached
        request = None
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(request)
    return APIConnectionError(f"Connection error: {exc!r}", request=request)


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
