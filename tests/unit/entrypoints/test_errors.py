"""Every error path answers with OpenAI's error shape and the right status."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from deltaserve.engine.adapters.base import AdapterError
from deltaserve.engine.protocol import QueueFullError
from deltaserve.entrypoints.app import create_app, start_draining
from deltaserve.entrypoints.settings import Settings
from tests.unit.entrypoints.fake_engine import FakeEngine

CHAT = {"model": "tiny-base", "messages": [{"role": "user", "content": "hi"}]}


def error_of(r, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert "Traceback" not in err["message"]
    return err


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "tiny-base", "prompt": "x", "temperature": -1}, "temperature"),
        ({"model": "tiny-base", "prompt": "x", "top_p": 1.5}, "top_p"),
        ({"model": "tiny-base", "prompt": "x", "n": 0}, "n"),
        ({"model": "tiny-base", "prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"model": "tiny-base", "prompt": "x", "logprobs": 21}, "logprobs"),
        ({"model": "tiny-base", "prompt": {"not": "a prompt"}}, "prompt"),
        ({"prompt": "x"}, "model"),
        ({"model": "tiny-base"}, "prompt"),
        ({"model": "tiny-base", "prompt": "x", "n": 5}, "n"),  # over --max-n
        ({"model": "tiny-base", "prompt": [3, 999]}, "prompt"),  # out of vocabulary
        ({"model": "tiny-base", "prompt": []}, "prompt"),
        ({"model": "tiny-base", "prompt": "x", "suffix": "y"}, "suffix"),
        ({"model": "tiny-base", "prompt": "x", "frequency_penalty": 0.5}, "frequency_penalty"),
        ({"model": "tiny-base", "prompt": "x", "best_of": 3}, "best_of"),
        ({"model": "tiny-base", "prompt": "x", "prompt_logprobs": 1, "stream": True},
         "prompt_logprobs"),
        ({"model": "tiny-base", "prompt": "x", "structured_outputs": {"regex": "a", "choice": ["b"]}},
         "structured_outputs"),
        ({"model": "tiny-base", "prompt": "x", "response_format": {"type": "json_schema"}},
         "response_format.json_schema"),
        ({"model": "tiny-base", "prompt": "x", "response_format": {"type": "xml"}},
         "response_format"),
    ],
)
def test_invalid_completion_fields_are_400_with_param(
    client: TestClient, body: dict, param: str
) -> None:
    err = error_of(client.post("/v1/completions", json=body), 400)
    assert err["param"] == param and err["type"] == "invalid_request_error"


def test_engine_value_errors_are_400(client: TestClient) -> None:
    err = error_of(
        client.post(
            "/v1/completions",
            json={"model": "tiny-base", "prompt": "x", "min_tokens": 9, "max_tokens": 2},
        ),
        400,
    )
    assert "min_tokens" in err["message"]


def test_chat_field_errors(client: TestClient) -> None:
    assert (
        error_of(client.post("/v1/chat/completions", json={**CHAT, "top_logprobs": 2}), 400)[
            "param"
        ]
        == "top_logprobs"
    )
    assert (
        error_of(client.post("/v1/chat/completions", json={**CHAT, "messages": []}), 400)["param"]
        == "messages"
    )
    image = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
    assert (
        error_of(client.post("/v1/chat/completions", json={**CHAT, "messages": [image]}), 400)[
            "param"
        ]
        == "messages"
    )


def test_bad_json_is_400(client: TestClient) -> None:
    r = client.post(
        "/v1/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert "JSON" in error_of(r, 400)["message"]


def test_context_overflow_says_so(client: TestClient) -> None:
    err = error_of(
        client.post(
            "/v1/completions", json={"model": "tiny-base", "prompt": "x" * 40, "max_tokens": 40}
        ),
        400,
    )
    assert err["code"] == "context_length_exceeded" and err["param"] == "max_tokens"
    assert "maximum context length is 64 tokens" in err["message"]
    err = error_of(
        client.post("/v1/completions", json={"model": "tiny-base", "prompt": "x" * 80}), 400
    )
    assert err["code"] == "context_length_exceeded" and err["param"] == "prompt"


def test_unknown_model_is_404_model_not_found(client: TestClient) -> None:
    for path, body in (
        ("/v1/completions", {"model": "nope", "prompt": "x"}),
        ("/v1/chat/completions", {**CHAT, "model": "../alpha"}),
    ):
        err = error_of(client.post(path, json=body), 404)
        assert err["code"] == "model_not_found" and err["param"] == "model"


def test_unknown_route_is_404_json(client: TestClient) -> None:
    error_of(client.get("/v1/nothing"), 404)


def test_queue_full_is_429_adapter_error_is_400(client: TestClient, engine: FakeEngine) -> None:
    engine.fail_with = QueueFullError("queue is full")
    for stream in (False, True):
        err = error_of(
            client.post(
                "/v1/completions", json={"model": "tiny-base", "prompt": "x", "stream": stream}
            ),
            429,
        )
        assert err["type"] == "rate_limit_error"
    engine.fail_with = AdapterError("rank 512 exceeds --max-lora-rank")
    err = error_of(client.post("/v1/chat/completions", json={**CHAT, "model": "alpha"}), 400)
    assert "rank 512" in err["message"] and err["param"] == "model"


def test_unexpected_error_is_generic_500(client: TestClient, engine: FakeEngine) -> None:
    engine.fail_with = RuntimeError("secret internal detail")
    err = error_of(client.post("/v1/completions", json={"model": "tiny-base", "prompt": "x"}), 500)
    assert "secret" not in err["message"]


def test_body_too_large_is_413(tmp_path: Path) -> None:
    app = create_app(Settings(model=str(tmp_path / "m"), max_body_bytes=1000), engine=FakeEngine())
    with TestClient(app) as c:
        err = error_of(c.post("/v1/completions", json={"model": "m", "prompt": "x" * 2000}), 413)
        assert err["code"] == "request_too_large"
        assert (
            c.post(
                "/v1/completions", json={"model": "m", "prompt": "x", "max_tokens": 1}
            ).status_code
            == 200
        )


def test_draining_is_503_and_ready_reflects_it(client: TestClient) -> None:
    assert client.get("/ready").status_code == 200
    start_draining(client.app)
    assert error_of(client.get("/ready"), 503)["code"] == "draining"
    err = error_of(client.post("/v1/completions", json={"model": "tiny-base", "prompt": "x"}), 503)
    assert err["type"] == "service_unavailable_error"
    assert client.get("/health").status_code == 200


def test_api_keys(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(
        json.dumps(
            {
                "keys": [
                    {"key": "sk-user", "tenant": "acme", "role": "user"},
                    {
                        "key_sha256": hashlib.sha256(b"sk-admin").hexdigest(),
                        "tenant": "ops",
                        "role": "admin",
                    },
                ]
            }
        )
    )
    app = create_app(Settings(model=str(tmp_path / "m"), api_keys=keys), engine=FakeEngine())
    with TestClient(app) as c:
        assert error_of(c.get("/v1/models"), 401)["type"] == "authentication_error"
        error_of(c.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
        for key in ("sk-user", "sk-admin"):
            assert (
                c.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
            )
        assert c.get("/health").status_code == 200 and c.get("/metrics").status_code == 200


def test_failure_mid_stream_is_reported_in_band(client: TestClient, engine: FakeEngine) -> None:
    engine.fail_after_steps = 3
    r = client.post(
        "/v1/completions",
        json={"model": "tiny-base", "prompt": "x", "max_tokens": 10, "stream": True},
    )
    assert r.status_code == 200  # headers were sent with the first token
    events = r.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    error = json.loads(events[-3][len("data: ") :])["error"]
    assert error["type"] == "server_error" and "exploded" not in error["message"]
    assert client.app.state.server.in_flight == 0
