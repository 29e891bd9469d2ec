"""Fair scheduling end to end: one tenant floods a --max-num-seqs 4 server, another stays served.

Target (issue 14): with the fair (vtc) queue the quiet tenant's median latency under the flood
stays within 3× its solo latency, and the flood keeps at least its fair share of the engine.
The same setup under fcfs misses the target by far, which shows the test measures the queue.

Both latencies are measured here, on the same server, so a slow or loaded machine slows both;
a second round runs only when the first misses the wall-clock target (a machine hiccup), and
the per-tenant queue waits, measured in the same seconds, are compared by orders of magnitude.
The server is a subprocess (its GIL apart from the clients); the flood keeps 48 requests in
flight from one asyncio client, with staggered lengths as real traffic has (equal lengths
started together would finish in lockstep and free all 4 slots at once).
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.tenants.conftest import BASE_ID, ServerProcess, TinyModel

FLOOD_IN_FLIGHT = 48
FLOOD_TOKENS = (32, 96)
"""Range of the flood's max_tokens (uniform)."""
QUIET_TOKENS = 64
BODY = {"model": BASE_ID, "prompt": "Hello there", "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module", params=["vtc", "fcfs"])
def server(
    request: pytest.FixtureRequest, tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("fair")
    keys = tmp / "keys.json"
    keys.write_text(json.dumps({
        "keys": [{"key": "key-flood", "tenant": "flood"}, {"key": "key-quiet", "tenant": "quiet"}],
        "tenants": {"flood": {"weight": 1}, "quiet": {"weight": 1}},
    }))  # fmt: skip
    # vtc is what --queue-policy auto picks with --api-keys: test the default for it
    policy = "auto" if request.param == "vtc" else request.param
    srv = ServerProcess(tiny_model, tmp, "--api-keys", str(keys), "--max-num-seqs", "4",
                        "--queue-policy", policy).start()  # fmt: skip
    srv.policy = request.param  # type: ignore[attr-defined]
    yield srv
    srv.stop()


def metric(server: ServerProcess, series: str) -> float:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def quiet_latencies(server: ServerProcess, n: int) -> list[float]:
    out = []
    with httpx.Client(base_url=server.url, timeout=300) as client:
        for _ in range(n):
            t0 = time.perf_counter()
            r = client.post("/v1/completions", json={**BODY, "max_tokens": QUIET_TOKENS},
                            headers={"Authorization": "Bearer key-quiet"})  # fmt: skip
            assert r.status_code == 200, r.text
            out.append(time.perf_counter() - t0)
    return out


class Flood:
    """Keeps FLOOD_IN_FLIGHT requests of tenant `flood` in flight from a background loop."""

    def __init__(self, server: ServerProcess):
        self.server = server
        self.stop = threading.Event()
        self.codes: set[int] = set()
        self.rng = random.Random(0)
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _worker(self, client: httpx.AsyncClient) -> None:
        while not self.stop.is_set():
            body = {**BODY, "max_tokens": self.rng.randint(*FLOOD_TOKENS)}
            r = await client.post("/v1/completions", json=body,
                                  headers={"Authorization": "Bearer key-flood"})  # fmt: skip
            self.codes.add(r.status_code)

    async def _main(self) -> None:
        limits = httpx.Limits(max_connections=FLOOD_IN_FLIGHT + 4)
        async with httpx.AsyncClient(base_url=self.server.url, timeout=600,
                                     limits=limits) as client:  # fmt: skip
            await asyncio.gather(*(self._worker(client) for _ in range(FLOOD_IN_FLIGHT)))

    def __enter__(self) -> Flood:
        self.thread.start()
        deadline = time.monotonic() + 60
        while metric(self.server, "deltaserve_num_requests_waiting") < FLOOD_IN_FLIGHT - 8:
            assert time.monotonic() < deadline, "the flood never filled the queue"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=600)


def server_idle(server: ServerProcess) -> None:
    deadline = time.monotonic() + 300
    while metric(server, "deltaserve_num_requests_running") > 0:
        assert time.monotonic() < deadline, "the flood did not drain"
        time.sleep(0.05)


def generated(server: ServerProcess, tenant: str) -> float:
    return metric(server, f'deltaserve_tenant_generation_tokens_total{{tenant="{tenant}"}}')


def mean_queue_wait(server: ServerProcess, tenant: str) -> tuple[float, float]:
    """(sum, count) of the tenant's queue-wait histogram."""
    series = f'deltaserve_tenant_queue_wait_seconds_{{}}{{{{tenant="{tenant}"}}}}'
    return metric(server, series.format("sum")), metric(server, series.format("count"))


def one_round(server: ServerProcess, n: int) -> tuple[float, dict[str, float], dict[str, float]]:
    """(latency ratio, tokens served per tenant, mean queue wait per tenant) of one flood."""
    solo_samples = quiet_latencies(server, n)
    with Flood(server) as flood:
        tenants = ("flood", "quiet")
        before = {t: (generated(server, t), *mean_queue_wait(server, t)) for t in tenants}
        busy = statistics.median(quiet_latencies(server, n))
        after = {t: (generated(server, t), *mean_queue_wait(server, t)) for t in tenants}
    assert flood.codes == {200}
    served = {t: after[t][0] - before[t][0] for t in tenants}
    wait = {t: (after[t][1] - before[t][1]) / max(1.0, after[t][2] - before[t][2]) for t in tenants}
    server_idle(server)
    # solo latency sampled before and after the flood: slow drifts of a shared machine even out
    solo = statistics.median(solo_samples + quiet_latencies(server, n))
    print(f"{server.policy}: quiet solo median {solo * 1000:.0f} ms, under the flood "  # type: ignore[attr-defined]
          f"{busy * 1000:.0f} ms (x{busy / solo:.2f}); tokens {served}; mean queue wait {wait}")  # fmt: skip
    return busy / solo, served, wait


def test_quiet_tenant_latency_under_a_flood(server: ServerProcess) -> None:
    policy = server.policy  # type: ignore[attr-defined]
    quiet_latencies(server, 2)  # warm-up
    if policy == "fcfs":  # each quiet request waits behind the whole flood: 2 are enough
        ratio, _, wait = one_round(server, 2)
        assert ratio > 3.0, f"fcfs kept the quiet tenant at {ratio:.1f}x: the flood is too weak"
        assert wait["quiet"] > wait["flood"] / 5, wait
        return
    ratio, served, wait = one_round(server, 11)
    # Load-independent, both measured in the same seconds: the quiet tenant's requests wait
    # for about one free slot, the flood's behind the whole flood (fcfs: about the same).
    assert wait["quiet"] < wait["flood"] / 5, wait
    # the quiet tenant is not backlogged, so the flood keeps at least half of the service
    assert served["flood"] >= served["quiet"], served
    if ratio >= 3.0:  # wall-clock target: one more round tells a hiccup of a shared machine
        ratio = min(ratio, one_round(server, 11)[0])  # from a scheduling regression (fcfs: 40x+)
    assert ratio < 3.0, f"the quiet tenant is {ratio:.1f}x slower under the flood"
