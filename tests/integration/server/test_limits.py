"""Server limits against the real engine: queue full → 429, body size, n and max_tokens caps."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.integration.server.conftest import BASE_ID, RunningServer, TinyModel, start_server

LONG = {"max_tokens": 600, "temperature": 0.0, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def limited(tiny_model: TinyModel) -> Iterator[RunningServer]:
    running = start_server(
        tiny_model,
        max_num_seqs=1,
        max_waiting=1,
        max_body_bytes=4096,
        max_n=2,
        max_tokens_limit=700,
    )
    yield running
    running.stop()


def wait_for(predicate, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.002)


def test_full_queue_gets_429(limited: RunningServer) -> None:
    results: list[str] = []

    def run(prompt: str) -> None:
        r = limited.client.completions.create(model=BASE_ID, prompt=prompt, **LONG)
        results.append(r.choices[0].finish_reason)

    running = threading.Thread(target=run, args=("first",))
    running.start()
    wait_for(lambda: limited.stats().num_running == 1)
    waiting = threading.Thread(target=run, args=("second",))
    waiting.start()
    wait_for(lambda: limited.stats().num_waiting == 1)
    with pytest.raises(openai.RateLimitError) as exc:
        limited.client.completions.create(model=BASE_ID, prompt="third", max_tokens=2)
    assert exc.value.status_code == 429 and exc.value.code == "queue_full"
    running.join()
    waiting.join()
    assert results == ["length", "length"]  # the admitted requests were not disturbed
    limited.wait_idle()


def test_body_n_and_max_tokens_limits(limited: RunningServer) -> None:
    r = httpx.post(
        f"{limited.base_url}/v1/completions", json={"model": BASE_ID, "prompt": "x" * 5000}
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    with pytest.raises(openai.BadRequestError) as n_exc:
        limited.client.completions.create(model=BASE_ID, prompt="x", n=3, max_tokens=1)
    assert n_exc.value.param == "n"
    with pytest.raises(openai.BadRequestError) as mt_exc:
        limited.client.completions.create(model=BASE_ID, prompt="x", max_tokens=701)
    assert "700" in mt_exc.value.message and mt_exc.value.param == "max_tokens"
    ok = limited.client.completions.create(
        model=BASE_ID, prompt="x", n=2, max_tokens=3, extra_body={"ignore_eos": True}
    )
    assert len(ok.choices) == 2
