"""Bringing adapter files into a staging directory, then validating and content-addressing them.

These functions are synchronous (file I/O, tensor checks) and run in a worker thread. Sizes
are enforced while bytes arrive (uploads) or from `stat` before reading (server-side sources),
so an oversized adapter is refused (413) before it fills the disk.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from deltaserve.adapter_store.content import ContentStore, pack_dir, sha256_of
from deltaserve.adapter_store.errors import (
    AdapterTooLargeError,
    BadSourceError,
    InvalidAdapterError,
)
from deltaserve.adapter_store.paths import (
    MAX_FILES,
    check_relative_path,
    copy_tree,
    list_files,
    refuse_pickle,
    resolve_hub_source,
    resolve_source,
)
from deltaserve.adapter_store.validation import (
    BaseShapes,
    Limits,
    ValidatedAdapter,
    validate_adapter_dir,
)

logger = logging.getLogger(__name__)

CHUNK = 1 << 20


@dataclass(frozen=True)
class Ingested:
    """A validated adapter installed at its content address."""

    validated: ValidatedAdapter
    sha256: str
    nbytes: int
    path: Path
    blob: bytes


def stage_upload(files: Iterable[tuple[str, BinaryIO]], staged: Path, max_bytes: int) -> int:
    """Write uploaded (relative path, stream) pairs under `staged`; returns the byte total."""
    total = 0
    seen: set[str] = set()
    for raw_rel, stream in files:
        rel = check_relative_path(raw_rel)
        if rel in seen:
            raise InvalidAdapterError(f"File {rel!r} was uploaded twice.", code="invalid_path")
        if len(seen) >= MAX_FILES:
            raise InvalidAdapterError(f"More than {MAX_FILES} files in adapter.")
        seen.add(rel)
        target = staged / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        head = True
        with open(target, "wb") as out:
            while chunk := stream.read(CHUNK):
                if head:
                    refuse_pickle(rel, chunk[:8])
                    head = False
                total += len(chunk)
                if total > max_bytes:
                    raise AdapterTooLargeError(
                        f"The adapter is larger than this server's limit of {max_bytes} bytes."
                    )
                out.write(chunk)
        if head:
            refuse_pickle(rel, b"")
    if not seen:
        raise BadSourceError("No adapter files were uploaded (send them as `files`).", param="files")
    return total


def stage_source(
    source: str, roots: list[Path], staged: Path, max_bytes: int, hub_cache: Path | None = None
) -> int:
    """Copy a server-side adapter directory (inside an allowed root) under `staged`; or, with
    `hub_cache` (hub adapters allowed), the cached snapshot a hub id names."""
    hub = resolve_hub_source(source, hub_cache)
    real, root = hub if hub is not None else (resolve_source(source, roots), None)
    files = list_files(real, max_bytes, root)
    if not files:
        raise InvalidAdapterError(f"`source` {source!r} holds no files.", code="no_config")
    copy_tree(files, staged)
    return sum(p.stat().st_size for p in staged.rglob("*") if p.is_file())


def stage_directory(directory: Path, staged: Path, max_bytes: int) -> int:
    """Copy an operator's --adapter-dir entry (its own directory is the root)."""
    files = list_files(directory, max_bytes)
    copy_tree(files, staged)
    return sum(p.stat().st_size for p in staged.rglob("*") if p.is_file())


def ingest(
    content: ContentStore, staged: Path, shapes: BaseShapes | None, limits: Limits
) -> Ingested:
    """Validate a staged directory, pack it and install it at its content address."""
    validated = validate_adapter_dir(staged, shapes, limits)
    blob = pack_dir(staged)
    sha = sha256_of(blob)
    nbytes = sum(p.stat().st_size for p in staged.rglob("*") if p.is_file())
    path = content.install_dir(staged, sha)
    return Ingested(validated, sha, nbytes, path, blob)


def read_origin(
    source: str, roots: list[Path], content: ContentStore, max_bytes: int,
    hub_cache: Path | None = None,
) -> bytes | None:  # fmt: skip
    """Re-read a server-side origin (a path or hub id) as a blob (another replica registered
    it, or the local copy was evicted), if reachable."""
    if not source.startswith("path:"):
        return None
    try:
        with content.staging_dir() as staged:
            stage_source(source.removeprefix("path:"), roots, staged, max_bytes, hub_cache)
            return pack_dir(staged)
    except Exception as exc:  # unreachable or refused here: not an origin for this replica
        logger.warning("origin %s unavailable: %s", source, exc)
        return None
