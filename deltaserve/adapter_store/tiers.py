"""The tier chain below the engine: local content dir → shared backend (Redis) → origin.

Tiers, nearest first: device slots and host RAM (the engine's pool, keyed by the content
sha256, with its own metrics) → the local content directory → the shared backend's blobs →
origin (a server-side source path that this replica can read). Fetches are single-flight per
sha256 within a replica (one shared task) and across replicas (the backend's fetch lock: one
replica reads origin and shares the blob, the others wait for it). Lookups and load times are
reported per tier ("redis", "origin") through a TierObserver.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from deltaserve.adapter_store import ingest as ing
from deltaserve.adapter_store.backend import StoreBackend
from deltaserve.adapter_store.content import ContentStore
from deltaserve.adapter_store.errors import StoreUnavailableError
from deltaserve.adapter_store.manifest import AdapterManifest
from deltaserve.adapter_store.store_config import StoreConfig

logger = logging.getLogger(__name__)

FETCH_WAIT_S = 30.0
"""How long a replica waits for another one's origin fetch before fetching itself."""


@dataclass
class TierObserver:
    """Metrics hooks: lookup(tier, hit) and load(tier, seconds)."""

    lookup: Callable[[str, bool], None] = lambda tier, hit: None
    load: Callable[[str, float], None] = lambda tier, seconds: None


class TierChain:
    """Brings adapter content local, nearest tier first."""

    def __init__(
        self, content: ContentStore, backend: StoreBackend, observer: TierObserver,
        config: StoreConfig,
    ):  # fmt: skip
        self.content = content
        self.backend = backend
        self.observer = observer
        self.config = config
        self._fetches: dict[str, asyncio.Future[None]] = {}

    async def ensure_local(self, manifest: AdapterManifest) -> None:
        """Make `manifest`'s content present in the local content store (single flight)."""
        sha = manifest.sha256
        if self.content.has(sha):
            return
        future = self._fetches.get(sha)
        if future is None:
            future = asyncio.ensure_future(self._fetch(manifest))
            self._fetches[sha] = future
            future.add_done_callback(lambda _: self._fetches.pop(sha, None))
        await asyncio.shield(future)

    async def _fetch(self, m: AdapterManifest) -> None:
        """Bring content local: shared tier first, then origin (one replica at a time)."""
        if await self._from_shared(m):
            return
        async with self.backend.fetch_lock(m.sha256) as mine:
            if not mine and await self._wait_for_shared(m):
                return
            t0 = time.perf_counter()
            cfg = self.config
            blob = await asyncio.to_thread(
                ing.read_origin, m.source, cfg.source_roots, self.content, cfg.max_adapter_bytes,
                cfg.hub_cache,
            )
            self.observer.lookup("origin", blob is not None)
            if blob is None:
                raise StoreUnavailableError(
                    f"The content of adapter `{m.name}` is not available right now.",
                    code="adapter_content_unavailable",
                )
            await asyncio.to_thread(self.content.install_blob, blob, m.sha256)
            self.observer.load("origin", time.perf_counter() - t0)
            await self.backend.put_blob(m.sha256, blob)

    async def _from_shared(self, m: AdapterManifest) -> bool:
        if not self.backend.shared:
            return False
        t0 = time.perf_counter()
        blob = await self.backend.get_blob(m.sha256)
        self.observer.lookup("redis", blob is not None)
        if blob is None:
            return False
        await asyncio.to_thread(self.content.install_blob, blob, m.sha256)
        self.observer.load("redis", time.perf_counter() - t0)
        return True

    async def _wait_for_shared(self, m: AdapterManifest) -> bool:
        """Another replica fetches from origin: wait for its blob to appear."""
        deadline = time.monotonic() + FETCH_WAIT_S
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            blob = await self.backend.get_blob(m.sha256)
            if blob is not None:
                await asyncio.to_thread(self.content.install_blob, blob, m.sha256)
                return True
        return False
