"""deltaserve-client: the Python SDK of deltaserve, over HTTP.

    from deltaserve_client import Client

    with Client("http://127.0.0.1:8000", api_key="...") as client:
        client.adapters.upload("my-lora", "./my-lora")
        out = client.completions.create(model="my-lora", prompt="Hello", max_tokens=16)
        print(out.choices[0].text)

`AsyncClient` has the same surface with `await`. Errors are typed (see `errors`); 429, 503 and
connection failures are retried with exponential backoff.
"""

from deltaserve_client._async_client import AsyncClient
from deltaserve_client._client import Client
from deltaserve_client._retry import RetryPolicy
from deltaserve_client._streaming import AsyncStream, Stream
from deltaserve_client._version import __version__
from deltaserve_client.errors import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    DeltaserveError,
    InternalServerError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    UnprocessableEntityError,
)
from deltaserve_client.types import (
    Adapter,
    AdapterDeleted,
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    CompletionChunk,
    Model,
    Usage,
)

__all__ = [
    "APIConnectionError",
    "APITimeoutError",
    "Adapter",
    "AdapterDeleted",
    "AsyncClient",
    "AsyncStream",
    "AuthenticationError",
    "BadRequestError",
    "ChatCompletion",
    "ChatCompletionChunk",
    "Client",
    "Completion",
    "CompletionChunk",
    "ConflictError",
    "DeltaserveError",
    "InternalServerError",
    "Model",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "RetryPolicy",
    "ServiceUnavailableError",
    "Stream",
    "UnprocessableEntityError",
    "Usage",
    "__version__",
]
