"""Content addressing: an adapter directory packed into one blob, and the local content store.

The blob format is deterministic (sorted paths), so the same files always give the same
sha256 — the adapter's identity (engine uid, Redis blob key)::

    b"DSADAPT1" | u64 little-endian header length | JSON [[rel_path, size], ...] | file bytes

Materialised adapters live in `<data_dir>/content/<sha256>/`, created by an atomic rename of
a fully written staging directory, so a reader sees a complete adapter or none.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path

from deltaserve.adapter_store.errors import InvalidAdapterError
from deltaserve.adapter_store.paths import check_relative_path

logger = logging.getLogger(__name__)

MAGIC = b"DSADAPT1"
MAX_INDEX_BYTES = 1 << 20


def pack_dir(directory: Path) -> bytes:
    """The blob of every regular file under `directory` (already validated)."""
    files: list[tuple[str, bytes]] = []
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            files.append((path.relative_to(directory).as_posix(), path.read_bytes()))
    files.sort()
    index = json.dumps([[rel, len(data)] for rel, data in files]).encode()
    return b"".join([MAGIC, struct.pack("<Q", len(index)), index, *(d for _, d in files)])


def sha256_of(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def unpack_blob(blob: bytes, dest: Path) -> None:
    """Write a blob's files under `dest`; every path and size is checked first."""
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 8:
        raise InvalidAdapterError("not an adapter blob")
    (n,) = struct.unpack_from("<Q", blob, len(MAGIC))
    start = len(MAGIC) + 8
    if n > MAX_INDEX_BYTES or start + n > len(blob):
        raise InvalidAdapterError("adapter blob index is corrupt")
    index = json.loads(blob[start : start + n])
    offset = start + n
    entries = [(check_relative_path(str(rel)), int(size)) for rel, size in index]
    if sum(size for _, size in entries) != len(blob) - offset or any(s < 0 for _, s in entries):
        raise InvalidAdapterError("adapter blob is truncated")
    for rel, size in entries:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blob[offset : offset + size])
        offset += size


class ContentStore:
    """Content-addressed adapter directories on local disk."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.content = self.root / "content"
        self.staging = self.root / "staging"
        self.content.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(parents=True, exist_ok=True)

    def path(self, sha: str) -> Path:
        return self.content / sha

    def has(self, sha: str) -> bool:
        return self.path(sha).is_dir()

    @contextlib.contextmanager
    def staging_dir(self) -> Iterator[Path]:
        """A fresh empty directory, removed on exit unless it was installed."""
        path = self.staging / uuid.uuid4().hex
        path.mkdir()
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def install_dir(self, staged: Path, sha: str) -> Path:
        """Move a complete staged directory to its content address (no-op if present)."""
        target = self.path(sha)
        if not target.exists():
            try:
                os.rename(staged, target)
            except OSError:  # another install won the race: same content, keep theirs
                if not target.exists():
                    raise
        return target

    def install_blob(self, blob: bytes, sha: str) -> Path:
        """Verify and materialise a blob fetched from elsewhere (Redis, origin)."""
        if sha256_of(blob) != sha:
            raise InvalidAdapterError(f"adapter content does not match its sha256 {sha}")
        if self.has(sha):
            return self.path(sha)
        with self.staging_dir() as staged:
            unpack_blob(blob, staged)
            return self.install_dir(staged, sha)

    def remove(self, sha: str) -> None:
        """Forget a materialised adapter (nobody registered uses it any more)."""
        target = self.path(sha)
        if target.exists():
            trash = self.staging / f"trash-{uuid.uuid4().hex}"
            with contextlib.suppress(OSError):
                os.rename(target, trash)
                shutil.rmtree(trash, ignore_errors=True)
