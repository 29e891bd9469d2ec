"""Responses validate against OpenAI's published types (the `openai` package's pydantic models,
strict mode): completions, chat, chat chunks, models and errors; system_fingerprint names the
backend; unknown chat roles are refused; vLLM's /tokenize and /detokenize."""

from __future__ import annotations

import json

import httpx
import pytest
from openai.types import Completion, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.shared import ErrorObject

from deltaserve.entrypoints.fingerprint import system_fingerprint
from tests.integration.server.conftest import ADAPTERS, BASE_ID, RunningServer

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]


def _post(server: RunningServer, path: str, body: dict, status: int = 200) -> dict:
    r = httpx.post(f"{server.base_url}{path}", json=body, timeout=60)
    assert r.status_code == status, r.text
    return r.json()


def _fingerprint(server: RunningServer, tiny_model) -> str:
    dtype = str(server.app.state.server.engine.engine.dtype).removeprefix("torch.")
    return system_fingerprint(str(tiny_model.base), dtype)


@pytest.mark.parametrize("model", [BASE_ID, "alpha"])
def test_completions_and_chat_validate(server: RunningServer, tiny_model, model: str) -> None:
    fp = _fingerprint(server, tiny_model)
    data = _post(server, "/v1/completions", {"model": model, "prompt": ["ab", "cd"], "n": 2,
                                              "max_tokens": 4, "logprobs": 2, "seed": 1})
    Completion.model_validate(data, strict=True)
    assert data["system_fingerprint"] == fp and fp.startswith("deltaserve-")
    data = _post(server, "/v1/chat/completions", {
        "model": model, "messages": MESSAGES, "max_tokens": 4, "logprobs": True,
        "top_logprobs": 2, "response_format": {"type": "json_object"}})
    ChatCompletion.model_validate(data, strict=True)
    assert data["system_fingerprint"] == fp


def test_chat_chunks_validate(server: RunningServer, tiny_model) -> None:
    body = {"model": "beta", "messages": MESSAGES, "max_tokens": 5, "n": 2, "stream": True,
            "logprobs": True, "stream_options": {"include_usage": True}}
    chunks = []
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body,
                      timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    assert len(chunks) > 3
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk, strict=True)
        assert chunk["system_fingerprint"] == _fingerprint(server, tiny_model)
    assert chunks[-1]["usage"]["completion_tokens"] == 10


def test_models_validate_and_adapters_carry_context(server: RunningServer) -> None:
    data = httpx.get(f"{server.base_url}/v1/models", timeout=30).json()
    for card in data["data"]:
        Model.model_validate(card, strict=True)
    by_id = {c["id"]: c for c in data["data"]}
    assert set(ADAPTERS) <= set(by_id)
    assert all(by_id[a]["max_model_len"] == by_id[BASE_ID]["max_model_len"] > 0 for a in ADAPTERS)


def test_errors_validate_and_unknown_roles_are_400(server: RunningServer) -> None:
    bad = MESSAGES + [{"role": "wizard", "content": "abracadabra"}]
    err = _post(server, "/v1/chat/completions", {"model": BASE_ID, "messages": bad}, 400)
    ErrorObject.model_validate(err["error"], strict=True)
    assert err["error"]["param"] == "messages[2].role"
    err = _post(server, "/v1/completions", {"model": "nope", "prompt": "x"}, 404)
    ErrorObject.model_validate(err["error"], strict=True)
    for role in ("developer", "tool", "assistant"):
        ok = MESSAGES + [{"role": role, "content": "fine"}]
        _post(server, "/v1/chat/completions", {"model": BASE_ID, "messages": ok, "max_tokens": 1})


def test_tokenize_detokenize(server: RunningServer, tiny_model) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model.base)
    out = _post(server, "/tokenize", {"model": "alpha", "prompt": "héllo",
                                      "return_token_strs": True})
    assert out["tokens"] == tok.encode("héllo") and out["count"] == len(out["tokens"])
    assert out["max_model_len"] > 0 and len(out["token_strs"]) == out["count"]
    plain = _post(server, "/tokenize", {"prompt": "héllo", "add_special_tokens": False})
    assert plain["tokens"] == tok.encode("héllo", add_special_tokens=False)
    chat = _post(server, "/tokenize", {"model": BASE_ID, "messages": MESSAGES})
    assert tok.decode(chat["tokens"]).endswith("assistant:")
    assert _post(server, "/detokenize", {"tokens": plain["tokens"]})["prompt"] == "héllo"
    err = _post(server, "/detokenize", {"tokens": [10**6]}, 400)["error"]
    assert err["param"] == "tokens"
    _post(server, "/tokenize", {"model": "nope", "prompt": "x"}, 404)
    err = _post(server, "/tokenize", {"messages": [{"role": "wizard", "content": "x"}]}, 400)
    assert err["error"]["param"] == "messages[0].role"
