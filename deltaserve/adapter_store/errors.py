"""Typed adapter-store errors. Each carries the HTTP status it means; the server maps them.

The store never imports the server: `status` and `code` are plain data the server's single
error mapping turns into OpenAI-shaped responses.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of every error the adapter store reports to a caller."""

    status: int = 400
    code: str | None = None

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidAdapterError(StoreError):
    """422: the adapter's files are unusable (bad config, tensors, names, paths, pickle)."""

    status = 422
    code = "invalid_adapter"


class AdapterTooLargeError(StoreError):
    """413: an upload or the store as a whole would exceed its byte limit."""

    status = 413
    code = "adapter_too_large"


class AdapterNotFoundError(StoreError):
    """404: no adapter of that name is visible to the caller."""

    status = 404
    code = "adapter_not_found"

    def __init__(self, name: str):
        super().__init__(f"The adapter `{name}` does not exist or you do not have access to it.")
        self.name = name


class AdapterForbiddenError(StoreError):
    """403: the caller sees the adapter but may not change it (shared, or an admin's)."""

    status = 403
    code = "permission_denied"


class AdapterConflictError(StoreError):
    """409: the name is taken and the request did not ask to replace it."""

    status = 409
    code = "adapter_exists"


class BadSourceError(StoreError):
    """400: a malformed request (no files, a source outside every allowed root, ...)."""

    status = 400
    code = "invalid_source"


class StoreUnavailableError(StoreError):
    """503: the shared store (Redis) is unreachable, or adapter content cannot be fetched now."""

    status = 503
    code = "adapter_store_unavailable"


class AdapterQuotaError(StoreError):
    """429: the owning tenant is at its adapter quota (count or bytes)."""

    status = 429
    code = "max_adapters_exceeded"
