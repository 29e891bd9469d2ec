"""Deleted --adapter-dir adapters stay deleted across restarts and replicas (real Redis)."""

from __future__ import annotations

from pathlib import Path

import httpx

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


def status(server: RunningServer, name: str) -> int:
    return httpx.get(f"{server.base_url}/v1/adapters/{name}", headers=auth("acme")).status_code


def test_tombstones_survive_restarts_until_re_registered(
    tiny_model: TinyModel, redis_proc: RedisProcess, tmp_path: Path
) -> None:
    keys = write_keys(tmp_path / "keys.json")
    common = {"api_keys": keys, "max_num_seqs": 2}
    one = start_server(tiny_model, redis_url=redis_proc.url, data_dir=tmp_path / "one", **common)
    two = start_server(tiny_model, redis_url=redis_proc.url, **common)  # no data dir of its own
    try:
        assert status(two, "gamma") == 200
        r = httpx.delete(f"{one.base_url}/v1/adapters/gamma", headers=auth("admin"))
        assert r.status_code == 200, r.text
        wait_until(lambda: status(two, "gamma") == 404, 2.0, "the delete to replicate")
        two.stop()
        # a fresh replica reads the adapter dir again, and Redis's tombstone removes gamma
        two = start_server(tiny_model, redis_url=redis_proc.url, **common)
        wait_until(lambda: status(two, "gamma") == 404, 5.0, "the tombstone to apply")
        assert status(two, "alpha") == 200
        one.stop()
        # without Redis, replica one's own tombstone file keeps gamma deleted
        one = start_server(tiny_model, data_dir=tmp_path / "one", **common)
        assert status(one, "gamma") == 404 and status(one, "beta") == 200
        one.stop()
        # registering gamma again (shared, by an admin) lifts the tombstone everywhere
        r = httpx.post(f"{two.base_url}/v1/adapters", data={"name": "gamma"},
                       headers=auth("admin"), files=multipart_files(tiny_model.adapters / "gamma"))  # fmt: skip
        assert r.status_code == 201, r.text
        one = start_server(tiny_model, redis_url=redis_proc.url, data_dir=tmp_path / "one", **common)
        wait_until(lambda: status(one, "gamma") == 200, 5.0, "gamma to be back")
    finally:
        one.stop()
        two.stop()
