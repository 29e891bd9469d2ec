"""Where manifests and content blobs are shared: the backend interface and the embedded one.

The registry on each replica is the serving copy of the index (reads never wait on the
backend, so an outage of a shared backend does not stop serving what is already local). A
backend publishes this replica's changes and feeds other replicas' changes back through a
`BackendListener`. `InProcessBackend` (the embedded default) has nothing to share: the local
registry and content store are the whole truth.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from deltaserve.adapter_store.manifest import AdapterManifest

logger = logging.getLogger(__name__)


class BackendListener(Protocol):
    """What a backend tells the store (all called on the event loop)."""

    def on_put(self, manifest: AdapterManifest) -> None:
        """Another replica registered or replaced an adapter."""
        ...

    def on_delete(self, owner: str, name: str, sha256: str | None) -> None:
        """Another replica unregistered an adapter."""
        ...

    def on_resync(self, manifests: list[AdapterManifest]) -> None:
        """The backend's complete view (after a (re)connect): converge to it."""
        ...

    def on_tombstones(self, names: set[str]) -> None:
        """Deleted --adapter-dir names the backend remembers (after a (re)connect)."""
        ...

    def snapshot(self) -> list[tuple[AdapterManifest, Callable[[], bytes]]]:
        """This replica's shareable adapters with a way to read each blob (for re-seeding)."""
        ...


class StoreBackend(Protocol):
    """The shared half of the adapter store."""

    shared: bool
    """True when other replicas see what this one publishes (a remote tier exists)."""

    @property
    def healthy(self) -> bool:
        """False during an outage: registrations get 503, /ready reports it."""
        ...

    @property
    def outage(self) -> str | None:
        """Why the backend is unhealthy (None when healthy)."""
        ...

    async def start(self, listener: BackendListener) -> None: ...

    async def close(self) -> None: ...

    async def put(self, manifest: AdapterManifest, blob: bytes) -> None:
        """Publish a registration (blob first, then manifest + index, then the event)."""
        ...

    async def delete(self, manifest: AdapterManifest) -> None:
        """Publish an unregistration."""
        ...

    async def get_blob(self, sha256: str) -> bytes | None:
        """A content blob (refreshing its TTL), None when absent or unreachable."""
        ...

    async def put_blob(self, sha256: str, blob: bytes) -> None:
        """Share a blob fetched from origin (best effort)."""
        ...

    def fetch_lock(self, sha256: str) -> contextlib.AbstractAsyncContextManager[bool]:
        """Single flight across replicas: yields True for the one replica that should fetch."""
        ...

    def resident(self) -> tuple[int, int]:
        """(blobs, bytes) this replica knows to be in the shared tier."""
        ...


class InProcessBackend:
    """The embedded default: nothing shared, always healthy."""

    shared = False

    @property
    def healthy(self) -> bool:
        return True

    @property
    def outage(self) -> str | None:
        return None

    async def start(self, listener: BackendListener) -> None:
        logger.info("adapter store: embedded (in-process) backend")

    async def close(self) -> None:
        return None

    async def put(self, manifest: AdapterManifest, blob: bytes) -> None:
        return None

    async def delete(self, manifest: AdapterManifest) -> None:
        return None

    async def get_blob(self, sha256: str) -> bytes | None:
        return None

    async def put_blob(self, sha256: str, blob: bytes) -> None:
        return None

    @contextlib.asynccontextmanager
    async def fetch_lock(self, sha256: str) -> AsyncIterator[bool]:
        yield True

    def resident(self) -> tuple[int, int]:
        return (0, 0)
