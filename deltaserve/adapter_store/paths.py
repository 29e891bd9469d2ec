"""Untrusted names and paths: adapter names, relative file paths, server-side sources.

Every path an adapter brings (an uploaded file name, a server-side `source`, a path inside its
config) must resolve — symlinks included, via os.path.realpath + os.path.commonpath — inside the
root it is allowed to use. Pickle files are refused by name and by magic bytes, never opened
with a pickle reader. Sizes are summed from `stat` before anything is read (413 early).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from deltaserve.adapter_store.errors import (
    AdapterForbiddenError,
    AdapterTooLargeError,
    BadSourceError,
    InvalidAdapterError,
)
from deltaserve.adapter_store.hub_cache import (
    NotInHubCacheError,
    cached_snapshot,
    parse_hub_ref,
    repo_cache_dir,
)

logger = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
"""Adapter names and path components (DESIGN §2)."""
MAX_DEPTH = 4
"""Deepest relative path inside an adapter directory (proxy experts are one level down)."""
MAX_FILES = 256
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")
_PICKLE_PROTOCOLS = {2, 3, 4, 5}


def check_adapter_name(name: str) -> str:
    """`name` if it is a valid adapter name; else 422 (traversal names included)."""
    if not isinstance(name, str) or not NAME_RE.match(name) or name in (".", ".."):
        raise InvalidAdapterError(
            f"Invalid adapter name {name!r}: use 1-128 characters of [A-Za-z0-9._-].",
            code="invalid_name",
            param="name",
        )
    return name


def check_relative_path(rel: str) -> str:
    """A safe relative posix path of at most MAX_DEPTH valid components; else 422."""
    parts = rel.split("/") if isinstance(rel, str) else []
    bad = (
        not parts
        or len(parts) > MAX_DEPTH
        or "\\" in rel
        or "\x00" in rel
        or any(not NAME_RE.match(p) or p in (".", "..") for p in parts)
    )
    if bad:
        raise InvalidAdapterError(f"Invalid file path {rel!r} in adapter.", code="invalid_path")
    return "/".join(parts)


def is_within(path: str | Path, root: str | Path) -> bool:
    """True when realpath(path) is root or lies below realpath(root)."""
    real, base = os.path.realpath(path), os.path.realpath(root)
    try:
        return os.path.commonpath([real, base]) == base
    except ValueError:  # different drives / mixed absolute and relative
        return False


def resolve_source(source: str, roots: list[Path]) -> Path:
    """The real directory a server-side `source` names, if it lies inside an allowed root."""
    if not roots:
        raise AdapterForbiddenError(
            "Server-side adapter sources are disabled (no --adapter-source-root).",
            code="source_not_allowed",
            param="source",
        )
    if not isinstance(source, str) or not source or "\x00" in source:
        raise BadSourceError("`source` must be a server-side directory path.", param="source")
    if not any(is_within(source, root) for root in roots):
        raise AdapterForbiddenError(
            "`source` is not inside an allowed --adapter-source-root.",
            code="source_not_allowed",
            param="source",
        )
    real = Path(os.path.realpath(source))
    if not real.is_dir():
        raise BadSourceError(f"`source` {source!r} is not a directory.", param="source")
    return real


def resolve_hub_source(source: str, hub_cache: Path | None) -> tuple[Path, Path] | None:
    """(snapshot directory, its repo folder) for a `source` that is a cached hub id, else None.

    An existing path is never a hub id. `hub_cache` is None unless the operator allows hub
    adapters; the repo folder is the root the snapshot's symlinks (into blobs/) must stay in.
    """
    if not isinstance(source, str) or not source or "\x00" in source or os.path.exists(source):
        return None
    try:
        ref = parse_hub_ref(source)
    except ValueError as exc:
        raise BadSourceError(str(exc), param="source") from None
    if ref is None:
        return None
    if hub_cache is None:
        raise AdapterForbiddenError(
            f"`source` {source!r} is not a server-side directory, and this server does not "
            "register adapters by hub id (--allow-hub-adapters).",
            code="source_not_allowed",
            param="source",
        )
    try:
        return cached_snapshot(ref, hub_cache), repo_cache_dir(ref, hub_cache)
    except NotInHubCacheError as exc:
        raise BadSourceError(str(exc), code="not_in_hub_cache", param="source") from None


def refuse_pickle(rel: str, head: bytes) -> None:
    """422 for files that are (or claim to be) pickles / torch zip archives."""
    lower = rel.lower()
    magic_pickle = len(head) >= 2 and head[0] == 0x80 and head[1] in _PICKLE_PROTOCOLS
    torch_zip = head.startswith(b"PK\x03\x04")
    if lower.endswith(PICKLE_SUFFIXES) or (
        not lower.endswith(".safetensors") and (magic_pickle or torch_zip)
    ):
        raise InvalidAdapterError(
            f"{rel!r} looks like a pickle file; only safetensors weights are accepted "
            "(pickles are never loaded).",
            code="pickle_refused",
        )


def list_files(directory: Path, max_bytes: int, root: Path | None = None) -> dict[str, Path]:
    """rel path → real file for everything under `directory`, checked before any read.

    Symlinks must resolve inside `root` (default: `directory`; a hub snapshot's files link
    into its repo folder's blobs/); a symlinked directory is refused outright. The summed size
    must stay within `max_bytes` (413).
    """
    base = os.path.realpath(directory)
    allowed = os.path.realpath(root) if root is not None else base
    found: dict[str, Path] = {}
    total = 0
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        for d in dirnames:
            if os.path.islink(os.path.join(dirpath, d)):
                raise InvalidAdapterError(
                    f"Symlinked directory {d!r} in adapter is not allowed.", code="symlink"
                )
        for fname in filenames:
            full = os.path.join(dirpath, fname)
            rel = check_relative_path(os.path.relpath(full, base).replace(os.sep, "/"))
            if not is_within(full, allowed):
                raise InvalidAdapterError(
                    f"{rel!r} is a symlink that leaves the adapter directory.", code="symlink"
                )
            real = Path(os.path.realpath(full))
            if not real.is_file():
                raise InvalidAdapterError(f"{rel!r} is not a regular file.", code="invalid_path")
            total += real.stat().st_size
            if total > max_bytes:
                raise AdapterTooLargeError(
                    f"The adapter is larger than this server's limit of {max_bytes} bytes."
                )
            if len(found) >= MAX_FILES:
                raise InvalidAdapterError(f"More than {MAX_FILES} files in adapter.")
            found[rel] = real
    return found


def copy_tree(files: dict[str, Path], dest: Path) -> None:
    """Copy `files` (rel → real path) into `dest`, refusing pickles by magic on the way."""
    for rel, real in sorted(files.items()):
        with open(real, "rb") as f:
            refuse_pickle(rel, f.read(8))
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(real, target)
