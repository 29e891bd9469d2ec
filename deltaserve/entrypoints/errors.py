"""Typed user-facing errors and the one place that maps them (and everything else) to HTTP.

Every error response has OpenAI's shape::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "n", "code": null}}

Request validation errors (pydantic) are answered with 400 and the offending field in `param`,
as vLLM and OpenAI do. Unexpected exceptions are logged with their traceback and answered with a
generic 500 message: no stack trace ever reaches a client.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from deltaserve.adapter_store.errors import StoreError
from deltaserve.engine.adapters.base import AdapterError
from deltaserve.engine.protocol import QueueFullError
from deltaserve.entrypoints.openai.protocol import UNION_FIELD_SHAPES
from deltaserve.tenancy.errors import TenancyError

logger = logging.getLogger(__name__)


class APIError(Exception):
    """Base of all errors the API reports to its caller; subclasses fix the status and type."""

    status_code: int = 400
    error_type: str = "invalid_request_error"
    default_code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI error body."""
        return error_body(self.message, self.error_type, self.param, self.code)


class BadRequestError(APIError):
    """400: the request is malformed or asks for something this server cannot do."""


class ContextLengthExceededError(BadRequestError):
    """400: prompt + max_tokens do not fit the model's context."""

    default_code = "context_length_exceeded"


class PermissionDeniedError(APIError):
    """403: the caller is known but may not do this."""

    status_code = 403
    error_type = "permission_error"


class NotFoundError(APIError):
    """404: no such resource (or the caller may not see it)."""

    status_code = 404


class ModelNotFoundError(NotFoundError):
    """404: `model` names neither the base model nor an adapter visible to the caller."""

    default_code = "model_not_found"

    def __init__(self, model: str):
        super().__init__(
            f"The model `{model}` does not exist or you do not have access to it.", param="model"
        )


class ConflictError(APIError):
    """409: the resource exists (e.g. an adapter name, without `replace`)."""

    status_code = 409
    default_code = "conflict"


class PayloadTooLargeError(APIError):
    """413: the request body exceeds --max-body-bytes."""

    status_code = 413
    default_code = "request_too_large"


class UnprocessableError(APIError):
    """422: well-formed but semantically unusable content (e.g. an invalid adapter upload)."""

    status_code = 422


class TooManyRequestsError(APIError):
    """429: the engine's waiting queue is full (or a quota is exhausted)."""

    status_code = 429
    error_type = "rate_limit_error"
    default_code = "queue_full"


class ClientClosedRequestError(APIError):
    """499 (nginx's convention): the client went away before the response; nobody reads it."""

    status_code = 499
    default_code = "client_closed_request"


class ServiceUnavailableError(APIError):
    """503: the server is starting up or draining."""

    status_code = 503
    error_type = "service_unavailable_error"
    default_code = "service_unavailable"


def error_body(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_response(exc: APIError) -> JSONResponse:
    """The JSON response for a typed API error."""
    return JSONResponse(exc.to_dict(), status_code=exc.status_code)


_STORE_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: UnprocessableError,
    429: TooManyRequestsError,
    503: ServiceUnavailableError,
}


def store_error(exc: StoreError) -> APIError:
    """The API error for an adapter-store error (which carries its own status and code)."""
    cls = _STORE_STATUS.get(exc.status, BadRequestError)
    return cls(exc.message, param=exc.param, code=exc.code)


def tenancy_error(exc: TenancyError) -> APIError:
    """The API error for a tenancy refusal (401 bad key, 429 quota), with its type and code."""
    mapped = APIError(exc.message, code=exc.code)
    mapped.status_code, mapped.error_type = exc.status_code, exc.error_type
    return mapped


def translate_engine_error(exc: BaseException) -> APIError | None:
    """Map an exception the engine raises for a request to the API error it means, if any."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, StoreError):
        return store_error(exc)
    if isinstance(exc, TenancyError):
        return tenancy_error(exc)
    if isinstance(exc, QueueFullError):
        return TooManyRequestsError(str(exc) or "The server's request queue is full; retry later.")
    if isinstance(exc, AdapterError):
        return BadRequestError(f"The adapter cannot be used: {exc}", param="model")
    if isinstance(exc, ValueError):
        return BadRequestError(str(exc))
    return None


def validation_error(exc: RequestValidationError) -> BadRequestError:
    """One clear 400 message (with `param`) from pydantic's list of errors."""
    errors = list(exc.errors())
    if not errors:
        return BadRequestError("Invalid request.")
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return BadRequestError("The request body is not valid JSON.")
    if not loc:
        return BadRequestError(
            "The request body must be a JSON object sent with 'Content-Type: application/json' "
            f"({first.get('msg', 'invalid value')})."
        )
    field = loc[0]
    same_field = [
        e for e in errors if [str(p) for p in e.get("loc", ()) if p != "body"][:1] == [field]
    ]
    if first.get("type") == "missing":
        return BadRequestError(f"Missing required field '{'.'.join(loc)}'.", param=field)
    if len(same_field) > 1:
        # A union field fails once per alternative: describe the accepted shapes instead.
        shape = UNION_FIELD_SHAPES.get(field, "of a different type")
        return BadRequestError(f"Invalid value for '{field}': it must be {shape}.", param=field)
    detail = first.get("msg", "invalid value")
    return BadRequestError(f"Invalid value for '{'.'.join(loc)}': {detail}.", param=field)


def install_error_handlers(app: FastAPI) -> None:
    """Register the exception → response mapping on `app` (the one place that does it)."""

    async def on_api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, APIError)
        return error_response(exc)

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_error(exc))

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        error_type = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        body = error_body(str(exc.detail), error_type)
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    async def on_engine_error(_: Request, exc: Exception) -> JSONResponse:
        mapped = translate_engine_error(exc)
        if mapped is None:  # pragma: no cover - registered only for mapped types
            return await on_unexpected(_, exc)
        return error_response(mapped)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        body = error_body("Internal server error.", "server_error", None, "internal_error")
        return JSONResponse(body, status_code=500)

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(QueueFullError, on_engine_error)
    app.add_exception_handler(AdapterError, on_engine_error)
    app.add_exception_handler(StoreError, on_engine_error)
    app.add_exception_handler(TenancyError, on_engine_error)
    app.add_exception_handler(Exception, on_unexpected)


def sse_error(exc: BaseException) -> str:
    """An error reported inside an already-started event stream (headers are gone)."""
    mapped = translate_engine_error(exc)
    if mapped is None:
        logger.exception("unhandled error while streaming", exc_info=exc)
        body = error_body("Internal server error.", "server_error", None, "internal_error")
    else:
        body = mapped.to_dict()
    return f"data: {json.dumps(body)}\n\n"
