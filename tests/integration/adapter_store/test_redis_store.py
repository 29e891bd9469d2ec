"""Two adapter stores sharing one real Redis (no HTTP): events, blobs, outage, re-seeding."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

from deltaserve.adapter_store.errors import AdapterNotFoundError, StoreUnavailableError
from deltaserve.adapter_store.redis_backend import RedisBackend
from deltaserve.adapter_store.store import AdapterStore, Caller, TierObserver
from deltaserve.adapter_store.store_config import StoreConfig
from deltaserve.adapter_store.validation import Limits
from tests.integration.adapter_store.conftest import RedisProcess
from tests.unit.adapter_store.helpers import SHAPES, write_lora

ACME = Caller("acme")


def files_of(path: Path) -> list[tuple[str, io.BytesIO]]:
    return [(p.relative_to(path).as_posix(), io.BytesIO(p.read_bytes()))
            for p in sorted(path.rglob("*")) if p.is_file()]  # fmt: skip


def replica(tmp: Path, name: str, url: str, lookups: list) -> AdapterStore:
    config = StoreConfig(data_dir=tmp / name, base_model_id="tiny", limits=Limits(max_rank=16))
    observer = TierObserver(lookup=lambda tier, hit: lookups.append((name, tier, hit)))
    return AdapterStore(config, backend=RedisBackend(url, ping_interval_s=0.1, retry_interval_s=0.1),
                        shapes=SHAPES, observer=observer)  # fmt: skip


async def eventually(predicate, timeout_s: float = 3.0) -> float:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while not predicate():
        assert loop.time() - t0 < timeout_s, "timed out"
        await asyncio.sleep(0.01)
    return loop.time() - t0


def test_two_replicas_share_registrations_and_blobs(tmp_path: Path, redis_proc: RedisProcess) -> None:
    lookups: list = []

    async def go() -> None:
        a = replica(tmp_path, "a", redis_proc.url, lookups)
        b = replica(tmp_path, "b", redis_proc.url, lookups)
        await a.start()
        await b.start()
        m = await a.register_upload("ad", files_of(write_lora(tmp_path / "w")), ACME)
        assert await eventually(lambda: b.registry.get("acme", "ad") is not None) < 1.0
        leases = await asyncio.gather(*(b.acquire("ad", "acme") for _ in range(5)))
        assert {x.adapter.uid for x in leases} == {m.sha256}
        assert lookups == [("b", "redis", True)]  # single flight: one fetch for five requests
        assert Path(leases[0].adapter.path, "adapter_model.safetensors").is_file()
        for lease in leases:
            lease.release()
        new = await b.register_upload("ad", files_of(write_lora(tmp_path / "w2", seed=3)), ACME,
                                      replace=True)  # fmt: skip
        await eventually(lambda: a.registry.get("acme", "ad").manifest.sha256 == new.sha256)
        await b.unregister("ad", ACME)
        await eventually(lambda: a.registry.get("acme", "ad") is None)
        with pytest.raises(AdapterNotFoundError):
            await a.acquire("ad", "acme")
        c = replica(tmp_path, "c", redis_proc.url, lookups)  # a late replica syncs at start
        await a.register_upload("late", files_of(tmp_path / "w"), ACME)
        await c.start()
        assert [x.name for x in c.list("acme")] == ["late"]
        for s in (a, b, c):
            await s.close()

    asyncio.run(go())


def test_outage_keeps_serving_then_recovers_and_reseeds(tmp_path: Path, redis_proc: RedisProcess) -> None:
    lookups: list = []

    async def go() -> None:
        a = replica(tmp_path, "a", redis_proc.url, lookups)
        b = replica(tmp_path, "b", redis_proc.url, lookups)
        await a.start()
        await b.start()
        await a.register_upload("ad", files_of(write_lora(tmp_path / "w")), ACME)
        await eventually(lambda: b.registry.get("acme", "ad") is not None)
        (await b.acquire("ad", "acme")).release()  # now local on b too
        redis_proc.kill()
        await eventually(lambda: not a.healthy and not b.healthy)
        for s in (a, b):  # local tiers keep serving
            (await s.acquire("ad", "acme")).release()
        with pytest.raises(StoreUnavailableError):
            await a.register_upload("x", files_of(tmp_path / "w"), ACME)
        with pytest.raises(StoreUnavailableError):
            await a.unregister("ad", ACME)
        redis_proc.start()  # same port, empty dataset
        await eventually(lambda: a.healthy and b.healthy, timeout_s=5)
        assert [m.name for m in a.list("acme")] == ["ad"]  # re-seeded, not wiped
        await a.register_upload("x", files_of(write_lora(tmp_path / "w3", seed=4)), ACME)
        await eventually(lambda: b.registry.get("acme", "x") is not None)
        (await b.acquire("x", "acme")).release()
        for s in (a, b):
            await s.close()

    asyncio.run(go())


def test_evicted_blob_comes_back_from_origin_once(tmp_path: Path, redis_proc: RedisProcess) -> None:
    lookups: list = []

    async def go() -> None:
        stores = [replica(tmp_path, n, redis_proc.url, lookups) for n in "abc"]
        for s in stores:
            s.config.source_roots = [tmp_path / "src"]
            await s.start()
        a, b, c = stores
        m = await a.register_source("s", str(write_lora(tmp_path / "src" / "s")), ACME)
        await eventually(lambda: b.registry.get("acme", "s") and c.registry.get("acme", "s"))
        await a.backend._redis.delete(f"deltaserve:blob:{m.sha256}")  # evicted (TTL/LRU)
        (await b.acquire("s", "acme")).release()
        (await c.acquire("s", "acme")).release()
        assert lookups == [("b", "redis", False), ("b", "origin", True), ("c", "redis", True)]
        for s in stores:
            await s.close()

    asyncio.run(go())
