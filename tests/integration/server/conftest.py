"""Integration fixtures: a tiny real model + LoRA adapters, and real uvicorn servers over it.

The model is built once per session. Each test module starts its own server (the real
AsyncLLMEngine behind a real uvicorn on a free loopback port, in a background thread) with the
limits it needs, and shares it between its tests.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn
from fastapi import FastAPI

from deltaserve.engine.protocol import EngineStats
from deltaserve.entrypoints.app import create_app
from deltaserve.entrypoints.settings import Settings
from tests.integration.server.tiny_model import build_all

BASE_ID = "tiny"
ADAPTERS = ("alpha", "beta", "gamma")


@dataclass
class TinyModel:
    base: Path
    adapters: Path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    root = tmp_path_factory.mktemp("tiny-model")
    base, adapters = build_all(root, dict(zip(ADAPTERS, (4, 8, 16), strict=True)))
    return TinyModel(base, adapters)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningServer:
    """A live server: its URL, app (for the engine's stats) and an OpenAI client."""

    app: FastAPI
    server: uvicorn.Server
    thread: threading.Thread
    base_url: str

    @property
    def client(self) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.base_url}/v1", api_key="unused", max_retries=0, timeout=60
        )

    def stats(self) -> EngineStats:
        return self.app.state.server.engine.stats()

    def metrics_text(self) -> str:
        return httpx.get(f"{self.base_url}/metrics", timeout=10).text

    def wait_idle(self, timeout_s: float = 10.0) -> EngineStats:
        """Wait until the engine has nothing running or waiting and no KV blocks in use."""
        deadline = time.monotonic() + timeout_s
        while True:
            s = self.stats()
            if s.num_running == 0 and s.num_waiting == 0 and s.kv_cache_usage == 0:
                return s
            if time.monotonic() > deadline:
                raise AssertionError(f"engine not idle after {timeout_s}s: {s}")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_server(model: TinyModel, **overrides: object) -> RunningServer:
    """Start uvicorn in a thread with the real engine; returns once it accepts requests."""
    return serve(
        Settings(
            model=str(model.base),
            adapter_dir=model.adapters,
            served_model_name=BASE_ID,
            port=free_port(),
            device="cpu",
            **overrides,
        )
    )


def serve(settings: Settings) -> RunningServer:
    """Serve `settings` (port included) with uvicorn in a thread, as `start_server` does."""
    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    return RunningServer(app, server, thread, f"http://127.0.0.1:{settings.port}")


@pytest.fixture(scope="module")
def server(tiny_model: TinyModel) -> Iterator[RunningServer]:
    """A server with default limits, shared by a test module."""
    running = start_server(tiny_model, max_num_seqs=16)
    yield running
    running.stop()
