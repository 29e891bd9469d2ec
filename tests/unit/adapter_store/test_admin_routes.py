"""Admin routes over the scripted engine: tenancy, status codes, leases around generation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from deltaserve.entrypoints.app import create_app
from deltaserve.entrypoints.settings import Settings
from tests.unit.adapter_store.helpers import write_lora, write_pickle_lora
from tests.unit.entrypoints.fake_engine import FakeEngine

KEYS = {"admin": ("ops", "admin"), "acme": ("acme", "user"), "beta": ("beta", "user")}


def auth(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer key-{who}"}


def upload(client: TestClient, who: str, name: str, path: Path, **form: str):
    files = [("files", (p.relative_to(path).as_posix(), p.read_bytes()))
             for p in sorted(path.rglob("*")) if p.is_file()]  # fmt: skip
    return client.post("/v1/adapters", data={"name": name, **form}, files=files, headers=auth(who))


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[TestClient, FakeEngine, Path]]:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": [
        {"key": f"key-{k}", "tenant": t, "role": r} for k, (t, r) in KEYS.items()]}))  # fmt: skip
    src = tmp_path / "src"
    write_lora(src / "ok")
    settings = Settings(
        model=str(tmp_path / "tiny-base"), api_keys=keys, adapter_source_root=[src],
        data_dir=tmp_path / "data", max_adapter_bytes=50_000, max_n=4, max_body_bytes=1_000_000,
    )  # fmt: skip
    engine = FakeEngine()
    with TestClient(create_app(settings, engine=engine), raise_server_exceptions=False) as c:
        yield c, engine, tmp_path


def test_tenant_isolation(env) -> None:
    client, engine, tmp = env
    assert client.get("/v1/adapters").status_code == 401
    assert client.get("/v1/adapters", headers={"Authorization": "Bearer nope"}).status_code == 401
    r = upload(client, "acme", "secret", write_lora(tmp / "a"))
    assert r.status_code == 201 and r.json()["owner"] == "acme"
    assert upload(client, "admin", "common", write_lora(tmp / "b", seed=2)).json()["owner"] == "shared"
    names = lambda who: [a["id"] for a in client.get("/v1/adapters", headers=auth(who)).json()["data"]]  # noqa: E731
    assert names("acme") == ["common", "secret"] and names("beta") == ["common"]
    models = client.get("/v1/models", headers=auth("beta")).json()["data"]
    assert "secret" not in [m["id"] for m in models]
    for method, url in (("GET", "/v1/adapters/secret"), ("DELETE", "/v1/adapters/secret")):
        r = client.request(method, url, headers=auth("beta"))
        assert r.status_code == 404 and r.json()["error"]["message"]
    r = client.post("/v1/completions", headers=auth("beta"),
                    json={"model": "secret", "prompt": "hi", "max_tokens": 2})  # fmt: skip
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    # beta cannot overwrite or delete the shared adapter, nor register shared ones
    assert upload(client, "beta", "common", tmp / "a", replace="true").status_code == 403
    assert client.delete("/v1/adapters/common", headers=auth("beta")).status_code == 403
    assert upload(client, "beta", "x", tmp / "a", shared="true").status_code == 403
    # beta's own "secret" is separate from acme's
    assert upload(client, "beta", "secret", tmp / "b").status_code == 201
    assert client.get("/v1/adapters/secret", headers=auth("acme")).json()["sha256"] != \
        client.get("/v1/adapters/secret", headers=auth("beta")).json()["sha256"]


def test_status_codes_and_nothing_half_registered(env) -> None:
    client, engine, tmp = env
    cases = [
        (upload(client, "acme", "p", write_pickle_lora(tmp / "p")), 422, "pickle_refused"),
        (upload(client, "acme", "../evil", write_lora(tmp / "a")), 422, "invalid_name"),
        (upload(client, "acme", "big", write_lora(tmp / "big", rank=32)), 413, None),
        (client.post("/v1/adapters", headers=auth("acme"), data={"name": "n"}), 400, None),
        (client.post("/v1/adapters", headers=auth("acme"),
                     json={"name": "s", "source": "/etc"}), 403, "source_not_allowed"),  # fmt: skip
        (client.post("/v1/adapters", headers=auth("acme"), json={"name": "s"}), 400, None),
    ]
    for r, status, code in cases:
        assert r.status_code == status, r.text
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        assert code is None or r.json()["error"]["code"] == code
    assert client.get("/v1/adapters", headers=auth("acme")).json()["data"] == []
    assert upload(client, "acme", "a", tmp / "a").status_code == 201
    r = upload(client, "acme", "a", tmp / "a")
    assert r.status_code == 409
    big = [("files", ("adapter_model.safetensors", b"y" * 2_000_000))]
    r = client.post("/v1/adapters", headers=auth("acme"), data={"name": "x"}, files=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunked():  # no Content-Length: the counting receive must stop it
        for _ in range(40):
            yield b"z" * 50_000

    r = client.post("/v1/adapters", headers={**auth("acme"),
                    "content-type": "multipart/form-data; boundary=xyz"}, content=chunked())  # fmt: skip
    assert r.status_code == 413


def test_source_and_vllm_routes(env) -> None:
    client, engine, tmp = env
    ok = str(tmp / "src" / "ok")
    r = client.post("/v1/load_lora_adapter", headers=auth("admin"),
                    json={"lora_name": "v", "lora_path": ok})  # fmt: skip
    assert r.status_code == 200 and "Success" in r.text
    r = client.post("/v1/adapters", headers=auth("acme"), json={"name": "s", "source": ok})
    assert r.status_code == 201 and r.json()["source"] == "path"
    r = client.post("/v1/unload_lora_adapter", headers=auth("admin"), json={"lora_name": "v"})
    assert r.status_code == 200
    assert client.get("/v1/adapters/v", headers=auth("admin")).status_code == 404


def test_completion_leases_the_exact_version(env) -> None:
    client, engine, tmp = env
    first = upload(client, "acme", "a", write_lora(tmp / "a")).json()
    body = {"model": "a", "prompt": "hi", "max_tokens": 2}
    assert client.post("/v1/completions", headers=auth("acme"), json=body).status_code == 200
    assert engine.submitted[-1].adapter.uid == first["sha256"]
    store = client.app.state.server.store
    assert all(v.leases == 0 for v in store.registry.versions())
    engine.step_delay_s = 0.2  # the stream is still running when the headers arrive
    with client.stream("POST", "/v1/completions", headers=auth("acme"),
                       json={**body, "stream": True}) as r:  # fmt: skip
        assert r.status_code == 200
        assert store.registry.versions()[0].leases == 1  # held while streaming
        assert "[DONE]" in "".join(r.iter_text())
    assert all(v.leases == 0 for v in store.registry.versions())
    second = upload(client, "acme", "a", write_lora(tmp / "b", seed=9), replace="true").json()
    assert client.post("/v1/completions", headers=auth("acme"), json=body).status_code == 200
    assert engine.submitted[-1].adapter.uid == second["sha256"] != first["sha256"]
    assert client.delete("/v1/adapters/a", headers=auth("acme")).json()["deleted"] is True
    assert client.post("/v1/completions", headers=auth("acme"), json=body).status_code == 404
