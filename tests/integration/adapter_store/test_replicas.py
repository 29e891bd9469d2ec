"""Two real server replicas sharing one real Redis: registration on one is served and deleted
from the other; Redis killed and restarted under traffic."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.adapter_store.conftest import (
    RedisProcess,
    RunningServer,
    TinyModel,
    auth,
    multipart_files,
    start_server,
    wait_until,
    write_keys,
)

PROMPT = {"prompt": "Hello", "max_tokens": 4, "temperature": 0}


@pytest.fixture(scope="module")
def cluster(
    tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RedisProcess, RunningServer, RunningServer]]:
    tmp = tmp_path_factory.mktemp("cluster")
    redis = RedisProcess(tmp).start()
    keys = write_keys(tmp / "keys.json")
    replicas = [
        start_server(tiny_model, redis_url=redis.url, api_keys=keys, data_dir=tmp / f"data{i}",
                     max_num_seqs=8)  # fmt: skip
        for i in range(2)
    ]
    for r in replicas:
        r.app.state.server.store.backend.ping_interval_s = 0.1
        r.app.state.server.store.backend.retry_interval_s = 0.1
    yield redis, replicas[0], replicas[1]
    for r in replicas:
        r.stop()
    redis.kill()


def complete(server: RunningServer, model: str, who: str = "acme") -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/completions", json={"model": model, **PROMPT},
                      headers=auth(who), timeout=60)  # fmt: skip


def status(server: RunningServer, path: str, who: str = "acme") -> int:
    return httpx.get(f"{server.base_url}{path}", headers=auth(who), timeout=10).status_code


def test_register_on_one_serve_and_delete_from_the_other(cluster, tiny_model: TinyModel) -> None:
    _, one, two = cluster
    # alpha's weights plus a README: new content (two must fetch it), same outputs as alpha
    files = [*multipart_files(tiny_model.adapters / "alpha"), ("files", ("NOTES.txt", b"hi"))]
    r = httpx.post(f"{one.base_url}/v1/adapters", data={"name": "up"}, headers=auth("acme"),
                   files=files, timeout=60)  # fmt: skip
    assert r.status_code == 201, r.text
    assert wait_until(lambda: status(two, "/v1/adapters/up") == 200, 1.0, "replication") < 1.0
    served = complete(two, "up")
    assert served.status_code == 200, served.text
    # same content as the shared `alpha` → same greedy text; differs from the base model
    assert served.json()["choices"][0]["text"] == complete(one, "alpha").json()["choices"][0]["text"]
    metrics = two.metrics_text()
    assert 'deltaserve_adapter_cache_hits_total{tier="redis"} 1.0' in metrics
    assert 'deltaserve_adapter_load_seconds_count{tier="redis"} 1.0' in metrics
    assert 'deltaserve_adapters_resident{tier="redis"} 1.0' in metrics
    assert 'deltaserve_adapters_resident_bytes{tier="origin"} 0.0' not in metrics
    assert 'deltaserve_adapters_resident{tier="host"}' in metrics
    assert status(two, "/v1/adapters/up", who="beta") == 404  # tenancy holds across replicas
    assert httpx.delete(f"{two.base_url}/v1/adapters/up", headers=auth("acme")).status_code == 200
    wait_until(lambda: status(one, "/v1/adapters/up") == 404, 1.0, "deletion to replicate")
    assert complete(one, "up").status_code == 404


def test_redis_killed_and_restarted_under_traffic(cluster, tiny_model: TinyModel) -> None:
    redis, one, two = cluster
    r = httpx.post(f"{one.base_url}/v1/adapters", data={"name": "kept"}, headers=auth("acme"),
                   files=multipart_files(tiny_model.adapters / "beta"), timeout=60)  # fmt: skip
    assert r.status_code == 201
    wait_until(lambda: status(two, "/v1/adapters/kept") == 200)
    assert complete(two, "kept").status_code == 200  # now in two's local tiers
    failures: list[int] = []
    served: list[int] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            for server, model in ((one, "kept"), (two, "kept"), (two, "gamma")):
                code = complete(server, model).status_code
                (served if code == 200 else failures).append(code)

    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    try:
        redis.kill()
        before = len(served)
        for server in (one, two):
            wait_until(lambda s=server: status(s, "/ready") == 503, 3.0, "/ready to report")
        ready = httpx.get(f"{one.base_url}/ready").json()
        assert ready["error"]["code"] == "redis_unavailable"
        refused = httpx.post(f"{one.base_url}/v1/adapters", data={"name": "new"},
                             headers=auth("acme"), files=multipart_files(tiny_model.adapters / "beta"))  # fmt: skip
        assert refused.status_code == 503 and refused.json()["error"]["type"]
        wait_until(lambda: len(served) > before + 3, 30.0, "traffic during the outage")
        redis.start()
        for server in (one, two):
            wait_until(lambda s=server: status(s, "/ready") == 200, 5.0, "reconnection")
    finally:
        stop.set()
        worker.join(timeout=60)
    assert failures == []
    assert status(two, "/v1/adapters/kept") == 200  # the registry survived the empty restart
    r = httpx.post(f"{two.base_url}/v1/adapters", data={"name": "after"}, headers=auth("acme"),
                   files=multipart_files(tiny_model.adapters / "gamma"), timeout=60)  # fmt: skip
    assert r.status_code == 201
    wait_until(lambda: status(one, "/v1/adapters/after") == 200, 1.0, "replication after restart")
    assert complete(one, "after").status_code == 200
