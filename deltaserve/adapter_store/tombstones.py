"""Tombstones: --adapter-dir adapters that were deleted stay deleted across restarts.

An --adapter-dir entry is re-read from disk at every start, so deleting it through the API
would not last without a record. The record lives in `<data_dir>/tombstones.json` (this
replica) and in the Redis hash `deltaserve:adapter:tombstones` (every replica; see
redis_backend.py). Registering the name again as a shared adapter removes the tombstone.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

logger = logging.getLogger(__name__)


class Tombstones:
    """Names of deleted --adapter-dir adapters, persisted as JSON {name: {sha256, deleted}}."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._entries: dict[str, dict[str, object]] = {}
        try:
            data = json.loads(self.path.read_text())
            if isinstance(data, dict):
                self._entries = {str(k): v for k, v in data.items() if isinstance(v, dict)}
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable tombstones %s: %s", self.path, exc)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def names(self) -> set[str]:
        return set(self._entries)

    def add(self, name: str, sha256: str | None = None) -> None:
        if name in self._entries:
            return
        self._entries[name] = {"sha256": sha256, "deleted": time.time()}
        self._save()

    def discard(self, name: str) -> None:
        if self._entries.pop(name, None) is not None:
            self._save()

    def _save(self) -> None:
        """Write a temporary file and rename it: a crash leaves the old or the new list."""
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(self._entries, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError as exc:
            logger.warning("could not persist tombstones to %s: %s", self.path, exc)
