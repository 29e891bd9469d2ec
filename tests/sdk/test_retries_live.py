"""Retries against the real server: a full engine queue answers 429; the client retries with
backoff and raises RateLimitError when retries run out, and succeeds once there is room. A
closed port gives APIConnectionError after the same retries. Attempts are counted by an httpx
event hook on the client's own connection pool."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from deltaserve_client import APIConnectionError, Client, Completion, RateLimitError

from tests.integration.adapter_store.conftest import write_keys
from tests.integration.server.conftest import free_port
from tests.sdk.conftest import (
    BASE_ID,
    AttemptCounter,
    RunningServer,
    TinyModel,
    sdk_client,
    start_server,
)

BLOCK = {"max_tokens": 1000, "temperature": 0.0, "ignore_eos": True}
"""Longer than the test needs: the blocker is closed (and aborted) before it would finish."""


@pytest.fixture(scope="module")
def one_slot(tiny_model: TinyModel, tmp_path_factory) -> Iterator[RunningServer]:
    """One running and one waiting request fill this server."""
    keys = write_keys(tmp_path_factory.mktemp("sdk-queue") / "keys.json")
    server = start_server(tiny_model, api_keys=keys, max_num_seqs=1, max_waiting=1)
    yield server
    server.stop()


def wait_for(predicate, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def counted(server: RunningServer, counter: AttemptCounter, **kwargs: object) -> Client:
    return sdk_client(server, "acme", http_client=httpx.Client(event_hooks={"response": [counter]}),
                      **kwargs)  # fmt: skip


def test_full_queue_is_retried_then_raised_then_admitted(one_slot: RunningServer) -> None:
    results: list[Completion] = []
    with sdk_client(one_slot, "acme") as acme, sdk_client(one_slot, "beta") as beta:
        blocker = acme.completions.create(BASE_ID, "block", stream=True, **BLOCK)  # running
        queued = threading.Thread(
            target=lambda: results.append(beta.completions.create(BASE_ID, "q", max_tokens=4))
        )
        queued.start()
        wait_for(lambda: one_slot.stats().num_waiting == 1)

        counter = AttemptCounter()
        with counted(one_slot, counter) as probe:
            with pytest.raises(RateLimitError) as full:
                probe.completions.create(BASE_ID, "x", max_tokens=2)  # default: 2 retries
            assert counter.statuses == [429, 429, 429]
            assert (full.value.status_code, full.value.code) == (429, "queue_full")
            counter.statuses.clear()
            with pytest.raises(RateLimitError):
                probe.completions.create(BASE_ID, "x", max_tokens=2, max_retries=0)
            assert counter.statuses == [429]

        # Retried until admitted: closing the running stream (on the first 429) makes room.
        first_429 = threading.Event()
        gate = AttemptCounter()
        hooks = httpx.Client(event_hooks={"response": [gate, lambda r: first_429.set()]})
        with sdk_client(one_slot, "acme", http_client=hooks, max_retry_delay=0.2) as patient:
            worker = threading.Thread(target=lambda: results.append(
                patient.completions.create(BASE_ID, "x", max_tokens=2, max_retries=500)))
            worker.start()  # fmt: skip
            assert first_429.wait(60)
            blocker.close()
            worker.join(120)
        queued.join(120)
        hooks.close()
    assert gate.statuses[0] == 429 and gate.statuses[-1] == 200 and set(gate.statuses) == {429, 200}
    assert sorted(r.usage.completion_tokens for r in results) == [2, 4]
    one_slot.wait_idle(30)


def test_connection_errors_are_retried_then_raised() -> None:
    attempts: list[httpx.Request] = []
    hooks = httpx.Client(event_hooks={"request": [attempts.append]})
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with Client(url, http_client=hooks, max_retries=3, initial_retry_delay=0.01) as client:
        with pytest.raises(APIConnectionError) as refused:
            client.models.list()
    hooks.close()
    assert len(attempts) == 4 and refused.value.status_code is None
    assert "Connection" in str(refused.value)
