"""deploy/ and loadtests/ proofs: a live tiny-model server with tenant keys, and a real Prometheus.

The server (real engine, real uvicorn on loopback, a real redis-server as its shared adapter
store) serves a tiny base with three LoRAs, two of which share rank and targets so ad-hoc
mixes over them work; API keys: two user tenants and an admin. Prometheus is Debian's
`prometheus` binary (make test installs it) with the shipped rules and a test scrape config
pointing at that server, on short intervals.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.adapter_store.conftest import RedisProcess
from tests.integration.server.conftest import RunningServer, TinyModel, free_port, start_server
from tests.integration.server.tiny_model import build_all

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KEYS = {
    "keys": [
        {"key": "sk-acme", "tenant": "acme", "role": "user"},
        {"key": "sk-globex", "tenant": "globex", "role": "user"},
        {"key": "sk-ops", "tenant": "ops", "role": "admin"},
    ]
}


def require_binary(name: str) -> str:
    """The path of a system binary the proof needs; a clear failure (not a skip) without it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not on PATH: install Debian's prometheus package (apt-get install prometheus; make test does when apt-get is usable)")
    return path


@pytest.fixture(scope="package")
def deploy_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    root = tmp_path_factory.mktemp("deploy-model")
    base, adapters = build_all(root, {"alpha": 4, "beta": 4, "gamma": 8})
    return TinyModel(base, adapters)


@pytest.fixture(scope="package")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    path.write_text(json.dumps(KEYS))
    return path


@pytest.fixture(scope="package")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    proc = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    yield proc
    proc.kill()


@pytest.fixture(scope="package")
def live_server(
    deploy_model: TinyModel, keys_file: Path, redis: RedisProcess
) -> Iterator[RunningServer]:
    """The deployment's shape: tenant keys and the shared Redis adapter store."""
    running = start_server(deploy_model, max_num_seqs=8, api_keys=keys_file, redis_url=redis.url)
    yield running
    running.stop()


@pytest.fixture(scope="package")
def metric_names(live_server: RunningServer) -> set[str]:
    """Every sample name the live server exposes (with _total/_bucket/_sum/_count suffixes).

    One authenticated request first, so that the labelled HTTP counter has a child to show.
    """
    httpx.get(f"{live_server.base_url}/v1/models", headers={"Authorization": "Bearer sk-acme"})
    names = set()
    for line in live_server.metrics_text().splitlines():
        if line and not line.startswith("#"):
            names.add(line.split("{", 1)[0].split(" ", 1)[0])
    return names


class Prometheus:
    """A real Prometheus process on loopback and its HTTP query API."""

    def __init__(self, url: str, proc: subprocess.Popen):
        self.url = url
        self.proc = proc

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        assert body.get("status") == "success", f"{expr!r}: {body}"
        return body["data"]["result"]

    def wait_for(self, expr: str, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        """Poll until `expr` returns at least one series."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.query(expr)
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"no result for {expr!r} after {timeout_s:.0f}s")
            time.sleep(0.5)

    def rules(self) -> list[dict[str, Any]]:
        body = httpx.get(f"{self.url}/api/v1/rules", timeout=10).json()
        return [rule for group in body["data"]["groups"] for rule in group["rules"]]


@pytest.fixture(scope="package")
def prometheus(live_server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = require_binary("prometheus")
    work = tmp_path_factory.mktemp("prometheus")
    target = live_server.base_url.removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(DEPLOY / "prometheus" / "rules.yml")],
        "scrape_configs": [{"job_name": "deltaserve", "static_configs": [{"targets": [target]}]}],
    }
    (work / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    log = (work / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not start: {(work / 'prometheus.log').read_text()}")
            time.sleep(0.2)
        yield Prometheus(url, proc)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
