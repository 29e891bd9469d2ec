"""Put a local directory into a Hugging Face hub cache the way huggingface_hub lays one out.

huggingface_hub fills its cache only by downloading, and tests have no hub. So this writes
what a download leaves behind (huggingface_hub's "Manage the cache" guide):

    <cache>/models--org--name/blobs/<content hash>           the file contents, once each
    <cache>/models--org--name/snapshots/<commit>/<path>      relative symlinks into blobs/
    <cache>/models--org--name/refs/<branch or tag>           the commit it points at

with huggingface_hub's own folder naming (`repo_folder_name`). The tests prove
huggingface_hub reads it back (`scan_cache_dir`, `snapshot_download(local_files_only=True)`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from huggingface_hub.file_download import repo_folder_name


def fake_commit(label: str) -> str:
    """A 40-hex commit sha, stable per label."""
    return hashlib.sha1(label.encode()).hexdigest()


def add_snapshot(
    cache: Path, repo_id: str, source: Path, commit: str, refs: tuple[str, ...] = ("main",)
) -> Path:
    """Cache every file under `source` as `repo_id` at `commit`; point `refs` at it."""
    repo = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    snapshot = repo / "snapshots" / commit
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            shutil.copyfile(path, blob)
        link = snapshot / path.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        ref_file = repo / "refs" / ref
        ref_file.parent.mkdir(parents=True, exist_ok=True)
        ref_file.write_text(commit)  # no newline, as huggingface_hub writes it
    return snapshot
