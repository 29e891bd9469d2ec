"""Which adapters exist and where their weights are: the server's view of the adapter registry.

`AdapterResolver` is the small interface the routes use. `StoreResolver` (what the app uses)
puts the tenant-scoped, tiered adapter store behind it and adds `acquire`: a lease that pins
one adapter version for a request's whole life. `DirectoryAdapterResolver` is the plain,
lease-less implementation over one directory (kept for tools and tests).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from deltaserve.adapter_store import errors as store_errors
from deltaserve.adapter_store.store import AdapterStore
from deltaserve.engine.adapters.base import AdapterRequest

logger = logging.getLogger(__name__)

ADAPTER_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
"""Valid adapter names (DESIGN §2); `.` and `..` are excluded separately."""

MANIFEST = "deltaserve_adapter.json"
PEFT_CONFIG = "adapter_config.json"


class AdapterNotFoundError(LookupError):
    """No adapter of that name is visible to the caller."""

    def __init__(self, name: str):
        super().__init__(f"adapter {name!r} not found")
        self.name = name


@dataclass(frozen=True)
class AdapterInfo:
    """What /v1/models shows about one adapter."""

    name: str
    kind: str
    created: int
    """Unix seconds (the directory's modification time)."""


class AdapterResolver(Protocol):
    """Lists adapters and resolves a `model` name to the engine's AdapterRequest."""

    def list(self, tenant: str | None = None) -> list[AdapterInfo]:
        """Every adapter `tenant` may use, sorted by name."""
        ...

    def resolve(self, name: str, tenant: str | None = None) -> AdapterRequest:
        """The adapter called `name`; raises AdapterNotFoundError if there is none."""
        ...


class AdapterLease(Protocol):
    """A request's hold on one adapter version (release exactly once, in `finally`)."""

    @property
    def adapter(self) -> AdapterRequest: ...

    def release(self) -> None: ...


@dataclass(frozen=True)
class StaticLease:
    """A lease over a resolver without reference counts (nothing to release)."""

    adapter: AdapterRequest

    def release(self) -> None:
        return None


async def acquire_adapter(resolver: AdapterResolver, name: str, tenant: str) -> AdapterLease:
    """A lease on `name` from any resolver; raises AdapterNotFoundError."""
    acquire = getattr(resolver, "acquire", None)
    if acquire is None:
        return StaticLease(resolver.resolve(name, tenant=tenant))
    return await acquire(name, tenant)


class StoreResolver:
    """The adapter store behind the AdapterResolver interface, plus leases."""

    def __init__(self, store: AdapterStore, default_tenant: str):
        self.store = store
        self.default_tenant = default_tenant

    def list(self, tenant: str | None = None) -> list[AdapterInfo]:
        return [
            AdapterInfo(name=m.name, kind=m.kind, created=int(m.created))
            for m in self.store.list(tenant or self.default_tenant)
        ]

    def resolve(self, name: str, tenant: str | None = None) -> AdapterRequest:
        version = self.store.registry.visible(name, tenant or self.default_tenant)
        if version is None:
            raise AdapterNotFoundError(name)
        return version.adapter

    async def acquire(self, name: str, tenant: str | None = None) -> AdapterLease:
        try:
            return await self.store.acquire(name, tenant or self.default_tenant)
        except store_errors.AdapterNotFoundError:
            raise AdapterNotFoundError(name) from None


def is_valid_adapter_name(name: str) -> bool:
    """True for names that are safe as a single path component and within the allowed set."""
    return bool(ADAPTER_NAME_RE.match(name)) and name not in {".", ".."}


def _adapter_kind(path: Path) -> str | None:
    """The adapter kind stored in `path`, or None when it is not an adapter directory."""
    manifest = path / MANIFEST
    if manifest.is_file():
        try:
            kind = json.loads(manifest.read_text()).get("kind")
        except (OSError, ValueError, AttributeError):
            logger.warning("ignoring adapter %s: unreadable %s", path.name, MANIFEST)
            return None
        return str(kind) if kind else None
    if (path / PEFT_CONFIG).is_file():
        return "lora"
    return None


def _content_uid(name: str, path: Path) -> str:
    """Identity of the weights: changes when a file in the directory is replaced."""
    digest = hashlib.sha256(str(path).encode())
    for entry in sorted(path.iterdir()):
        if entry.is_file():
            st = entry.stat()
            digest.update(f"{entry.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return f"{name}-{digest.hexdigest()[:16]}"


class DirectoryAdapterResolver:
    """Adapters = subdirectories of one directory, re-read on every call (cheap, always fresh)."""

    def __init__(self, root: Path | None):
        self.root = Path(root).resolve() if root is not None else None

    def _entries(self) -> list[tuple[str, Path, str]]:
        if self.root is None or not self.root.is_dir():
            return []
        found = []
        for child in sorted(self.root.iterdir()):
            if not child.is_dir() or not is_valid_adapter_name(child.name):
                continue
            kind = _adapter_kind(child)
            if kind is not None:
                found.append((child.name, child, kind))
        return found

    def list(self, tenant: str | None = None) -> list[AdapterInfo]:
        return [
            AdapterInfo(name=name, kind=kind, created=int(path.stat().st_mtime))
            for name, path, kind in self._entries()
        ]

    def resolve(self, name: str, tenant: str | None = None) -> AdapterRequest:
        if self.root is None or not is_valid_adapter_name(name):
            raise AdapterNotFoundError(name)
        path = self.root / name
        kind = _adapter_kind(path) if path.is_dir() else None
        if kind is None:
            raise AdapterNotFoundError(name)
        return AdapterRequest(name=name, path=str(path), kind=kind, uid=_content_uid(name, path))
