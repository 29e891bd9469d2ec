"""AdapterPool: host tier (LRU by count and bytes, pinned by refs, single-flight loads) and the
device tier (byte budget, LRU, never evicts the protected set)."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import torch

from deltaserve.engine.adapters.base import AdapterError, AdapterRequest
from deltaserve.engine.adapters.lora import LoRAAdapter
from deltaserve.engine.adapters.pool import AdapterPool

D_IN, D_OUT = 16, 24
MODULES = [(0, "q_proj"), (1, "v_proj")]


def _fp32_bytes(rank: int) -> int:
    return len(MODULES) * rank * (D_IN + D_OUT) * 4


class FakeLoader:
    """Builds a LoRAAdapter with real tensors of the rank encoded in the name ('a:8')."""

    def __init__(self, delay: float = 0.0, fail: set[str] = frozenset()):
        self.calls: Counter[str] = Counter()
        self.delay = delay
        self.fail = set(fail)
        self._lock = threading.Lock()

    def __call__(self, req: AdapterRequest) -> LoRAAdapter:
        with self._lock:
            self.calls[req.name] += 1
        time.sleep(self.delay)
        if req.name in self.fail:
            raise AdapterError(f"cannot load {req.name}")
        rank = int(req.name.split(":")[1])
        g = torch.Generator().manual_seed(rank)
        tensors = {m: (torch.randn(rank, D_IN, generator=g), torch.randn(D_OUT, rank, generator=g))
                   for m in MODULES}
        return LoRAAdapter(req.name, rank, tensors)


def _req(name: str) -> AdapterRequest:
    return AdapterRequest(name, f"/adapters/{name}", uid=name)


def _pool(loader, device_budget=10**9, host_max=100, host_bytes=10**9, dtype=torch.float32):
    return AdapterPool(loader, torch.device("cpu"), dtype, device_budget_bytes=device_budget,
                       host_max_adapters=host_max, host_budget_bytes=host_bytes)


def _use(pool: AdapterPool, name: str) -> None:
    """Acquire and release at once (touches the host LRU order)."""
    pool.acquire(_req(name))
    pool.release(name)


# ---- host tier ----------------------------------------------------------------------------

def test_acquire_loads_once_then_hits_and_counts_refs():
    loader = FakeLoader()
    pool = _pool(loader)
    a1 = pool.acquire(_req("a:4"))
    a2 = pool.acquire(_req("a:4"))
    assert a1 is a2 and loader.calls["a:4"] == 1
    assert pool.refcount("a:4") == 2
    assert (pool.stats.host_misses, pool.stats.host_hits) == (1, 1)
    pool.release("a:4")
    pool.release("a:4")
    assert pool.refcount("a:4") == 0


def test_host_lru_by_count():
    loader = FakeLoader()
    pool = _pool(loader, host_max=2)
    _use(pool, "a:2")
    _use(pool, "b:2")
    _use(pool, "a:2")  # a is now the most recently used
    _use(pool, "c:2")  # evicts b, the least recently used
    assert loader.calls == Counter({"a:2": 1, "b:2": 1, "c:2": 1})
    _use(pool, "a:2")
    assert loader.calls["a:2"] == 1, "a stayed resident"
    _use(pool, "b:2")
    assert loader.calls["b:2"] == 2, "b was evicted and reloaded"


def test_host_lru_by_bytes():
    loader = FakeLoader()
    pool = _pool(loader, host_bytes=_fp32_bytes(4) * 3)  # room for three rank-4 adapters
    for name in ("a:4", "b:4", "c:4"):
        _use(pool, name)
    _use(pool, "big:8")  # takes two rank-4 slots: a and b go
    for name in ("c:4", "big:8"):
        _use(pool, name)
    assert loader.calls["c:4"] == 1 and loader.calls["big:8"] == 1
    _use(pool, "a:4")
    assert loader.calls["a:4"] == 2


def test_host_never_evicts_held_adapters():
    loader = FakeLoader()
    pool = _pool(loader, host_max=1, host_bytes=_fp32_bytes(4))
    held = pool.acquire(_req("a:4"))
    pool.acquire(_req("b:8"))  # over both limits, but both are held
    assert pool.acquire(_req("a:4")) is held and loader.calls["a:4"] == 1
    pool.release("a:4")
    pool.release("b:8")  # b is free and over budget; a is still held once
    assert pool.refcount("a:4") == 1
    assert pool.acquire(_req("a:4")) is held and loader.calls["a:4"] == 1
    _use(pool, "b:8")
    assert loader.calls["b:8"] == 2, "b, not held, was evicted"


def test_acquire_is_single_flight():
    loader = FakeLoader(delay=0.2)
    pool = _pool(loader)
    start = threading.Barrier(8)
    got: list[LoRAAdapter] = []

    def worker():
        start.wait()
        got.append(pool.acquire(_req("cold:4")))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert loader.calls["cold:4"] == 1
    assert len(got) == 8 and all(a is got[0] for a in got)
    assert pool.refcount("cold:4") == 8
    assert (pool.stats.host_misses, pool.stats.host_hits) == (1, 7)


def test_failed_load_propagates_and_can_be_retried():
    loader = FakeLoader(fail={"bad:4"})
    pool = _pool(loader)
    for _ in range(2):
        with pytest.raises(AdapterError, match="cannot load"):
            pool.acquire(_req("bad:4"))
    assert loader.calls["bad:4"] == 2, "a failure is not cached as an in-flight load"
    assert pool.refcount("bad:4") == 0
    loader.fail.clear()
    assert pool.acquire(_req("bad:4")).rank == 4


def test_drop_only_when_unreferenced():
    loader = FakeLoader()
    pool = _pool(loader)
    pool.acquire(_req("a:4"))
    pool.drop("a:4")
    pool.acquire(_req("a:4"))
    assert loader.calls["a:4"] == 1, "drop must not forget a held adapter"
    pool.release("a:4")
    pool.release("a:4")
    pool.drop("a:4")
    _use(pool, "a:4")
    assert loader.calls["a:4"] == 2


# ---- device tier --------------------------------------------------------------------------

def _loaded_pool(names, device_budget, dtype=torch.float32):
    loader = FakeLoader()
    pool = _pool(loader, device_budget=device_budget, dtype=dtype)
    for n in names:
        pool.acquire(_req(n))
    return pool


def test_device_bytes_use_the_compute_dtype():
    pool = _loaded_pool(["a:8"], 10**6, dtype=torch.bfloat16)
    assert pool.device_bytes("a:8") == _fp32_bytes(8) // 2
    assert pool.device_bytes("unknown:1") == 0
    (ad,) = pool.on_device(["a:8"], set())
    assert all(a.dtype == b.dtype == torch.bfloat16 for a, b in ad.tensors.values())
    assert pool.stats.device_bytes == _fp32_bytes(8) // 2


def test_device_lru_with_heterogeneous_ranks():
    # Budget: 16 + 8 rank units fit; a third adapter forces evictions.
    pool = _loaded_pool(["a:16", "b:8", "c:4", "d:12"], _fp32_bytes(24))
    pool.on_device(["a:16"], set())
    pool.on_device(["b:8"], set())
    pool.on_device(["a:16"], set())  # hit; a is now the most recent
    assert (pool.stats.device_hits, pool.stats.device_misses) == (1, 2)
    pool.on_device(["c:4"], set())  # 28 > 24: evict LRU b (not a)
    assert pool.stats.device_resident == 2 and pool.stats.device_bytes == _fp32_bytes(20)
    pool.on_device(["a:16"], set())
    assert pool.stats.device_hits == 2, "a stayed"
    pool.on_device(["d:12"], set())  # LRU order c, a: both must go for 12 more to fit
    assert pool.stats.device_resident == 1 and pool.stats.device_bytes == _fp32_bytes(12)


def test_device_never_exceeds_budget_over_a_sequence_of_steps():
    names = ["a:16", "b:8", "c:4", "d:12", "e:1", "f:2"]
    budget = _fp32_bytes(24)
    pool = _loaded_pool(names, budget)
    order = ["a:16", "b:8", "c:4", "d:12", "e:1", "f:2", "a:16", "c:4", "e:1", "b:8"]
    for key in order:
        pool.on_device([key], set())
        assert pool.stats.device_bytes <= budget


def test_device_never_evicts_protected_or_current_keys():
    pool = _loaded_pool(["a:8", "b:8", "c:8", "d:8"], _fp32_bytes(24))
    pool.on_device(["a:8", "b:8"], set())
    pool.on_device(["c:8"], {"a:8"})  # fits: 24
    misses = pool.stats.device_misses
    pool.on_device(["d:8"], {"a:8", "c:8"})  # must evict b, the only unprotected one
    pool.on_device(["a:8", "c:8", "d:8"], set())
    assert pool.stats.device_misses == misses + 1, "a, c and d are all resident"
    # Keys of the same call protect each other: a is not evicted to make room for b.
    pool.on_device(["a:8", "b:8"], set())  # LRU now a, c, d: c is the first one not kept
    hits = pool.stats.device_hits
    pool.on_device(["a:8", "d:8", "b:8"], set())
    assert pool.stats.device_hits == hits + 3 and pool.stats.device_bytes == _fp32_bytes(24)


def test_device_raises_when_the_protected_set_does_not_fit():
    pool = _loaded_pool(["a:8", "b:8", "c:16"], _fp32_bytes(24))
    pool.on_device(["a:8", "b:8"], set())
    with pytest.raises(RuntimeError, match="over budget"):
        pool.on_device(["c:16"], {"a:8", "b:8"})
    with pytest.raises(RuntimeError, match="over budget"):
        pool.on_device(["a:8", "b:8", "c:16"], set())
    big = _loaded_pool(["huge:64"], _fp32_bytes(24))
    with pytest.raises(RuntimeError):
        big.on_device(["huge:64"], set())


def test_device_requires_a_host_copy():
    pool = _loaded_pool([], 10**6)
    with pytest.raises(AdapterError, match="not loaded"):
        pool.on_device(["ghost:4"], set())


def test_device_copies_carry_the_host_weights():
    pool = _loaded_pool(["a:4"], 10**6)
    host = pool.acquire(_req("a:4"))
    (dev,) = pool.on_device(["a:4"], set())
    for m in MODULES:
        torch.testing.assert_close(dev.tensors[m][0], host.tensors[m][0])
        torch.testing.assert_close(dev.tensors[m][1], host.tensors[m][1])


def test_stats_follow_host_residency():
    loader = FakeLoader()
    pool = _pool(loader, host_max=1)
    pool.acquire(_req("a:4"))
    assert pool.stats.host_resident == 1 and pool.stats.host_bytes == _fp32_bytes(4)
    pool.release("a:4")
    _use(pool, "b:8")  # evicts a
    assert pool.stats.host_resident == 1 and pool.stats.host_bytes == _fp32_bytes(8)


def test_drop_while_held_waits_for_the_last_release():
    loader = FakeLoader()
    pool = _pool(loader)
    req = _req("a:4")
    pool.acquire(req)
    pool.acquire(req)
    pool.drop(req.key)
    assert pool.stats.host_resident == 1, "still held by two requests"
    pool.release(req.key)
    assert pool.stats.host_resident == 1
    pool.release(req.key)
    assert pool.stats.host_resident == 0, "forgotten at the last release"
