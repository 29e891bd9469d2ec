"""SIGHUP reloads the API-key file (keys, quotas, weights) of a running `deltaserve serve`."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx

from tests.integration.adapter_store.conftest import wait_until
from tests.integration.tenants.conftest import BASE_ID, ServerProcess, TinyModel

BODY = {"model": BASE_ID, "prompt": "Hi", "max_tokens": 2, "temperature": 0}


def post(server: ServerProcess, key: str) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/completions", json=BODY,
                      headers={"Authorization": f"Bearer {key}"}, timeout=60)  # fmt: skip


def test_sighup_reloads_keys_and_quotas(tiny_model: TinyModel, tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": [{"key": "k1", "tenant": "acme"}],
                                "tenants": {"acme": {"requests_per_minute": 1}}}))  # fmt: skip
    server = ServerProcess(tiny_model, tmp_path, "--api-keys", str(keys)).start()
    try:
        assert post(server, "k1").status_code == 200
        assert post(server, "k1").status_code == 429
        assert post(server, "k2").status_code == 401
        keys.write_text(json.dumps({"keys": [{"key": "k1", "tenant": "acme"},
                                             {"key": "k2", "tenant": "beta"}],
                                    "tenants": {"acme": {"requests_per_minute": 100}}}))  # fmt: skip
        server.signal(signal.SIGHUP)
        wait_until(lambda: post(server, "k2").status_code == 200, 10.0, "the new key")
        r = post(server, "k1")
        assert r.status_code == 200 and r.headers["x-ratelimit-limit-requests"] == "100"
        # a broken file is refused and the running keys stay
        keys.write_text("{not json")
        server.signal(signal.SIGHUP)
        wait_until(lambda: "keeping the current API keys" in server.log(), 10.0, "the refusal")
        assert post(server, "k2").status_code == 200
        assert server.proc is not None and server.proc.poll() is None
    finally:
        server.stop()
