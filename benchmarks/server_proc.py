"""An HTTP server (deltaserve or vLLM) as a subprocess of the benchmark: started in its own
process group with its output in a log file, waited for until it answers, and always stopped
— by the `with` block's exit, by atexit (SIGTERM included, see exit_on_sigterm) and, should the
benchmark be killed outright, by the kernel (PR_SET_PDEATHSIG)."""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx


class ServerFailed(RuntimeError):
    """The server exited or did not become ready; the message ends with its log's tail."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 15) -> list[str]:
    """The last `lines` non-empty lines of the server's log."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


def failure(what: str, log: Path) -> ServerFailed:
    """ServerFailed whose first line ends with the log's last line (usually the error)."""
    tail = log_tail(log)
    last = tail[-1].strip() if tail else "empty log"
    return ServerFailed(f"{what}: {last} (log {log})\n" + "\n".join(tail))


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGKILL it when the benchmark process dies, even by
    SIGKILL, where no atexit runs."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def exit_on_sigterm() -> None:
    """Make SIGTERM raise SystemExit, so `with` blocks and atexit stop the servers (Python's
    default SIGTERM ends the process without running either)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


class ServerProcess:
    """`with ServerProcess(cmd, port, log) as srv:` — ready on exit of __enter__, killed after."""

    def __init__(self, cmd: list[str], port: int, log: Path, env: dict[str, str] | None = None,
                 ready_path: str = "/v1/models", start_timeout: float = 300.0):
        self.cmd, self.port, self.log, self.env = cmd, port, log, env
        self.ready_path, self.start_timeout = ready_path, start_timeout
        self.proc: subprocess.Popen | None = None
        self.base_url = f"http://127.0.0.1:{port}"

    def __enter__(self) -> ServerProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:
            # Own session: stop() signals the whole group (uvicorn workers, engine processes).
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT,
                                         env=self.env, start_new_session=True,
                                         preexec_fn=_die_with_parent)
        atexit.register(self.stop)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise failure(f"server exited with code {self.proc.returncode} before it was "
                              "ready", self.log)
            try:
                if httpx.get(self.base_url + self.ready_path, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise failure(f"server not ready after {self.start_timeout:.0f} s", self.log)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it after `grace` seconds; idempotent."""
        proc, self.proc = self.proc, None
        atexit.unregister(self.stop)
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # children the leader left behind in its group
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
