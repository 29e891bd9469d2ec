"""Converging this replica's registry with the shared backend (events and full resyncs).

Other replicas' registrations arrive as manifests only; their content is fetched lazily, on
the first request (store.py's tier chain). --adapter-dir entries are per replica and stay
unless the backend holds a different version under the same shared name (the backend wins).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from deltaserve.adapter_store.manifest import SHARED, AdapterManifest

if TYPE_CHECKING:
    from deltaserve.adapter_store.content import ContentStore
    from deltaserve.adapter_store.registry import AdapterRegistry
    from deltaserve.adapter_store.tombstones import Tombstones

logger = logging.getLogger(__name__)


class SyncMixin:
    """BackendListener half of AdapterStore."""

    registry: AdapterRegistry
    content: ContentStore
    _local_only: dict[tuple[str, str], str]
    tombstones: Tombstones

    def on_put(self, manifest: AdapterManifest) -> None:
        if manifest.shared:
            self.tombstones.discard(manifest.name)  # re-registered somewhere
        current = self.registry.get(*manifest.key)
        if current is not None and current.manifest.sha256 == manifest.sha256:
            return
        self.registry.install(manifest, self.content.path(manifest.sha256))
        self._local_only.pop(manifest.key, None)

    def on_delete(self, owner: str, name: str, sha256: str | None) -> None:
        current = self.registry.get(owner, name)
        if current is None or (sha256 and current.manifest.sha256 != sha256):
            return  # already gone, or replaced since: a newer put wins
        if owner == SHARED and current.manifest.source == "adapter-dir":
            self.tombstones.add(name, current.manifest.sha256)
        self.registry.remove(owner, name)
        self._local_only.pop((owner, name), None)

    def on_resync(self, manifests: list[AdapterManifest]) -> None:
        remote = {m.key: m for m in manifests}
        for m in remote.values():
            self.on_put(m)
        for version in self.registry.versions():
            key = version.manifest.key
            if key in remote:
                continue
            if self._local_only.get(key) == version.manifest.sha256:
                continue  # this replica's --adapter-dir entry
            self.registry.remove(*key)
        logger.info("adapter registry resynchronised: %d shared entries", len(remote))

    def on_tombstones(self, names: set[str]) -> None:
        """The backend's deleted --adapter-dir names: drop and remember this replica's entries."""
        for name in names:
            self.tombstones.add(name)
            current = self.registry.get(SHARED, name)
            if current is not None and self._local_only.get((SHARED, name)) == current.manifest.sha256:
                self.registry.remove(SHARED, name)
                self._local_only.pop((SHARED, name), None)

    def snapshot(self) -> list[tuple[AdapterManifest, Callable[[], bytes]]]:
        return self.shareable()  # type: ignore[attr-defined]
