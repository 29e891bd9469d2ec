"""Retry policy, error mapping and event parsing as units (httpx.MockTransport as the server,
`time.sleep` / `asyncio.sleep` recorded instead of slept)."""

from __future__ import annotations

import asyncio
import email.utils
import time
import types
from collections.abc import Callable

import deltaserve_client._async_client as _async_mod
import deltaserve_client._client as _client_mod
import httpx
import pytest
from deltaserve_client import (
    APIConnectionError,
    APITimeoutError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    ConflictError,
    DeltaserveError,
    InternalServerError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    RetryPolicy,
    ServiceUnavailableError,
    UnprocessableEntityError,
)
from deltaserve_client._retry import retry_after
from deltaserve_client._streaming import ChunkParser, SSEDecoder
from deltaserve_client.types import ChatCompletionChunk

MODELS = {"object": "list", "data": [{"id": "tiny", "object": "model", "created": 1}]}


def error(status: int, code: str | None = None, headers: dict | None = None) -> httpx.Response:
    body = {"error": {"message": f"failed {status}", "type": "t", "param": "p", "code": code}}
    return httpx.Response(status, json=body, headers=headers)


class Script:
    """Answers with the given responses (or raises the given exceptions) in order."""

    def __init__(self, *answers: httpx.Response | Exception):
        self.answers = list(answers)
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    # The SDK module's own `time`, not the global one: other threads of the test process
    # (servers of other tests) may sleep too.
    slept: list[float] = []
    monkeypatch.setattr(_client_mod, "time", types.SimpleNamespace(sleep=slept.append))
    return slept


def client(script: Script, **kw) -> Client:
    http = httpx.Client(transport=httpx.MockTransport(script))
    return Client("http://s", http_client=http, **kw)


def test_429_and_503_are_retried_with_the_servers_retry_after(waits: list[float]) -> None:
    script = Script(error(429, "queue_full", {"Retry-After": "1.5"}),
                    error(503, headers={"retry-after-ms": "250"}), httpx.Response(200, json=MODELS))  # fmt: skip
    assert [m.id for m in client(script).models.list()] == ["tiny"]
    assert script.calls == 3 and waits == [1.5, 0.25]


def test_retries_run_out_then_the_typed_error(waits: list[float]) -> None:
    script = Script(error(429, "queue_full"))
    with pytest.raises(RateLimitError) as exc:
        client(script, initial_retry_delay=1.0, max_retry_delay=3.0).models.list()
    assert script.calls == 3 and exc.value.code == "queue_full"
    assert 0.75 <= waits[0] <= 1.0 and 1.5 <= waits[1] <= 2.0  # 1·2^k, minus ≤25% jitter
    script = Script(error(503))
    with pytest.raises(ServiceUnavailableError):
        client(script, max_retries=5).models.list(max_retries=1)  # per call wins
    assert script.calls == 2


@pytest.mark.parametrize("status, cls", [
    (400, BadRequestError), (401, AuthenticationError), (403, PermissionDeniedError),
    (404, NotFoundError), (409, ConflictError), (413, PayloadTooLargeError),
    (422, UnprocessableEntityError), (418, BadRequestError), (500, InternalServerError),
])  # fmt: skip
def test_other_statuses_are_never_retried(status: int, cls: type, waits: list[float]) -> None:
    script = Script(error(status, "c", {"x-request-id": "req-9"}))
    with pytest.raises(cls) as exc:
        client(script, max_retries=5).models.list()
    assert script.calls == 1 and waits == []
    e = exc.value
    assert (e.status_code, e.code, e.param, e.type, e.request_id) == (status, "c", "p", "t", "req-9")
    assert e.message == f"failed {status}" and str(e) == f"{status}: failed {status} (code=c, param=p)"


def test_non_openai_error_bodies_keep_their_text(waits: list[float]) -> None:
    with pytest.raises(InternalServerError) as exc:
        client(Script(httpx.Response(502, text="bad gateway"))).models.list()
    assert exc.value.message == "bad gateway" and exc.value.body is None
    with pytest.raises(NotFoundError) as exc:
        client(Script(httpx.Response(404, json={"detail": "Not Found"}))).models.list()
    assert exc.value.message == "Not Found"


@pytest.mark.parametrize("failure, retried, cls", [
    (httpx.ConnectError("refused"), True, APIConnectionError),
    (httpx.RemoteProtocolError("Server disconnected"), True, APIConnectionError),
    (httpx.ConnectTimeout("slow connect"), True, APITimeoutError),
    (httpx.ReadTimeout("slow answer"), False, APITimeoutError),
])  # fmt: skip
def test_transport_failures(failure: Exception, retried: bool, cls: type, waits) -> None:
    script = Script(failure)
    with pytest.raises(cls) as exc:
        client(script, max_retries=2).models.list()
    assert script.calls == (3 if retried else 1) and isinstance(exc.value, DeltaserveError)
    assert exc.value.status_code is None
    script = Script(failure, httpx.Response(200, json=MODELS))
    if retried:
        assert client(script).models.list()[0].id == "tiny"


def test_async_client_retries_with_asyncio_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(_async_mod, "asyncio", types.SimpleNamespace(sleep=fake_sleep))
    script = Script(error(429, headers={"Retry-After": "2"}), httpx.Response(200, json=MODELS))

    async def main() -> str:
        http = httpx.AsyncClient(transport=httpx.MockTransport(script))
        async with AsyncClient("http://s", http_client=http) as c:
            models = await c.models.list()
        await http.aclose()
        return models[0].id

    assert asyncio.run(main()) == "tiny" and slept == [2.0]


def test_retry_after_forms_and_limits() -> None:
    policy = RetryPolicy(max_retries=3, initial_delay=0.5, max_delay=4.0, jitter=0.0)
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= retry_after(httpx.Headers({"Retry-After": date})) <= 31
    assert retry_after(httpx.Headers({"Retry-After": "soon"})) is None
    assert retry_after(httpx.Headers({})) is None
    huge = httpx.Response(429, headers={"Retry-After": "3600"})
    assert policy.delay(1, huge) == 1.0  # not honoured beyond 60 s: backoff instead
    assert [policy.backoff(k) for k in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    with pytest.raises(ValueError):
        RetryPolicy(max_retries=-1)


def feed_all(lines: list[str]) -> tuple[list, ChunkParser]:
    parser = ChunkParser(ChatCompletionChunk)
    out = [c for line in lines for c in parser.feed(line)]
    return out, parser


CHUNK = '{"id":"c","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"x"}}]}'


def test_event_parsing() -> None:
    decoder = SSEDecoder()
    assert [decoder.feed(x) for x in ["data: a", "data:b", "id: 1", ""]] == [None] * 3 + ["a\nb"]
    assert decoder.feed("") is None and decoder.flush() is None
    chunks, parser = feed_all([f"data: {CHUNK}", "", "data: [DONE]", "", f"data: {CHUNK}", ""])
    assert len(chunks) == 1 and chunks[0].choices[0].delta.content == "x" and parser.done
    chunks, parser = feed_all([f"data: {CHUNK}"])  # the stream ended without a blank line
    assert chunks == [] and len(parser.end()) == 1


@pytest.mark.parametrize("line, check", [
    ('data: {"error": {"message": "boom", "type": "t", "code": "queue_full"}}',
     lambda e: e.code == "queue_full" and e.message == "boom" and e.status_code is None),
    ("data: not json", lambda e: "Unexpected event" in e.message),
    ('data: {"id": 1}', lambda e: "Unexpected event" in e.message),
])  # fmt: skip
def test_bad_events_raise(line: str, check: Callable[[DeltaserveError], bool]) -> None:
    with pytest.raises(DeltaserveError) as exc:
        feed_all([line, ""])
    assert check(exc.value)


class CutStream(httpx.SyncByteStream):
    """One event, then the connection breaks."""

    def __iter__(self):
        yield f"data: {CHUNK}\n\n".encode()
        raise httpx.ReadTimeout("the server went quiet")


def test_a_stream_cut_short_raises_a_typed_error() -> None:
    script = Script(httpx.Response(200, stream=CutStream()))
    stream = client(script).chat.completions.create("m", [], stream=True)
    assert next(stream).choices[0].delta.content == "x"
    with pytest.raises(APITimeoutError):
        next(stream)
    assert script.calls == 1  # a started stream is never retried
