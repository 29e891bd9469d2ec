"""Fixtures: real redis-server processes on free ports, and replicas of the real server.

The tiny model and the uvicorn helpers come from tests/integration/server/conftest.py.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.server.conftest import (  # noqa: F401  (fixtures re-exported)
    RunningServer,
    TinyModel,
    free_port,
    start_server,
    tiny_model,
)
from tests.redis_binary import find_redis_server


class RedisProcess:
    """One redis-server without persistence: a restart comes back empty (the hard case)."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        self.proc = subprocess.Popen(
            [find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def redis_proc(tmp_path: Path) -> Iterator[RedisProcess]:
    proc = RedisProcess(tmp_path).start()
    yield proc
    proc.kill()


def wait_until(predicate, timeout_s: float = 5.0, what: str = "condition") -> float:
    """Poll `predicate` until true; returns the seconds it took."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - t0


KEYS = {"admin": ("ops", "admin"), "acme": ("acme", "user"), "beta": ("beta", "user")}


def write_keys(path: Path) -> Path:
    """An --api-keys file: key-<who> for each of KEYS (acme's stored as a sha256)."""
    import hashlib
    import json

    entries = []
    for who, (tenant, role) in KEYS.items():
        key = f"key-{who}"
        if who == "acme":
            entries.append({"key_sha256": hashlib.sha256(key.encode()).hexdigest(),
                            "tenant": tenant, "role": role})  # fmt: skip
        else:
            entries.append({"key": key, "tenant": tenant, "role": role})
    path.write_text(json.dumps({"keys": entries}))
    return path


def auth(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer key-{who}"}


def multipart_files(path: Path) -> list[tuple[str, tuple[str, bytes]]]:
    """httpx `files=` for an adapter directory (file names are paths inside it)."""
    return [("files", (p.relative_to(path).as_posix(), p.read_bytes()))
            for p in sorted(path.rglob("*")) if p.is_file()]  # fmt: skip
