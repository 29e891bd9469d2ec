"""Structured-output requests: spec extraction, the compile deadline and engines without it."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi.testclient import TestClient

from deltaserve.entrypoints.app import create_app
from deltaserve.entrypoints.openai.protocol import ChatCompletionRequest
from deltaserve.entrypoints.openai.structured import grammar_spec
from deltaserve.entrypoints.settings import Settings
from tests.unit.entrypoints.fake_engine import FakeEngine

BODY = {"model": "tiny-base", "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_object"}}


def _chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({**BODY, **fields})


def test_same_schema_written_differently_has_one_cache_key() -> None:
    a = {"type": "json_schema", "json_schema": {"schema": {"type": "object", "required": []}}}
    b = {"type": "json_schema", "json_schema": {"schema": {"required": [], "type": "object"}}}
    spec_a, param = grammar_spec(_chat(response_format=a))
    spec_b, _ = grammar_spec(_chat(response_format=b))
    assert spec_a.key == spec_b.key and param == "response_format.json_schema.schema"
    assert grammar_spec(_chat(response_format={"type": "text"})) is None


def test_slow_compile_is_400_and_engines_without_grammars_refuse(
    tmp_path: Path, adapter_dir: Path
) -> None:
    settings = Settings(model=str(tmp_path / "tiny-base"), adapter_dir=adapter_dir,
                        grammar_compile_timeout_s=0.2)
    engine = FakeEngine()
    with TestClient(create_app(settings, engine=engine), raise_server_exceptions=False) as c:
        r = c.post("/v1/chat/completions", json=BODY)
        assert r.status_code == 400 and "does not support" in r.json()["error"]["message"]
        engine.compile_grammar = lambda spec: time.sleep(1.0)  # type: ignore[attr-defined]
        r = c.post("/v1/chat/completions", json=BODY)
        err = r.json()["error"]
        assert r.status_code == 400 and err["param"] == "response_format"
        assert "within 0.2 s" in err["message"]
        r = c.post("/v1/chat/completions", json={**BODY, "response_format": {"type": "text"}})
        assert r.status_code == 200
