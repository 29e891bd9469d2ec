"""Registry and store semantics: tenancy, leases, atomic replace, unregister, single flight."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

from deltaserve.adapter_store.errors import (
    AdapterConflictError,
    AdapterForbiddenError,
    AdapterNotFoundError,
    AdapterTooLargeError,
    InvalidAdapterError,
)
from deltaserve.adapter_store.registry import AdapterRegistry
from deltaserve.adapter_store.store import AdapterStore, Caller, TierObserver
from deltaserve.adapter_store.store_config import StoreConfig
from deltaserve.adapter_store.validation import Limits
from tests.unit.adapter_store.helpers import SHAPES, write_lora, write_pickle_lora

ADMIN, ACME, BETA = Caller("ops", admin=True), Caller("acme"), Caller("beta")


def files_of(path: Path) -> list[tuple[str, io.BytesIO]]:
    return [(p.relative_to(path).as_posix(), io.BytesIO(p.read_bytes()))
            for p in sorted(path.rglob("*")) if p.is_file()]  # fmt: skip


def make_store(tmp_path: Path, dropped: list[str] | None = None, **cfg: object) -> AdapterStore:
    config = StoreConfig(data_dir=tmp_path / "data", base_model_id="tiny",
                         source_roots=[tmp_path / "src"], limits=Limits(max_rank=16), **cfg)  # type: ignore[arg-type]
    return AdapterStore(config, shapes=SHAPES,
                        drop_from_engine=dropped.append if dropped is not None else None)  # fmt: skip


def run(coro):
    return asyncio.run(coro)


def test_tenancy_visibility_and_permissions(tmp_path: Path) -> None:
    async def go() -> None:
        store = make_store(tmp_path)
        await store.register_upload("shared-a", files_of(write_lora(tmp_path / "a")), ADMIN)
        m = await store.register_upload("mine", files_of(write_lora(tmp_path / "b", seed=1)), ACME)
        assert m.owner == "acme" and not m.shared and m.rank == 4 and m.base_model == "tiny"
        assert [x.name for x in store.list("acme")] == ["mine", "shared-a"]
        assert [x.name for x in store.list("beta")] == ["shared-a"]
        for call in (store.acquire("mine", "beta"), store.unregister("mine", BETA)):
            with pytest.raises(AdapterNotFoundError):
                await call
        with pytest.raises(AdapterNotFoundError):
            store.get("mine", "beta")
        with pytest.raises(AdapterForbiddenError):
            await store.unregister("shared-a", ACME)
        with pytest.raises(AdapterForbiddenError):  # overwrite a shared one
            await store.register_upload("shared-a", files_of(tmp_path / "b"), ACME, replace=True)
        with pytest.raises(AdapterForbiddenError):
            await store.register_upload("x", files_of(tmp_path / "b"), ACME, shared=True)
        # beta may use the same name privately: no leak, no conflict
        other = await store.register_upload("mine", files_of(tmp_path / "a"), BETA)
        assert other.owner == "beta" and store.get("mine", "acme").sha256 == m.sha256
        with pytest.raises(AdapterConflictError):
            await store.register_upload("mine", files_of(tmp_path / "a"), ACME)

    run(go())


def test_atomic_replace_and_lease_pinning(tmp_path: Path) -> None:
    dropped: list[str] = []

    async def go() -> None:
        store = make_store(tmp_path, dropped)
        old = await store.register_upload("ad", files_of(write_lora(tmp_path / "a")), ACME)
        lease = await store.acquire("ad", "acme")
        new = await store.register_upload(
            "ad", files_of(write_lora(tmp_path / "b", seed=5)), ACME, replace=True
        )
        assert new.sha256 != old.sha256
        assert lease.adapter.uid == old.sha256 and Path(lease.adapter.path).is_dir()
        fresh = await store.acquire("ad", "acme")
        assert fresh.adapter.uid == new.sha256 and fresh.adapter.path != lease.adapter.path
        assert dropped == []  # the old version is still leased
        lease.release()
        lease.release()  # idempotent
        assert dropped == [old.sha256] and not Path(lease.adapter.path).exists()
        fresh.release()

    run(go())


def test_unregister_waits_for_leases(tmp_path: Path) -> None:
    async def go() -> None:
        store = make_store(tmp_path, unregister_timeout_s=5.0)
        await store.register_upload("ad", files_of(write_lora(tmp_path / "a")), ACME)
        lease = await store.acquire("ad", "acme")
        task = asyncio.ensure_future(store.unregister("ad", ACME))
        await asyncio.sleep(0.05)
        assert not task.done()
        with pytest.raises(AdapterNotFoundError):  # new requests no longer find it
            await store.acquire("ad", "acme")
        assert Path(lease.adapter.path).is_dir()  # in-flight one keeps its weights
        lease.release()
        assert (await asyncio.wait_for(task, 2)).name == "ad"

    run(go())


def test_invalid_upload_leaves_nothing_behind(tmp_path: Path) -> None:
    async def go() -> None:
        store = make_store(tmp_path, max_total_adapter_bytes=20_000)
        with pytest.raises(InvalidAdapterError):
            await store.register_upload("p", files_of(write_pickle_lora(tmp_path / "p")), ACME)
        with pytest.raises(InvalidAdapterError):
            await store.register_upload("../x", files_of(write_lora(tmp_path / "a")), ACME)
        await store.register_upload("a", files_of(tmp_path / "a"), ACME)
        with pytest.raises(AdapterTooLargeError):  # the total limit
            await store.register_upload("b", files_of(write_lora(tmp_path / "b", 16)), ACME)
        assert [m.name for m in store.list("acme")] == ["a"]
        assert list((tmp_path / "data" / "staging").iterdir()) == []
        assert len(list((tmp_path / "data" / "content").iterdir())) == 1

    run(go())


def test_source_registration_and_adapter_dir(tmp_path: Path) -> None:
    async def go() -> None:
        write_lora(tmp_path / "dir" / "startup")
        write_pickle_lora(tmp_path / "dir" / "evil")
        store = make_store(tmp_path)
        await store.start(tmp_path / "dir")
        assert [(m.name, m.shared) for m in store.list("acme")] == [("startup", True)]
        m = await store.register_source("s", str(write_lora(tmp_path / "src" / "s")), ACME)
        assert m.source.startswith("path:") and m.public()["source"] == "path"
        with pytest.raises(AdapterForbiddenError):
            await store.register_source("t", str(tmp_path / "dir" / "startup"), ACME)

    run(go())


def test_single_flight_origin_fetch(tmp_path: Path) -> None:
    loads: list[tuple[str, bool]] = []

    async def go() -> None:
        store = make_store(tmp_path)
        store.tiers.observer = TierObserver(lookup=lambda t, hit: loads.append((t, hit)))
        m = await store.register_source("s", str(write_lora(tmp_path / "src" / "s")), ACME)
        store.content.remove(m.sha256)  # as on a replica that never saw the content
        leases = await asyncio.gather(*(store.acquire("s", "acme") for _ in range(8)))
        assert {lease.adapter.uid for lease in leases} == {m.sha256}
        assert loads == [("origin", True)]
        assert store.tier_stats()["origin"] == (1, m.bytes)

    run(go())


def test_registry_list_prefers_own_over_shared() -> None:
    from deltaserve.adapter_store.manifest import AdapterManifest

    async def go() -> None:
        reg = AdapterRegistry()
        reg.install(AdapterManifest("x", "lora", "b", "s1", 1), Path("/a"))
        reg.install(AdapterManifest("x", "lora", "b", "s2", 1, owner="acme"), Path("/b"))
        assert [m.sha256 for m in reg.list("acme")] == ["s2"]
        assert [m.sha256 for m in reg.list("beta")] == ["s1"]
        m = AdapterManifest("x", "lora", "b", "s2", 1, owner="acme", rank=4, target_modules=["q"])
        assert AdapterManifest.from_json(m.to_json()) == m

    run(go())
