"""What the SDK puts on the wire and how it reads answers, against httpx.MockTransport (the
server is replaced only here; tests/sdk/test_tenant_flow.py runs the same calls for real)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import openai
import pytest
from deltaserve_client import Adapter, AsyncClient, Client, DeltaserveError

COMPLETION = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
              "choices": [{"index": 0, "text": "hi", "finish_reason": "length"}],
              "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}}  # fmt: skip
ADAPTER = {"id": "a", "object": "adapter", "kind": "lora", "parent": "tiny", "owner": "acme",
           "sha256": "0" * 64, "bytes": 10, "rank": 4, "target_modules": ["q_proj"],
           "created": 5, "source": "upload", "future_field": 1}  # fmt: skip


class Recorder:
    """A MockTransport handler that records requests and answers with a fixed JSON body."""

    def __init__(self, body: object, status: int = 200):
        self.requests: list[httpx.Request] = []
        self.body, self.status = body, status

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        return httpx.Response(self.status, json=self.body)

    def json(self, i: int = -1) -> dict:
        return json.loads(self.requests[i].content)


def client_for(handler: Recorder, base_url: str = "http://server:8000", **kw) -> Client:
    return Client(base_url, api_key="k", http_client=httpx.Client(transport=httpx.MockTransport(handler)), **kw)  # noqa: E501


def test_completion_body_carries_every_extension_and_drops_unset_fields() -> None:
    rec = Recorder(COMPLETION)
    client = client_for(rec, "http://server:8000/v1/", default_headers={"X-Team": "a"})
    out = client.completions.create(
        "tiny", ["a", "b"], max_tokens=4, temperature=None, top_k=5, min_tokens=2,
        ignore_eos=True, proxy_alpha=0.5, adapters=[{"name": "x", "weight": 0.3}], heads=2,
        routing=[[0.3], [0.7]], structured_outputs={"regex": "[a-z]+"},
        response_format={"type": "json_object"}, stop=("\n",), logprobs=2,
        extra_body={"future": {"a": 1}}, extra_headers={"X-Trace": "t"}, max_retries=0,
        timeout=5.0, unknown_field=1,
    )  # fmt: skip
    assert out.choices[0].text == "hi" and out.usage.total_tokens == 3
    request = rec.requests[0]
    assert str(request.url) == "http://server:8000/v1/completions" and request.method == "POST"
    assert request.headers["authorization"] == "Bearer k"
    assert (request.headers["x-trace"], request.headers["x-team"]) == ("t", "a")
    assert request.extensions["timeout"]["read"] == 5.0
    assert rec.json() == {
        "model": "tiny", "prompt": ["a", "b"], "max_tokens": 4, "top_k": 5, "min_tokens": 2,
        "ignore_eos": True, "proxy_alpha": 0.5, "adapters": [{"name": "x", "weight": 0.3}],
        "heads": 2, "routing": [[0.3], [0.7]], "structured_outputs": {"regex": "[a-z]+"},
        "response_format": {"type": "json_object"}, "stop": ["\n"], "logprobs": 2,
        "future": {"a": 1}, "unknown_field": 1,
    }  # fmt: skip


def test_chat_body_and_stream_flag() -> None:
    rec = Recorder({})
    client = client_for(rec)
    messages = [{"role": "user", "content": "hi"}]
    schema = {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}}
    with pytest.raises(DeltaserveError):  # {} is no chat completion; the body is what we check
        client.chat.completions.create("m", messages, response_format=schema, max_retries=0)
    assert rec.json() == {"model": "m", "messages": messages, "response_format": schema}
    stream = client.chat.completions.create("m", messages, stream=True, seed=1)
    assert list(stream) == []  # no events at all: an empty stream
    assert rec.json() == {"model": "m", "messages": messages, "seed": 1, "stream": True}
    assert rec.requests[-1].headers["accept"] == "text/event-stream"


def test_upload_sends_every_file_with_its_relative_path(tmp_path: Path) -> None:
    (tmp_path / "expert").mkdir()
    (tmp_path / "deltaserve_adapter.json").write_text('{"kind": "proxy"}')
    (tmp_path / "expert" / "config.json").write_text('{"x": 1}')
    rec = Recorder(ADAPTER, status=201)
    adapter = client_for(rec).adapters.upload("a", tmp_path, shared=False, replace=True)
    assert isinstance(adapter, Adapter) and adapter.model_extra == {"future_field": 1}
    body = rec.requests[0].content
    assert rec.requests[0].headers["content-type"].startswith("multipart/form-data")
    for part in (b'name="name"\r\n\r\na\r\n', b'name="shared"\r\n\r\nfalse\r\n',
                 b'name="replace"\r\n\r\ntrue\r\n',
                 b'name="files"; filename="deltaserve_adapter.json"', b'{"kind": "proxy"}',
                 b'name="files"; filename="expert/config.json"', b'{"x": 1}'):
        assert part in body, part  # fmt: skip
    client_for(rec).adapters.upload("b", tmp_path)
    assert b'name="shared"' not in rec.requests[1].content  # None: the server decides
    with pytest.raises(NotADirectoryError):
        client_for(rec).adapters.upload("c", tmp_path / "deltaserve_adapter.json")


def test_register_list_get_delete_wire_shapes() -> None:
    rec = Recorder(ADAPTER)
    client = client_for(rec)
    client.adapters.register("a", "/srv/adapters/a", shared=True)
    assert rec.json() == {"name": "a", "source": "/srv/adapters/a", "replace": False, "shared": True}
    rec.body = {"object": "list", "data": [ADAPTER, {**ADAPTER, "id": "b"}]}
    assert [a.id for a in client.adapters.list()] == ["a", "b"]
    rec.body = ADAPTER
    client.adapters.get("a/../b")
    assert rec.requests[-1].url.raw_path == b"/v1/adapters/a%2F..%2Fb"
    rec.body = {"id": "a", "object": "adapter", "deleted": True}
    assert client.adapters.delete("a").deleted and rec.requests[-1].method == "DELETE"
    with pytest.raises(ValueError):
        client.adapters.get("..")


def test_models_list_keeps_parent_kind_and_unknown_fields() -> None:
    rec = Recorder({"object": "list", "data": [
        {"id": "tiny", "object": "model", "created": 1, "max_model_len": 1024},
        {"id": "a", "object": "model", "created": 2, "parent": "tiny", "kind": "lora", "z": 1},
    ]})  # fmt: skip
    base, lora = client_for(rec).models.list()
    assert (base.parent, base.kind, base.max_model_len) == (None, None, 1024)
    assert (lora.parent, lora.kind, lora.model_extra) == ("tiny", "lora", {"z": 1})
    assert str(rec.requests[0].url) == "http://server:8000/v1/models"


def test_openai_clients_share_url_key_and_settings() -> None:
    client = Client("http://h:1/", api_key="secret", timeout=12.0, max_retries=4)
    oai = client.openai()
    assert isinstance(oai, openai.OpenAI) and str(oai.base_url) == "http://h:1/v1/"
    assert (oai.api_key, oai.max_retries, oai.timeout) == ("secret", 4, 12.0)
    aoai = AsyncClient("http://h:1").openai(max_retries=0)
    assert isinstance(aoai, openai.AsyncOpenAI) and aoai.max_retries == 0
    client.close()


def test_async_client_and_stream() -> None:
    events = (
        b'data: {"id":"c","object":"text_completion","created":1,"model":"m",'
        b'"choices":[{"index":0,"text":"a","finish_reason":null}]}\n\n'
        b": keep-alive comment\n\n"
        b'data: {"id":"c","object":"text_completion","created":1,"model":"m",\n'
        b'data: "choices":[{"index":0,"text":"b","finish_reason":"stop"}]}\n\n'
        b"data: [DONE]\n\n"
        b'data: {"never": "read"}\n\n'
    )
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=events, headers={"content-type": "text/event-stream"})

    async def main() -> list[str]:
        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        async with AsyncClient("http://s", http_client=http) as client:
            stream = await client.completions.create("m", "p", stream=True)
            texts = [c.choices[0].text async for c in stream]
        assert not http.is_closed  # a client passed in is the caller's to close
        await http.aclose()
        return texts

    assert asyncio.run(main()) == ["a", "b"]
    assert "authorization" not in seen[0].headers  # no key: no header
