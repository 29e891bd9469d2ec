"""SIGTERM on a real `deltaserve serve` process: in-flight requests finish, new ones are refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.server.conftest import BASE_ID, TinyModel, free_port


@pytest.fixture
def served(
    tiny_model: TinyModel, tmp_path, request: pytest.FixtureRequest
) -> Iterator[tuple[subprocess.Popen, str]]:
    """A `deltaserve serve` subprocess; the drain timeout comes from the test's parameter."""
    port = free_port()
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed below
    drain = str(getattr(request, "param", 30))
    env = {**os.environ, "DELTASERVE_DRAIN_TIMEOUT_S": drain, "DELTASERVE_DEVICE": "cpu"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deltaserve",
            "serve",
            "--model",
            str(tiny_model.base),
            "--adapter-dir",
            str(tiny_model.adapters),
            "--served-model-name",
            BASE_ID,
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError((tmp_path / "server.log").read_text())
        time.sleep(0.1)
    yield proc, url
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    log.close()


def sse_payloads(response: httpx.Response, on_event=None) -> list[str]:
    """The data payloads of a streamed response, calling on_event(count) after each."""
    events: list[str] = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            events.append(line[len("data: ") :])
            if on_event is not None:
                on_event(len(events))
    return events


def test_sigterm_drains_in_flight_requests(served: tuple[subprocess.Popen, str]) -> None:
    proc, url = served
    body = {
        "model": "alpha",
        "prompt": "Drain",
        "max_tokens": 400,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    refused_new = []

    def terminate_then_try_a_new_request(count: int) -> None:
        if count != 3:
            return
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        try:  # a new request during the drain is refused (closed listener or 503)
            r = httpx.post(f"{url}/v1/completions", json={"model": BASE_ID, "prompt": "x"})
            refused_new.append(r.status_code == 503)
        except httpx.TransportError:
            refused_new.append(True)

    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        events = sse_payloads(r, terminate_then_try_a_new_request)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["usage"]["completion_tokens"] == 400  # the in-flight stream ran to its end
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    assert refused_new == [True]
    assert proc.wait(timeout=30) in (0, -signal.SIGTERM)


@pytest.mark.parametrize("served", [0.5], indirect=True)
def test_drain_timeout_cuts_requests_cleanly(served: tuple[subprocess.Popen, str]) -> None:
    proc, url = served
    body = {
        "model": "beta",
        "prompt": "Long",
        "max_tokens": 1000,
        "n": 4,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }

    def terminate_early(count: int) -> None:
        if count == 3:
            proc.send_signal(signal.SIGTERM)

    started = time.monotonic()
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as r:
        events = sse_payloads(r, terminate_early)
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]  # the client is told why its stream ended early
    assert error["code"] == "shutdown" and error["type"] == "service_unavailable_error"
    assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    assert time.monotonic() - started < 15
