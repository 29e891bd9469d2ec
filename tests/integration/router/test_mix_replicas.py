"""Two replicas sharing a real Redis: a tenant's mix follows its member being replaced or deleted
on the other replica (stale materialisations dropped everywhere), with tenant visibility."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.adapter_store.conftest import RedisProcess, auth, wait_until, write_keys
from tests.integration.router.conftest import write_mix
from tests.integration.server.conftest import BASE_ID, RunningServer, TinyModel, start_server

BODY = {"prompt": [0, 72, 105, 33, 32], "max_tokens": 8, "temperature": 0}


@pytest.fixture(scope="module")
def replicas(
    mix_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningServer, RunningServer]]:
    tmp = tmp_path_factory.mktemp("mix-cluster")
    redis = RedisProcess(tmp).start()
    keys = write_keys(tmp / "keys.json")
    servers = [
        start_server(mix_model, redis_url=redis.url, api_keys=keys, data_dir=tmp / f"d{i}",
                     max_num_seqs=8)  # fmt: skip
        for i in range(2)
    ]
    yield servers[0], servers[1]
    for s in servers:
        s.stop()
    redis.kill()


def complete(server: RunningServer, model: str, who: str = "acme", **extra: object) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/completions", json={"model": model, **BODY, **extra},
                      headers=auth(who), timeout=60)  # fmt: skip


def upload(server: RunningServer, name: str, src: Path, notes: bytes, replace: bool = False) -> None:
    files = [("files", (p.name, p.read_bytes())) for p in sorted(src.iterdir()) if p.is_file()]
    files.append(("files", ("NOTES.txt", notes)))
    r = httpx.post(f"{server.base_url}/v1/adapters", headers=auth("acme"), timeout=60,
                   data={"name": name, "replace": str(replace).lower()}, files=files)  # fmt: skip
    assert r.status_code == 201, r.text


def built(server: RunningServer) -> set[str]:
    return set(server.app.state.server.mixer.built)


def text(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def test_member_replace_and_delete_reach_every_replica(
    replicas: tuple[RunningServer, RunningServer], mix_model: TinyModel, tmp_path: Path
) -> None:
    one, two = replicas
    upload(one, "own", mix_model.adapters / "m1", b"v1")
    upload(one, "mine", write_mix(tmp_path / "mine", {"inventory": ["m0", "own"]}), b"mix")
    wait_until(lambda: complete(two, "mine").status_code == 200, 2.0, "replication")
    v1 = {text(complete(s, "mine")) for s in replicas}
    assert len(v1) == 1 and v1 == {text(complete(one, "poly"))}  # own = m1's weights
    old = built(one) & built(two)
    assert old
    # tenancy: another tenant sees neither the mix nor its member
    assert complete(two, "mine", who="beta").status_code == 404
    adhoc = complete(two, BASE_ID, who="beta", adapters=[{"name": "m0"}, {"name": "own"}])
    assert adhoc.status_code == 404, adhoc.text

    upload(two, "own", mix_model.base.parent / "spare" / "m3", b"v2", replace=True)
    for s in replicas:  # the retired member's materialisations are dropped everywhere
        wait_until(lambda s=s: not (old & built(s)), 2.0, "stale mix dropped")
        assert not any((s.app.state.server.mixer.cache_dir / k).exists() for k in old)
    v2 = {text(complete(s, "mine")) for s in replicas}
    assert len(v2) == 1 and v2 != v1

    assert httpx.delete(f"{one.base_url}/v1/adapters/own", headers=auth("acme")).status_code == 200
    for s in replicas:
        wait_until(lambda s=s: complete(s, "mine").status_code == 409, 2.0, "409 on every replica")
        body = complete(s, "mine").json()["error"]
        assert body["code"] == "mix_member_missing" and "`own`" in body["message"]
