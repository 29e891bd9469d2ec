"""Tenancy's refusals. Each carries the HTTP status and OpenAI error type/code it means, as
adapter_store's errors do; `entrypoints/errors.py` turns them into responses (tenancy knows no
HTTP framework)."""

from __future__ import annotations


class TenancyError(Exception):
    """A request refused by tenancy: `status_code`, `error_type` and `code` for its response."""

    status_code: int = 400
    error_type: str = "invalid_request_error"
    default_code: str | None = None

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code


class AuthenticationError(TenancyError):
    """401: no API key, or an unknown one."""

    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class QuotaExceededError(TenancyError):
    """429: a tenant quota refused the request; `headers` carry Retry-After and x-ratelimit-*.

    `limit` is the quota that refused it ("requests" | "tokens" | "concurrent_requests"); like
    OpenAI, the error type is that limit and the code `<field>_exceeded`.
    """

    status_code = 429

    def __init__(self, message: str, limit: str, code: str, headers: dict[str, str]):
        super().__init__(message, code=code)
        self.error_type = limit
        self.limit = limit
        self.headers = headers
