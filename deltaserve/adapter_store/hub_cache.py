"""Hugging Face hub ids (`org/name`, `org/name@revision`) found in the local hub cache.

deltaserve never downloads. A hub id names a snapshot that huggingface_hub (`hf download`,
`from_pretrained`) already put in the cache; it is found there by huggingface_hub's own
`snapshot_download(..., local_files_only=True)`, so the cache layout
(`models--org--name/{refs,snapshots,blobs}`) and its environment variables (HF_HOME,
HF_HUB_CACHE; read by huggingface_hub itself) are exactly huggingface_hub's. With
`local_files_only` no request leaves the machine, whether HF_HUB_OFFLINE is set or not.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils import validate_repo_id

REVISION_RE = re.compile(r"^(?!/)(?!.*\.\.)[\w.\-/]{1,256}$")
"""Branch, tag or commit sha. No `..` and no leading `/`: huggingface_hub joins a revision
into a path under the cache (`refs/<revision>`), and tenants choose adapter sources."""


@dataclass(frozen=True)
class HubRef:
    """A model repository on the hub and the revision wanted (None: `main`)."""

    repo_id: str
    revision: str | None = None


class NotInHubCacheError(FileNotFoundError):
    """The hub id (at that revision) is not in the local hub cache, which is never filled here."""

    def __init__(self, ref: HubRef, cache_dir: Path):
        revision = ref.revision or "main"
        super().__init__(
            f"`{ref.repo_id}` (revision {revision}) is not in the Hugging Face cache "
            f"{cache_dir}, and deltaserve never downloads: fetch it first (e.g. `hf download "
            f"{ref.repo_id} --revision {revision}`), point HF_HUB_CACHE or HF_HOME at the cache "
            "that holds it, or give a local directory."
        )
        self.ref = ref
        self.cache_dir = cache_dir


def parse_hub_ref(text: str, revision: str | None = None) -> HubRef | None:
    """The hub id `text` names (`name`, `org/name`, either with `@revision`), else None.

    Paths (absolute, `./`, `~`, more than one `/`) are never hub ids. `revision` (a --revision
    flag) applies when `text` carries none; two different revisions are a ValueError, and so is
    a revision that is not a plain ref or sha.
    """
    repo_id, at, own_revision = text.partition("@")
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return None
    if at and revision and own_revision != revision:
        raise ValueError(f"`{text}` names revision {own_revision!r} but --revision is {revision!r}.")
    chosen = own_revision if at else revision
    if chosen is not None and not REVISION_RE.match(chosen):
        raise ValueError(f"Invalid hub revision {chosen!r}: use a branch, tag or commit sha.")
    return HubRef(repo_id, chosen or None)


def default_cache_dir() -> Path:
    """huggingface_hub's cache: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub."""
    return Path(constants.HF_HUB_CACHE)


def repo_cache_dir(ref: HubRef, cache_dir: Path | None = None) -> Path:
    """The repository's folder in the cache (`models--org--name`): its snapshots link into it."""
    cache = cache_dir or default_cache_dir()
    return cache / repo_folder_name(repo_id=ref.repo_id, repo_type="model")


def cached_snapshot(ref: HubRef, cache_dir: Path | None = None) -> Path:
    """The snapshot directory of `ref` in the hub cache; NotInHubCacheError when absent."""
    cache = cache_dir or default_cache_dir()
    try:
        found = snapshot_download(
            ref.repo_id, revision=ref.revision, cache_dir=cache, local_files_only=True
        )
    except LocalEntryNotFoundError as exc:  # incomplete snapshots included
        raise NotInHubCacheError(ref, cache) from exc
    snapshot = Path(os.path.realpath(found))
    # A ref file is plain text naming a commit: whatever it says, stay inside the repo folder.
    if not snapshot.is_relative_to(os.path.realpath(repo_cache_dir(ref, cache))):
        raise NotInHubCacheError(ref, cache)
    return snapshot


@dataclass(frozen=True)
class ResolvedModel:
    """Where a --model value points: a directory, and the hub id it came from (if any)."""

    path: Path
    hub_ref: HubRef | None


def resolve_model(
    model: str, revision: str | None = None, cache_dir: Path | None = None
) -> ResolvedModel:
    """A local directory wins; else a hub id is looked up in the cache; else the path as given.

    `revision` only applies to hub ids (as with vLLM, a local directory has no revisions).
    """
    if Path(model).is_dir():
        return ResolvedModel(Path(model), None)
    ref = parse_hub_ref(model, revision)
    if ref is None:  # a path that does not exist: the engine reports it as before
        return ResolvedModel(Path(model), None)
    return ResolvedModel(cached_snapshot(ref, cache_dir), ref)
