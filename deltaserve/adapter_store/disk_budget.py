"""A disk budget for the local content directory: least recently used content goes first.

Only content that can come back is evicted: not leased by a request (its files may be open in
the engine), and fetchable again from the shared tier (Redis) or from its server-side origin
(the store decides, through `evictable`). Content that is the only copy (uploads without
Redis, --adapter-dir entries) is never evicted; it still counts against the budget.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from deltaserve.adapter_store.content import ContentStore

logger = logging.getLogger(__name__)


class DiskBudget:
    """Tracks use of `content` directories and trims them to `budget_bytes` (None: unlimited)."""

    def __init__(self, content: ContentStore, budget_bytes: int | None):
        self.content = content
        self.budget_bytes = budget_bytes
        self._last_use: dict[str, float] = {}
        self._sizes: dict[str, int] = {}

    def touch(self, sha: str) -> None:
        """`sha` was just used (acquired or installed)."""
        self._last_use[sha] = time.monotonic()

    def size(self, sha: str) -> int:
        size = self._sizes.get(sha)
        if size is None:
            path = self.content.path(sha)
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            self._sizes[sha] = size
        return size

    def resident(self) -> list[str]:
        """Content present on disk, least recently used first (unknown = oldest)."""
        shas = [p.name for p in self.content.content.iterdir() if p.is_dir()]
        return sorted(shas, key=lambda s: self._last_use.get(s, 0.0))

    def used_bytes(self) -> int:
        return sum(self.size(s) for s in self.resident())

    def trim(self, evictable: Callable[[str], bool]) -> list[str]:
        """Evict LRU evictable content until the directory fits; returns what was evicted."""
        if self.budget_bytes is None:
            return []
        resident = self.resident()
        used = sum(self.size(s) for s in resident)
        evicted = []
        for sha in resident:
            if used <= self.budget_bytes:
                break
            if not evictable(sha):
                continue
            used -= self.size(sha)
            self.content.remove(sha)
            self._sizes.pop(sha, None)
            self._last_use.pop(sha, None)
            evicted.append(sha)
        if evicted:
            logger.info("disk budget: evicted %d adapter(s), %d bytes in use", len(evicted), used)
        if used > self.budget_bytes:
            logger.warning("disk budget of %d bytes exceeded (%d): the rest is leased or the "
                           "only copy", self.budget_bytes, used)  # fmt: skip
        return evicted
