"""Completions, chat and model list over the fake engine: shapes, indices, streams, logprobs."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from deltaserve.entrypoints.app import create_app
from tests.unit.entrypoints.fake_engine import FakeEngine


def sse_events(text: str) -> list[str]:
    """The data payloads of an SSE body, checking the framing on the way."""
    assert text.endswith("data: [DONE]\n\n")
    events = text.split("\n\n")[:-2]
    assert all(e.startswith("data: ") for e in events)
    return [e[len("data: ") :] for e in events]


def test_models_lists_base_and_adapters(client: TestClient) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    by_id = {m["id"]: m for m in body["data"]}
    assert set(by_id) == {"tiny-base", "alpha", "beta"}
    assert by_id["tiny-base"]["parent"] is None and by_id["tiny-base"]["max_model_len"] == 64
    for name in ("alpha", "beta"):
        assert by_id[name]["parent"] == "tiny-base"
        assert by_id[name]["kind"] == "lora"
        assert by_id[name]["object"] == "model" and by_id[name]["owned_by"] == "deltaserve"


def test_completion_shape_and_usage(client: TestClient, engine: FakeEngine) -> None:
    r = client.post("/v1/completions", json={"model": "tiny-base", "prompt": "hi", "max_tokens": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["choices"] == [
        {"index": 0, "text": "hello", "logprobs": None, "finish_reason": "length"}
    ]
    prompt_len = len(engine.submitted[0].prompt_token_ids)
    assert body["usage"] == {
        "prompt_tokens": prompt_len,
        "completion_tokens": 5,
        "total_tokens": prompt_len + 5,
        "prompt_tokens_details": {"cached_tokens": 0},  # the fake engine caches nothing
    }
    assert engine.submitted[0].adapter is None


def test_list_prompts_index_prompt_major(client: TestClient, engine: FakeEngine) -> None:
    r = client.post(
        "/v1/completions",
        json={"model": "alpha", "prompt": ["a", "b", "c"], "n": 2, "max_tokens": 3},
    )
    body = r.json()
    assert [c["index"] for c in body["choices"]] == list(range(6))
    # sample j starts at script offset j, whatever the prompt
    assert [c["text"] for c in body["choices"]] == ["hel", "ell"] * 3
    assert {s.adapter.name for s in engine.submitted} == {"alpha"}
    assert body["usage"]["completion_tokens"] == 18


def test_token_id_prompts_are_used_as_given(client: TestClient, engine: FakeEngine) -> None:
    client.post(
        "/v1/completions", json={"model": "tiny-base", "prompt": [5, 6, 7], "max_tokens": 1}
    )
    client.post(
        "/v1/completions", json={"model": "tiny-base", "prompt": [[8], [9, 10]], "max_tokens": 1}
    )
    client.post("/v1/completions", json={"model": "tiny-base", "prompt": "ab", "max_tokens": 1})
    ids = [s.prompt_token_ids for s in engine.submitted]
    assert ids[:3] == [[5, 6, 7], [8], [9, 10]]
    assert ids[3][0] == engine.tokenizer.bos_token_id  # text prompts get BOS


def test_stop_echo_and_default_max_tokens(client: TestClient, engine: FakeEngine) -> None:
    r = client.post(
        "/v1/completions",
        json={"model": "tiny-base", "prompt": "hi", "stop": ["o w"], "echo": True},
    )
    choice = r.json()["choices"][0]
    assert choice["text"] == "hihell" and choice["finish_reason"] == "stop"
    params = engine.submitted[0].params
    assert params.max_tokens == 64 - len(engine.submitted[0].prompt_token_ids)


def test_completion_logprobs_shape(client: TestClient) -> None:
    r = client.post(
        "/v1/completions",
        json={"model": "tiny-base", "prompt": "x", "max_tokens": 3, "logprobs": 1},
    )
    lp = r.json()["choices"][0]["logprobs"]
    assert lp["tokens"] == ["h", "e", "l"]
    assert lp["token_logprobs"] == [-0.5, -0.5, -0.5]
    assert lp["text_offset"] == [0, 1, 2]
    assert lp["top_logprobs"][0] == {"h": -0.5}  # the requested 1 alternative is the sampled token


def test_chat_completion_shape_and_logprobs(client: TestClient, engine: FakeEngine) -> None:
    r = client.post(
        "/v1/chat/completions",
        json={
            "model": "beta",
            "messages": [{"role": "user", "content": "hi"}],
            "max_completion_tokens": 4,
            "logprobs": True,
            "top_logprobs": 2,
            "unknown_field": {"ignored": True},
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "hell", "refusal": None}
    content = choice["logprobs"]["content"]
    assert [c["token"] for c in content] == list("hell")
    assert content[0]["bytes"] == [ord("h")]
    assert [t["token"] for t in content[0]["top_logprobs"]] == ["h", "z"]
    rendered = engine.tokenizer.decode(engine.submitted[0].prompt_token_ids)
    assert rendered == "<s>user: hi\nassistant:"


def test_completion_stream_matches_plain(client: TestClient) -> None:
    req = {"model": "tiny-base", "prompt": ["p", "q"], "n": 2, "max_tokens": 6, "stop": "lo"}
    plain = client.post("/v1/completions", json=req).json()
    r = client.post(
        "/v1/completions", json={**req, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(e) for e in sse_events(r.text)]
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    for e in events[:-1]:
        assert e["object"] == "text_completion" and e["usage"] is None
        (c,) = e["choices"]
        texts[c["index"]] = texts.get(c["index"], "") + c["text"]
        if c["finish_reason"]:
            finish[c["index"]] = c["finish_reason"]
    assert texts == {c["index"]: c["text"] for c in plain["choices"]}
    assert finish == {c["index"]: c["finish_reason"] for c in plain["choices"]}
    assert events[-1]["choices"] == [] and events[-1]["usage"] == plain["usage"]


def test_chat_stream_framing(client: TestClient) -> None:
    req = {
        "model": "tiny-base",
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 3,
        "n": 2,
        "stream": True,
    }
    events = [json.loads(e) for e in sse_events(client.post("/v1/chat/completions", json=req).text)]
    assert all("usage" not in e for e in events)  # only with stream_options.include_usage
    assert [e["choices"][0]["delta"] for e in events[:2]] == [
        {"role": "assistant", "content": ""}
    ] * 2
    content = {0: "", 1: ""}
    for e in events[2:]:
        (c,) = e["choices"]
        assert "role" not in c["delta"]
        content[c["index"]] += c["delta"].get("content", "")
    assert content == {0: "hel", 1: "ell"}
    assert events[-1]["choices"][0]["finish_reason"] == "length"


def test_proxy_alpha_reaches_the_engine(client: TestClient, engine: FakeEngine) -> None:
    r = client.post("/v1/completions",
                    json={"model": "tiny-base", "prompt": "x", "max_tokens": 2, "proxy_alpha": 0.5})
    assert r.status_code == 200
    assert engine.submitted[0].params.proxy_alpha == 0.5
    r = client.post("/v1/chat/completions", json={
        "model": "tiny-base", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2,
        "proxy_alpha": 2})
    assert r.status_code == 200 and engine.submitted[1].params.proxy_alpha == 2.0


def test_models_base_entry_names_the_quantization(settings, engine: FakeEngine) -> None:
    app = create_app(settings.model_copy(update={"quantization": "int8"}), engine=engine)
    with TestClient(app) as c:
        by_id = {m["id"]: m for m in c.get("/v1/models").json()["data"]}
    assert by_id["tiny-base"]["quantization"] == "int8"
    assert by_id["alpha"]["quantization"] is None
