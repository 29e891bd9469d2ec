"""The tenant-scoped name index with reference-counted leases.

Names live per owner: (SHARED, name) for shared adapters, (tenant, name) for a tenant's own.
A tenant resolves a name to its own adapter first, then to a shared one; other tenants'
adapters are invisible (callers turn that into 404).

Every registration is an immutable `Version` (manifest + content-addressed directory).
Replacing an adapter swaps the index pointer to a new Version in one step on the event loop,
so a request holds either the old or the new weights for its whole life, never a mix. A
`Lease` pins a Version; once a Version is retired (replaced or unregistered) and its last
lease is released, `on_retire` lets the store drop it from the engine and from disk.
All methods run on the event loop (no locks needed).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from deltaserve.adapter_store.manifest import SHARED, AdapterManifest
from deltaserve.engine.adapters.base import AdapterRequest

logger = logging.getLogger(__name__)

Key = tuple[str, str]
"""(owner, name)."""


@dataclass(eq=False)
class Version:
    """One registered content of one name."""

    manifest: AdapterManifest
    path: Path
    leases: int = 0
    retired: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    """Set while no lease holds this version."""

    def __post_init__(self) -> None:
        self.idle.set()

    @property
    def adapter(self) -> AdapterRequest:
        """What the engine loads: uid = content sha256."""
        m = self.manifest
        return AdapterRequest(name=m.name, path=str(self.path), kind=m.kind, uid=m.sha256)


class Lease:
    """A request's hold on one adapter version; release exactly once (idempotent)."""

    def __init__(self, registry: AdapterRegistry, version: Version):
        self._registry = registry
        self.version = version
        self.released = False

    @property
    def adapter(self) -> AdapterRequest:
        return self.version.adapter

    @property
    def manifest(self) -> AdapterManifest:
        return self.version.manifest

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._registry._release(self.version)


class AdapterRegistry:
    """Name → current Version, per owner; leases; retirement callbacks."""

    def __init__(self, on_retire: Callable[[Version], None] | None = None):
        self._current: dict[Key, Version] = {}
        self._draining: set[Version] = set()
        """Retired versions that leases still hold."""
        self._on_retire = on_retire

    # ---- lookups --------------------------------------------------------------------------
    def get(self, owner: str, name: str) -> Version | None:
        return self._current.get((owner, name))

    def visible(self, name: str, tenant: str) -> Version | None:
        """The version `tenant` means by `name`: its own first, else a shared one."""
        return self._current.get((tenant, name)) or self._current.get((SHARED, name))

    def list(self, tenant: str) -> list[AdapterManifest]:
        """Every adapter `tenant` may use, by name (its own shadows a shared one)."""
        seen: dict[str, AdapterManifest] = {}
        for (owner, name), version in self._current.items():
            if owner == tenant or (owner == SHARED and name not in seen):
                seen[name] = version.manifest
        return [seen[n] for n in sorted(seen)]

    def versions(self) -> list[Version]:
        return list(self._current.values())

    def uses_sha(self, sha: str) -> bool:
        """True if a current version or a leased retired one needs this content."""
        live = [*self._current.values(), *self._draining]
        return any(v.manifest.sha256 == sha for v in live)

    def leased_shas(self) -> set[str]:
        """Content some request holds right now (current or retired versions)."""
        live = [*self._current.values(), *self._draining]
        return {v.manifest.sha256 for v in live if v.leases > 0}

    def total_bytes(self, excluding: Key | None = None) -> int:
        return sum(v.manifest.bytes for k, v in self._current.items() if k != excluding)

    # ---- changes --------------------------------------------------------------------------
    def install(self, manifest: AdapterManifest, path: Path) -> Version:
        """Make `manifest` the current version of its name (atomic pointer swap)."""
        new = Version(manifest, path)
        old = self._current.get(manifest.key)
        self._current[manifest.key] = new
        if old is not None and old is not new:
            self._retire(old)
        logger.info(
            "%s adapter %s/%s sha256=%s",
            "replaced" if old else "registered", manifest.owner or "shared", manifest.name,
            manifest.sha256[:12],
        )
        return new

    def remove(self, owner: str, name: str) -> Version | None:
        """Unindex a name: new requests no longer find it; leases keep it alive."""
        old = self._current.pop((owner, name), None)
        if old is not None:
            self._retire(old)
            logger.info("unregistered adapter %s/%s", owner or "shared", name)
        return old

    def lease(self, version: Version) -> Lease:
        version.leases += 1
        version.idle.clear()
        return Lease(self, version)

    async def wait_idle(self, version: Version, timeout_s: float) -> bool:
        """Wait for the last lease on `version`; False if `timeout_s` passed first."""
        try:
            await asyncio.wait_for(version.idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def _release(self, version: Version) -> None:
        version.leases -= 1
        if version.leases <= 0:
            version.leases = 0
            version.idle.set()
            if version.retired:
                self._draining.discard(version)
                self._notify(version)

    def _retire(self, version: Version) -> None:
        version.retired = True
        if version.leases == 0:
            self._notify(version)
        else:
            self._draining.add(version)

    def _notify(self, version: Version) -> None:
        if self._on_retire is not None:
            try:
                self._on_retire(version)
            except Exception:  # cleanup must never break serving
                logger.exception("adapter retirement callback failed")
