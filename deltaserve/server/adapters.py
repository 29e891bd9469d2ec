"""Which adapters exist and where their weights are: the server's view of the adapter registry.

`AdapterResolver` is the small interface the routes use; `DirectoryAdapterResolver` is the plain
implementation over `--adapter-dir` (one subdirectory per adapter). The full tenant-scoped,
tiered adapter store replaces it behind the same interface.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

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
