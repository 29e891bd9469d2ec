"""Durable store changes: tombstones for deleted --adapter-dir adapters, the local disk budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from deltaserve.adapter_store.errors import AdapterNotFoundError
from tests.unit.adapter_store.helpers import write_lora
from tests.unit.adapter_store.test_store import ADMIN, files_of, make_store, run


def test_deleted_directory_adapter_stays_deleted_until_re_registered(tmp_path: Path) -> None:
    adapters = tmp_path / "adapters"
    write_lora(adapters / "keep")
    write_lora(adapters / "gone", seed=1)

    async def names() -> list[str]:
        store = make_store(tmp_path)  # a restart: a new store over the same data dir
        await store.start(adapters)
        return sorted(m.name for m in store.list("acme"))

    async def go() -> None:
        store = make_store(tmp_path)
        await store.start(adapters)
        await store.unregister("gone", ADMIN)
        assert await names() == ["keep"]
        assert await names() == ["keep"]  # and after a second restart
        with pytest.raises(AdapterNotFoundError):
            make_store(tmp_path).get("gone", "acme")
        # registering the name again clears the tombstone: the directory entry is back
        again = make_store(tmp_path)
        await again.start(adapters)
        await again.register_upload("gone", files_of(adapters / "gone"), ADMIN)
        assert await names() == ["gone", "keep"]

    run(go())


def test_disk_budget_evicts_least_recently_used_refetchable_content(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(3):
        write_lora(src / f"a{i}", seed=i)

    async def go() -> None:
        store = make_store(tmp_path)
        sizes = []
        for i in range(3):
            m = await store.register_source(f"a{i}", str(src / f"a{i}"), ADMIN)
            sizes.append(m.bytes)
        store.disk.budget_bytes = sizes[0] + sizes[1] + sizes[2] // 2  # room for two
        assert store.trim_disk() == [store.get("a0", "acme").sha256]  # the least recent
        held = await store.acquire("a0", "acme")  # back from its origin; now a1 is the LRU
        sha = {f"a{i}": store.get(f"a{i}", "acme").sha256 for i in range(3)}
        assert [store.content.has(sha[n]) for n in ("a0", "a1", "a2")] == [True, False, True]
        # evicted content comes back from its origin on the next use (and a2 goes instead)
        lease = await store.acquire("a1", "acme")
        assert store.content.has(lease.manifest.sha256)
        assert not store.content.has(store.get("a2", "acme").sha256)
        assert store.disk.used_bytes() <= store.disk.budget_bytes
        lease.release()
        held.release()
        # uploads without Redis are the only copy: never evicted, whatever the budget
        only = await store.register_upload("up", files_of(src / "a0"), ADMIN)
        store.disk.budget_bytes = 0
        store.trim_disk()
        assert store.content.has(only.sha256)

    run(go())


def test_tenant_adapter_quotas(tmp_path: Path) -> None:
    from deltaserve.adapter_store.errors import AdapterQuotaError
    from deltaserve.entrypoints.errors import store_error
    from tests.unit.adapter_store.test_store import ACME

    a, b = write_lora(tmp_path / "a"), write_lora(tmp_path / "b", seed=1)

    async def go() -> None:
        store = make_store(tmp_path)
        limits = {"acme": (1, None)}
        store.owner_limits = lambda owner: limits.get(owner, (None, None))
        first = await store.register_upload("one", files_of(a), ACME)
        with pytest.raises(AdapterQuotaError) as info:
            await store.register_upload("two", files_of(b), ACME)
        mapped = store_error(info.value)
        assert (mapped.status_code, mapped.code) == (429, "max_adapters_exceeded")
        await store.register_upload("one", files_of(b), ACME, replace=True)  # replacing is fine
        await store.register_upload("shared", files_of(b), ADMIN)  # shared ones do not count
        limits["acme"] = (None, first.bytes - 1)
        with pytest.raises(AdapterQuotaError, match="bytes") as info:
            await store.register_upload("one", files_of(a), ACME, replace=True)
        assert info.value.code == "max_adapter_bytes_exceeded"

    run(go())
