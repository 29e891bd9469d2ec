"""Adapter residency: a host-memory tier (LRU, pinned while requests hold the adapter) behind a
device slot pool budgeted in bytes (LRU; never evicts what the running batch uses).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from deltaserve.engine.adapters.base import AdapterError, AdapterRequest
from deltaserve.engine.adapters.lora import LoRAAdapter
from deltaserve.engine.adapters.proxy import ProxyAdapter
from deltaserve.engine.adapters.sparse_delta import SparseDeltaAdapter

Adapter = LoRAAdapter | SparseDeltaAdapter | ProxyAdapter
"""What the pool holds: any kind with `nbytes`, `device_nbytes(elem)` and `to(device, dtype)`."""

logger = logging.getLogger(__name__)


@dataclass
class PoolStats:
    host_resident: int = 0
    host_bytes: int = 0
    device_resident: int = 0
    device_bytes: int = 0
    host_hits: int = 0
    host_misses: int = 0
    device_hits: int = 0
    device_misses: int = 0


class AdapterPool:
    """Thread-safe: `load_host` runs on loader threads, the rest on the engine thread."""

    def __init__(
        self,
        loader: Callable[[AdapterRequest], Adapter],
        device: torch.device,
        dtype: torch.dtype,
        device_budget_bytes: int,
        host_max_adapters: int,
        host_budget_bytes: int,
    ):
        self._loader = loader
        self.device = device
        self.dtype = dtype
        self.device_budget_bytes = device_budget_bytes
        self.host_max_adapters = host_max_adapters
        self.host_budget_bytes = host_budget_bytes
        self._lock = threading.Lock()
        self._host: OrderedDict[str, Adapter] = OrderedDict()  # LRU order, oldest first
        self._device: OrderedDict[str, Adapter] = OrderedDict()
        self._refs: dict[str, int] = {}  # requests holding each adapter (pins the host copy)
        self._loading: dict[str, threading.Event] = {}
        self._retired: set[str] = set()  # dropped while still held: forget at last release
        self.on_load: Callable[[str, float], None] | None = None
        """Observer called with (tier, seconds) after a load: 'origin' → host, 'host' → device."""
        self._counters = PoolStats()  # hits/misses; residency is computed when read
        self._elem = torch.tensor([], dtype=dtype).element_size()

    # ---- host tier ----------------------------------------------------------------------
    def acquire(self, req: AdapterRequest) -> Adapter:
        """Load into host memory if needed (single-flight) and pin it for one request."""
        key = req.key
        while True:
            with self._lock:
                if key in self._host:
                    self._host.move_to_end(key)
                    self._refs[key] = self._refs.get(key, 0) + 1
                    self._counters.host_hits += 1
                    return self._host[key]
                event = self._loading.get(key)
                if event is None:
                    event = self._loading[key] = threading.Event()
                    break
            event.wait()  # another thread is loading it; then re-check
        try:
            t0 = time.perf_counter()
            adapter = self._loader(req)
            self._observe("origin", time.perf_counter() - t0)
        except Exception:
            with self._lock:
                self._loading.pop(key).set()
            raise
        with self._lock:
            self._counters.host_misses += 1
            self._host[key] = adapter
            self._refs[key] = self._refs.get(key, 0) + 1
            self._evict_host()
            self._loading.pop(key).set()
        return adapter

    def release(self, key: str) -> None:
        with self._lock:
            n = self._refs.get(key, 0) - 1
            if n <= 0:
                self._refs.pop(key, None)
                if key in self._retired:
                    self._retired.discard(key)
                    self._host.pop(key, None)
                    self._device.pop(key, None)
            else:
                self._refs[key] = n
            self._evict_host()

    def refcount(self, key: str) -> int:
        with self._lock:
            return self._refs.get(key, 0)

    def _evict_host(self) -> None:
        def over() -> bool:
            used = sum(a.nbytes for a in self._host.values())
            return len(self._host) > self.host_max_adapters or used > self.host_budget_bytes

        for key in list(self._host):
            if not over():
                break
            if self._refs.get(key, 0) == 0:
                del self._host[key]
                self._device.pop(key, None)

    # ---- device tier --------------------------------------------------------------------
    def device_bytes(self, key: str) -> int:
        """Bytes the adapter takes in the device pool (compute dtype)."""
        with self._lock:
            ad = self._device.get(key) or self._host.get(key)
        if ad is None:
            return 0
        return ad.device_nbytes(self._elem)

    def peek(self, key: str) -> Adapter | None:
        """The adapter held under `key` (device copy first), without touching LRU or counters."""
        with self._lock:
            return self._device.get(key) or self._host.get(key)

    def on_device(self, keys: list[str], protected: set[str]) -> list[Adapter]:
        """Make `keys` device-resident (in that order) and return them.

        Evicts least-recently-used adapters that are neither in `keys` nor `protected` (the
        running batch's). The scheduler keeps each step within the budget, so eviction always
        finds room; if it cannot, that is a bug and raises.
        """
        out = []
        for key in keys:
            with self._lock:
                ad = self._device.get(key)
                host = self._host.get(key)
            if ad is not None:
                with self._lock:
                    self._counters.device_hits += 1
                    self._device.move_to_end(key)
            else:
                if host is None:
                    raise AdapterError(f"adapter {key!r} is not loaded (no request holds it)")
                need = self.device_bytes(key)
                t0 = time.perf_counter()
                ad = host.to(self.device, self.dtype)
                self._observe("host", time.perf_counter() - t0)
                with self._lock:
                    self._counters.device_misses += 1
                    self._make_room(need, set(keys) | protected)
                    self._device[key] = ad
            out.append(ad)
        return out

    def _observe(self, tier: str, seconds: float) -> None:
        if self.on_load is not None:
            try:
                self.on_load(tier, seconds)
            except Exception:  # metrics must never break serving
                logger.exception("adapter load observer failed")

    def _make_room(self, need: int, keep: set[str]) -> None:
        used = self._device_used()
        for key in list(self._device):
            if used + need <= self.device_budget_bytes:
                return
            if key not in keep:
                used -= self._bytes_of(self._device.pop(key))
        if used + need > self.device_budget_bytes:
            raise RuntimeError(
                f"device adapter pool over budget: need {need} bytes, {used} used of "
                f"{self.device_budget_bytes} by adapters of the running batch"
            )

    def _bytes_of(self, ad: Adapter) -> int:
        return ad.nbytes

    def _device_used(self) -> int:
        return sum(self._bytes_of(a) for a in self._device.values())

    @property
    def stats(self) -> PoolStats:
        """Counters plus current residency per tier."""
        with self._lock:
            c = self._counters
            return PoolStats(
                host_resident=len(self._host),
                host_bytes=sum(a.nbytes for a in self._host.values()),
                device_resident=len(self._device),
                device_bytes=self._device_used(),
                host_hits=c.host_hits, host_misses=c.host_misses,
                device_hits=c.device_hits, device_misses=c.device_misses,
            )

    def drop(self, key: str) -> None:
        """Forget an adapter (unregistered/replaced): now, or at its last release if a
        request still holds it."""
        with self._lock:
            if self._refs.get(key, 0) == 0:
                self._host.pop(key, None)
                self._device.pop(key, None)
            else:
                self._retired.add(key)
