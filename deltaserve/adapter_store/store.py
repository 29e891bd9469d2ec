"""The adapter store: registration, tenancy, leases and the tier chain behind one façade.

`acquire` leases the version first, then makes its content local through the tiers
(tiers.py). Registrations validate in a worker thread,
publish to the backend, then swap the registry pointer; nothing is indexed before all that
succeeded. Writes need a healthy backend (503 otherwise); reads never wait on it.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from deltaserve.adapter_store import ingest as ing
from deltaserve.adapter_store.backend import InProcessBackend, StoreBackend
from deltaserve.adapter_store.content import ContentStore, pack_dir
from deltaserve.adapter_store.disk_budget import DiskBudget
from deltaserve.adapter_store.errors import (
    AdapterConflictError,
    AdapterForbiddenError,
    AdapterNotFoundError,
    AdapterQuotaError,
    AdapterTooLargeError,
    StoreError,
    StoreUnavailableError,
)
from deltaserve.adapter_store.manifest import SHARED, AdapterManifest
from deltaserve.adapter_store.paths import check_adapter_name, is_within
from deltaserve.adapter_store.registry import AdapterRegistry, Lease, Version
from deltaserve.adapter_store.store_config import StoreConfig
from deltaserve.adapter_store.sync import SyncMixin
from deltaserve.adapter_store.tiers import TierChain, TierObserver
from deltaserve.adapter_store.tombstones import Tombstones
from deltaserve.adapter_store.validation import BaseShapes

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caller:
    """Who asks: a tenant, and whether it is an admin (admins manage shared adapters)."""

    tenant: str
    admin: bool = False


def is_directory_entry(manifest: AdapterManifest) -> bool:
    """A shared adapter loaded from --adapter-dir (its delete leaves a tombstone)."""
    return manifest.shared and manifest.source == "adapter-dir"


class AdapterStore(SyncMixin):
    """One replica's adapter store."""

    def __init__(
        self,
        config: StoreConfig,
        backend: StoreBackend | None = None,
        shapes: BaseShapes | None = None,
        observer: TierObserver | None = None,
        drop_from_engine: Callable[[str], None] | None = None,
    ):
        self.config = config
        self.backend: StoreBackend = backend or InProcessBackend()
        self.shapes = shapes
        self.observer = observer or TierObserver()
        self.content = ContentStore(config.data_dir)
        self.registry = AdapterRegistry(on_retire=self._on_retire)
        self._drop_from_engine = drop_from_engine
        self._write_lock = asyncio.Lock()
        self.tiers = TierChain(self.content, self.backend, self.observer, config)
        self._local_only: dict[tuple[str, str], str] = {}
        """--adapter-dir entries (key → sha256): per replica, not published to the backend."""
        self.owner_limits: Callable[[str], tuple[int | None, int | None]] = lambda owner: (None, None)
        """owner → (max adapters, max total bytes) it may own (None: unlimited)."""
        self.disk = DiskBudget(self.content, config.max_local_content_bytes)
        self.tombstones = Tombstones(config.data_dir / "tombstones.json")
        """Deleted --adapter-dir names: not loaded again until re-registered."""

    # ---- lifecycle ------------------------------------------------------------------------
    async def start(self, adapter_dir: Path | None = None) -> None:
        """Register --adapter-dir as shared adapters, then connect the backend."""
        if adapter_dir is not None:
            await self.load_directory(Path(adapter_dir))
        await self.backend.start(self)

    async def close(self) -> None:
        await self.backend.close()
        if self.config.ephemeral:
            shutil.rmtree(self.config.data_dir, ignore_errors=True)

    @property
    def healthy(self) -> bool:
        return self.backend.healthy

    async def load_directory(self, root: Path) -> None:
        """Each valid subdirectory becomes a shared adapter; invalid ones are logged, skipped."""
        if not root.is_dir():
            logger.warning("--adapter-dir %s is not a directory", root)
            return
        for child in sorted(root.iterdir()):
            if not child.is_dir():
                continue
            if child.name in self.tombstones:
                logger.info("not loading %s from --adapter-dir: it was deleted", child.name)
                continue
            try:
                check_adapter_name(child.name)
                async with self._write_lock:
                    manifest = await self._ingest_and_install(
                        child.name, SHARED, "adapter-dir", publish=False,
                        stage=lambda staged, c=child: ing.stage_directory(
                            c, staged, self.config.max_adapter_bytes),
                    )  # fmt: skip
                self._local_only[manifest.key] = manifest.sha256
            except (StoreError, OSError, ValueError) as exc:
                logger.warning("skipping adapter %s from --adapter-dir: %s", child.name, exc)

    # ---- reads ----------------------------------------------------------------------------
    def list(self, tenant: str) -> list[AdapterManifest]:
        return self.registry.list(tenant)

    def get(self, name: str, tenant: str) -> AdapterManifest:
        version = self.registry.visible(name, tenant)
        if version is None:
            raise AdapterNotFoundError(name)
        return version.manifest

    async def acquire(self, name: str, tenant: str) -> Lease:
        """Lease the adapter `tenant` means by `name` with its content local; release it later."""
        version = self.registry.visible(name, tenant)
        if version is None:
            raise AdapterNotFoundError(name)
        lease = self.registry.lease(version)
        try:
            await self.tiers.ensure_local(version.manifest)
        except BaseException:
            lease.release()
            raise
        self.disk.touch(version.manifest.sha256)
        self.trim_disk()
        return lease

    # ---- writes ---------------------------------------------------------------------------
    async def register_upload(
        self, name: str, files: list[tuple[str, BinaryIO]], caller: Caller,
        shared: bool | None = None, replace: bool = False,
    ) -> AdapterManifest:  # fmt: skip
        """Register uploaded files (relative path, stream) under `name`."""
        max_bytes = self.config.max_adapter_bytes
        return await self._register(
            name, caller, shared, replace, "upload",
            lambda staged: ing.stage_upload(files, staged, max_bytes),
        )  # fmt: skip

    async def register_source(
        self, name: str, source: str, caller: Caller,
        shared: bool | None = None, replace: bool = False,
    ) -> AdapterManifest:  # fmt: skip
        """Register a server-side directory inside an allowed --adapter-source-root, or a hub
        id from the Hugging Face cache when the operator allows that."""
        cfg = self.config
        return await self._register(
            name, caller, shared, replace, f"path:{source}",
            lambda staged: ing.stage_source(
                source, cfg.source_roots, staged, cfg.max_adapter_bytes, cfg.hub_cache),
        )  # fmt: skip

    async def unregister(self, name: str, caller: Caller) -> AdapterManifest:
        """Remove `name` (for new requests at once), then wait for in-flight leases to end."""
        async with self._write_lock:
            version = self.registry.visible(name, caller.tenant)
            if version is None:
                raise AdapterNotFoundError(name)
            manifest = version.manifest
            if manifest.shared and not caller.admin:
                raise AdapterForbiddenError(f"`{name}` is a shared adapter; only admins may delete it.")
            self._require_healthy()
            await self.backend.delete(manifest)
            if is_directory_entry(manifest):
                self.tombstones.add(manifest.name, manifest.sha256)
            self.registry.remove(*manifest.key)
            self._local_only.pop(manifest.key, None)
        if not await self.registry.wait_idle(version, self.config.unregister_timeout_s):
            logger.warning("unregistered %s while %d request(s) still use it", name, version.leases)
        return manifest

    def _target_owner(self, name: str, caller: Caller, shared: bool | None) -> str:
        shared = caller.admin if shared is None else shared
        if shared and not caller.admin:
            raise AdapterForbiddenError("Only admins may register shared adapters.", param="shared")
        if not shared and not caller.admin and self.registry.get(SHARED, name) is not None:
            raise AdapterForbiddenError(
                f"`{name}` is a shared adapter; it cannot be overwritten.", param="name"
            )
        return SHARED if shared else caller.tenant

    def _require_healthy(self) -> None:
        if not self.backend.healthy:
            raise StoreUnavailableError(
                f"The shared adapter store is unavailable ({self.backend.outage}); retry later."
            )

    async def _register(
        self, name: str, caller: Caller, shared: bool | None, replace: bool, source: str,
        stage: Callable[[Path], int],
    ) -> AdapterManifest:  # fmt: skip
        check_adapter_name(name)
        async with self._write_lock:
            owner = self._target_owner(name, caller, shared)
            if self.registry.get(owner, name) is not None and not replace:
                raise AdapterConflictError(
                    f"An adapter named `{name}` exists; set `replace` to replace it.", param="name"
                )
            self._require_healthy()
            manifest = await self._ingest_and_install(name, owner, source, stage, publish=True)
            self._local_only.pop(manifest.key, None)
            if manifest.shared:
                self.tombstones.discard(name)
        return manifest

    async def _ingest_and_install(
        self, name: str, owner: str, source: str, stage: Callable[[Path], int], publish: bool
    ) -> AdapterManifest:
        with self.content.staging_dir() as staged:
            nbytes = await asyncio.to_thread(stage, staged)
            self._check_owner_quota(owner, name, nbytes)
            total = self.registry.total_bytes(excluding=(owner, name)) + nbytes
            if total > self.config.max_total_adapter_bytes:
                raise AdapterTooLargeError(
                    "The adapter store is full (--max-total-adapter-bytes "
                    f"{self.config.max_total_adapter_bytes})."
                )
            cfg = self.config
            got = await asyncio.to_thread(ing.ingest, self.content, staged, self.shapes, cfg.limits)
        v = got.validated
        manifest = AdapterManifest(
            name=name, kind=v.kind, base_model=cfg.base_model_id, sha256=got.sha256,
            bytes=got.nbytes, owner=owner, rank=v.rank, target_modules=v.target_modules,
            source=source,
        )  # fmt: skip
        if publish:
            try:
                await self.backend.put(manifest, got.blob)
            except BaseException:
                self._forget_content(got.sha256)
                raise
        self.registry.install(manifest, got.path)
        self.disk.touch(manifest.sha256)
        self.trim_disk()
        return manifest

    def _check_owner_quota(self, owner: str, name: str, nbytes: int) -> None:
        """A tenant's max_adapters / max_adapter_bytes (shared adapters are not counted)."""
        if owner == SHARED:
            return
        max_count, max_bytes = self.owner_limits(owner)
        owned = [v.manifest for v in self.registry.versions()
                 if v.manifest.owner == owner and v.manifest.name != name]  # fmt: skip
        if max_count is not None and len(owned) + 1 > max_count:
            raise AdapterQuotaError(
                f"Tenant `{owner}` may own at most {max_count} adapters; delete one first."
            )
        used = sum(m.bytes for m in owned)
        if max_bytes is not None and used + nbytes > max_bytes:
            raise AdapterQuotaError(
                f"Tenant `{owner}` may own at most {max_bytes} bytes of adapters ({used} in use, "
                f"this one has {nbytes}).", code="max_adapter_bytes_exceeded",
            )  # fmt: skip

    # ---- disk budget ----------------------------------------------------------------------
    def trim_disk(self) -> list[str]:
        """Evict least recently used content beyond --max-local-content-bytes."""
        leased = self.registry.leased_shas()
        users: dict[str, list[AdapterManifest]] = {}
        for v in self.registry.versions():
            users.setdefault(v.manifest.sha256, []).append(v.manifest)

        def evictable(sha: str) -> bool:
            if sha in leased:
                return False
            return all(self._refetchable(m) for m in users.get(sha, []))

        return self.disk.trim(evictable)

    def _refetchable(self, m: AdapterManifest) -> bool:
        """Content that another tier can bring back: its origin path, or the shared backend."""
        if m.source.startswith("path:"):
            return True
        return self.backend.shared and self._local_only.get(m.key) != m.sha256

    # ---- retirement -----------------------------------------------------------------------
    def _on_retire(self, version: Version) -> None:
        self._forget_content(version.manifest.sha256)

    def _forget_content(self, sha: str) -> None:
        """Drop content nobody registered or leased uses any more (engine pool and disk)."""
        if self.registry.uses_sha(sha):
            return
        if self._drop_from_engine is not None:
            self._drop_from_engine(sha)
        if is_within(self.content.path(sha), self.content.content):
            self.content.remove(sha)

    def tier_stats(self) -> dict[str, tuple[int, int]]:
        """(adapters, bytes) resident in the store's tiers: redis (shared) and origin (local)."""
        versions = self.registry.versions()
        local = {v.manifest.sha256: v.manifest.bytes for v in versions if self.content.has(v.manifest.sha256)}
        return {"redis": self.backend.resident(), "origin": (len(local), sum(local.values()))}

    def shareable(self) -> list[tuple[AdapterManifest, Callable[[], bytes]]]:
        """Registered adapters (not --adapter-dir ones) whose content is local, for re-seeding."""
        out = []
        for v in self.registry.versions():
            m = v.manifest
            if self._local_only.get(m.key) != m.sha256 and self.content.has(m.sha256):
                out.append((m, lambda p=self.content.path(m.sha256): pack_dir(p)))
        return out
