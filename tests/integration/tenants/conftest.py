"""Fixtures of the tenant tests: the tiny model, and `deltaserve serve` as a real subprocess.

A subprocess server keeps its GIL apart from the test's clients (the fairness test measures
latencies under load) and can be restarted or sent SIGHUP like a deployed one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.integration.server.conftest import (  # noqa: F401  (fixture re-exported)
    BASE_ID,
    TinyModel,
    free_port,
    tiny_model,
)


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM if the test process dies (no orphans after a kill)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


class ServerProcess:
    """`python -m deltaserve serve` on a free port, logging to a file."""

    def __init__(self, model: TinyModel, workdir: Path, *args: str):
        self.model = model
        self.workdir = workdir
        self.args = list(args)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        log = open(self.workdir / f"server-{self.port}.log", "ab")  # noqa: SIM115 - owned by Popen
        cmd = [sys.executable, "-m", "deltaserve", "serve", "--model",
               str(self.model.base), "--served-model-name", BASE_ID, "--port", str(self.port),
               *self.args]  # fmt: skip
        env = {**os.environ, "DELTASERVE_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     preexec_fn=_die_with_parent)  # fmt: skip
        log.close()
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(self.log())
            time.sleep(0.1)

    def log(self) -> str:
        return (self.workdir / f"server-{self.port}.log").read_text(errors="replace")

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
