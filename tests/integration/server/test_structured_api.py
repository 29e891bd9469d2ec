"""Structured outputs over HTTP (xgrammar): response_format json_schema / json_object on chat
and completions, structured_outputs json / regex / choice / grammar, with n, seeds, streaming,
stop strings and adapters; specs that cannot compile are a 400 naming the field."""

from __future__ import annotations

import json
import re

import httpx
import jsonschema
import openai
import pytest

from tests.integration.server.conftest import BASE_ID, RunningServer

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 8},
        "rooms": {"type": "integer", "minimum": 1, "maximum": 9},
        "kind": {"enum": ["flat", "house"]},
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2},
    },
    "required": ["city", "rooms", "kind", "tags"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "home", "schema": SCHEMA, "strict": True}}


def _parse(text: str):
    return json.loads(text, strict=False)  # xgrammar's JSON strings admit control characters


@pytest.mark.parametrize("model", [BASE_ID, "alpha"])
def test_chat_json_schema_with_n_and_seed(server: RunningServer, model: str) -> None:
    kw = dict(model=model, messages=[{"role": "user", "content": "a home"}], n=3, seed=11,
              temperature=1.0, max_tokens=120, response_format=FORMAT)
    first = server.client.chat.completions.create(**kw)
    for choice in first.choices:
        jsonschema.validate(_parse(choice.message.content), SCHEMA)
        assert choice.finish_reason == "stop"
    again = server.client.chat.completions.create(**kw)
    assert [c.message.content for c in again.choices] == [c.message.content for c in first.choices]


def test_streamed_completion_json_object(server: RunningServer) -> None:
    stream = server.client.completions.create(
        model="beta", prompt="JSON:", max_tokens=200, temperature=0.8, seed=3, stream=True,
        extra_body={"response_format": {"type": "json_object"}},
    )
    text, finish = "", None
    for chunk in stream:
        for c in chunk.choices:
            text += c.text
            finish = c.finish_reason or finish
    if finish == "stop":  # a JSON object may legitimately run past max_tokens
        assert isinstance(_parse(text), dict)
    else:
        assert text.startswith("{")


def test_structured_outputs_regex_choice_grammar_and_stop(server: RunningServer) -> None:
    c = server.client.completions
    out = c.create(model="alpha", prompt="id:", max_tokens=20, temperature=1.0, seed=1, n=4,
                   extra_body={"structured_outputs": {"regex": r"[a-f]{3}-[0-9]{2}"}})
    assert all(re.fullmatch(r"[a-f]{3}-[0-9]{2}", ch.text) for ch in out.choices)
    out = c.create(model=BASE_ID, prompt="pick:", max_tokens=5, temperature=1.0, seed=2, n=4,
                   extra_body={"structured_outputs": {"choice": ["north", "south"]}})
    assert {ch.text for ch in out.choices} <= {"north", "south"}
    out = c.create(model="gamma", prompt="sum:", max_tokens=20, temperature=1.0, seed=3,
                   extra_body={"structured_outputs": {"grammar": 'root ::= [1-9] "+" [1-9]'}})
    assert re.fullmatch(r"[1-9]\+[1-9]", out.choices[0].text)
    # a stop string ends a constrained sample early, as it does a free one
    out = c.create(model="alpha", prompt="x", max_tokens=30, temperature=1.0, seed=4, stop=[","],
                   extra_body={"structured_outputs": {"regex": r"[a-z]{3}(,[a-z]{3}){3}"}})
    assert re.fullmatch(r"[a-z]{3}", out.choices[0].text)
    chat = server.client.chat.completions.create(
        model="beta", messages=[{"role": "user", "content": "go"}], max_tokens=10, stream=True,
        extra_body={"structured_outputs": {"json": {"type": "integer", "minimum": 0,
                                                    "maximum": 999}}})
    text = "".join(ch.choices[0].delta.content or "" for ch in chat if ch.choices)
    assert 0 <= int(text) <= 999


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "object", "properties": {"a": {"$ref": "#/nope"}}}}}},
         "response_format.json_schema.schema"),
        ({"structured_outputs": {"regex": "(unclosed"}}, "structured_outputs.regex"),
        ({"structured_outputs": {"grammar": "root ::= missing_rule"}},
         "structured_outputs.grammar"),
        ({"structured_outputs": {"choice": []}}, "structured_outputs.choice"),
        ({"structured_outputs": {"json": "{not json"}}, "structured_outputs.json"),
    ],
)
def test_uncompilable_specs_are_400(server: RunningServer, extra: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        server.client.chat.completions.create(
            model=BASE_ID, messages=[{"role": "user", "content": "x"}], max_tokens=3,
            extra_body=extra)
    assert info.value.status_code == 400
    assert info.value.body["param"] == param
    assert httpx.get(f"{server.base_url}/health", timeout=10).status_code == 200
