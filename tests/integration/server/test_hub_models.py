"""A real server whose base model and adapters are Hugging Face hub ids from a local cache.

The tiny model and its LoRAs are put into a temporary hub cache the way huggingface_hub lays
it out (tests/hub_cache_layout.py). One server runs in-process (uvicorn on loopback) with
--model acme/tiny and hub adapters allowed; one `deltaserve serve` process finds the cache
through HF_HOME with HF_HUB_OFFLINE=1, as an operator would run it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deltaserve.entrypoints.settings import Settings
from tests.hub_cache_layout import add_snapshot, fake_commit
from tests.integration.server.conftest import RunningServer, TinyModel, free_port, serve

ROOT = Path(__file__).resolve().parents[3]
HUB_ID = "acme/tiny"
PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def hub_home(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An HF_HOME whose hub/ cache holds acme/tiny and acme/tiny-alpha (the `alpha` LoRA)."""
    home = tmp_path_factory.mktemp("hf-home")
    add_snapshot(home / "hub", HUB_ID, tiny_model.base, fake_commit("base"))
    add_snapshot(home / "hub", "acme/tiny-alpha", tiny_model.adapters / "alpha",
                 fake_commit("alpha"), refs=("main", "v1"))  # fmt: skip
    return home


@pytest.fixture(scope="module")
def hub_server(tiny_model: TinyModel, hub_home: Path) -> Iterator[RunningServer]:
    running = serve(Settings(
        model=HUB_ID, hub_cache=hub_home / "hub", allow_hub_adapters=True,
        adapter_dir=tiny_model.adapters, port=free_port(), device="cpu", max_num_seqs=8,
    ))  # fmt: skip
    yield running
    running.stop()


def _greedy(server: RunningServer, model: str) -> str:
    out = server.client.completions.create(
        model=model, prompt=PROMPT, max_tokens=8, temperature=0, extra_body={"ignore_eos": True}
    )
    assert out.usage is not None and out.usage.completion_tokens == 8
    return out.choices[0].text


def test_the_hub_id_is_the_base_models_id(hub_server: RunningServer) -> None:
    models = {m.id: m for m in hub_server.client.models.list().data}
    assert HUB_ID in models and {"alpha", "beta", "gamma"} <= set(models)
    assert _greedy(hub_server, HUB_ID)


def test_adapters_load_by_hub_id(hub_server: RunningServer) -> None:
    url = hub_server.base_url
    loaded = httpx.post(f"{url}/v1/load_lora_adapter",
                        json={"lora_name": "alpha-hub", "lora_path": "acme/tiny-alpha"})  # fmt: skip
    assert loaded.status_code == 200, loaded.text
    registered = httpx.post(f"{url}/v1/adapters",
                            json={"name": "alpha-v1", "source": "acme/tiny-alpha@v1"})  # fmt: skip
    assert registered.status_code == 201, registered.text
    assert registered.json()["parent"] == HUB_ID
    # The same LoRA from --adapter-dir and from the hub cache: the same greedy text, not the base's.
    from_dir = _greedy(hub_server, "alpha")
    assert _greedy(hub_server, "alpha-hub") == from_dir == _greedy(hub_server, "alpha-v1")
    assert from_dir != _greedy(hub_server, HUB_ID)


def test_an_uncached_adapter_hub_id_is_a_clear_400(hub_server: RunningServer) -> None:
    r = httpx.post(f"{hub_server.base_url}/v1/load_lora_adapter",
                   json={"lora_name": "x", "lora_path": "acme/absent"})  # fmt: skip
    error = r.json()["error"]
    assert r.status_code == 400 and error["code"] == "not_in_hub_cache"
    assert "`acme/absent` (revision main)" in error["message"] and error["param"] == "source"


def test_deltaserve_serve_with_a_hub_id_offline(hub_home: Path, tmp_path: Path) -> None:
    """The command line, the cache found through HF_HOME, HF_HUB_OFFLINE=1."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "DELTASERVE_"))}
    env.update(HF_HOME=str(hub_home), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "deltaserve", "serve", "--model", f"{HUB_ID}@main",
           "--port", str(port), "--device", "cpu", "--log-level", "warning"]  # fmt: skip
    log = tmp_path / "serve.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=err)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(proc, url, log)
        assert [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]] == [HUB_ID]
        out = httpx.post(f"{url}/v1/completions", timeout=60, json={
            "model": HUB_ID, "prompt": PROMPT, "max_tokens": 4, "temperature": 0})  # fmt: skip
        assert out.status_code == 200 and out.json()["usage"]["completion_tokens"] == 4
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"deltaserve serve exited: {log.read_text()}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("deltaserve serve did not become ready")
