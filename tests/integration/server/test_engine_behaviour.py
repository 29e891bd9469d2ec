"""What the server does to the engine: aborts on disconnect, mixed-adapter batches, metrics."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.server.conftest import ADAPTERS, BASE_ID, RunningServer

LONG = {"max_tokens": 900, "temperature": 0.0, "extra_body": {"ignore_eos": True}}


def metric_values(server: RunningServer) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(server.metrics_text())
        for s in family.samples
    }


def test_stream_disconnect_aborts_and_frees_the_engine(server: RunningServer) -> None:
    before = metric_values(server)
    stream = server.client.completions.create(
        model="alpha", prompt="Long story", stream=True, **LONG
    )
    received = [chunk for _, chunk in zip(range(5), stream, strict=False)]
    assert len(received) == 5
    stats = server.stats()
    assert stats.num_running == 1 and stats.kv_cache_usage > 0
    stream.close()  # the client goes away mid-stream
    started = time.monotonic()
    server.wait_idle(timeout_s=5)
    assert time.monotonic() - started < 5  # long before the 900 tokens would have finished
    after = metric_values(server)
    key = ("deltaserve_request_success_total", (("finished_reason", "abort"),))
    assert after[key] == before[key] + 1
    assert after[("deltaserve_num_requests_running", ())] == 0
    assert after[("deltaserve_kv_cache_usage_perc", ())] == 0


def test_plain_request_disconnect_aborts(server: RunningServer) -> None:
    body = {
        "model": BASE_ID,
        "prompt": "Wait",
        "max_tokens": 900,
        "temperature": 0,
        "ignore_eos": True,
    }
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{server.base_url}/v1/completions", json=body, timeout=httpx.Timeout(5, read=0.3)
        )
    server.wait_idle(timeout_s=5)


def test_different_adapters_share_a_batch(server: RunningServer) -> None:
    seen_batch_adapters = 0
    seen_running: set[str] = set()
    finished = threading.Event()

    def poll() -> None:
        nonlocal seen_batch_adapters
        while not finished.is_set():
            s = server.stats()
            seen_batch_adapters = max(seen_batch_adapters, s.last_batch_adapters)
            seen_running.update(s.running_adapters)
            time.sleep(0.002)

    def run(model: str) -> None:
        server.client.completions.create(
            model=model, prompt=f"Batch {model}", **{**LONG, "max_tokens": 300}
        )

    poller = threading.Thread(target=poll)
    poller.start()
    workers = [threading.Thread(target=run, args=(m,)) for m in (*ADAPTERS, BASE_ID)]
    for w in workers:
        w.start()
    # the gateway's info gauge names the adapters while they run
    info_seen = set()
    while any(w.is_alive() for w in workers):
        for family in text_string_to_metric_families(server.metrics_text()):
            if family.name == "deltaserve_lora_requests_info":
                label = family.samples[0].labels["running_lora_adapters"]
                info_seen.update(x for x in label.split(",") if x)
        time.sleep(0.02)
    finished.set()
    poller.join()
    assert seen_batch_adapters >= 2, "requests for different adapters never shared a step"
    assert seen_running == set(ADAPTERS)
    assert info_seen and info_seen <= set(ADAPTERS)
    server.wait_idle()


def test_counters_move_with_traffic(server: RunningServer) -> None:
    before = metric_values(server)
    r = server.client.chat.completions.create(
        model="beta",
        messages=[{"role": "user", "content": "count"}],
        max_tokens=7,
        extra_body={"ignore_eos": True},
    )
    after = metric_values(server)

    def delta(name: str, labels: tuple = ()) -> float:
        return after[(name, labels)] - before.get((name, labels), 0.0)

    assert delta("deltaserve_prompt_tokens_total") == r.usage.prompt_tokens
    assert delta("deltaserve_generation_tokens_total") == 7
    assert delta("deltaserve_request_success_total", (("finished_reason", "length"),)) == 1
    for hist in (
        "time_to_first_token_seconds",
        "e2e_request_latency_seconds",
        "time_per_output_token_seconds",
    ):
        assert delta(f"deltaserve_{hist}_count") == 1, hist
    assert (
        after[("deltaserve_engine_steps_total", ())] > before[("deltaserve_engine_steps_total", ())]
    )
    assert after[("deltaserve_adapters_resident", (("tier", "device"),))] >= 1
