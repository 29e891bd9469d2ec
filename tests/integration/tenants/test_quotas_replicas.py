"""Tenant quotas over two real server replicas sharing one real Redis.

Every tenant below has its own quota so the tests do not share counters. A sliding minute is
the window: each test runs well inside it (it starts away from a minute boundary).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deltaserve.engine.fairness import VTCPolicy
from deltaserve.tenancy.ratelimit_redis import RedisLimiter
from deltaserve.tenancy.tenants import TenantQuota
from tests.integration.adapter_store.conftest import (
    RedisProcess,
    RunningServer,
    TinyModel,
    start_server,
    wait_until,
)
from tests.integration.server.conftest import BASE_ID

TENANTS = {
    "acme": {"requests_per_minute": 4, "weight": 2},
    "beta": {"tokens_per_minute": 1000, "max_concurrent_requests": 8},
    "gamma": {"requests_per_minute": 3},
    "delta": {"requests_per_minute": 5},
}
PROMPT = {"model": BASE_ID, "prompt": "Hello", "max_tokens": 3, "temperature": 0, "ignore_eos": True}


def write_keys(path: Path) -> Path:
    keys = [{"key": "key-admin", "tenant": "ops", "role": "admin"}]
    keys += [{"key": f"key-{t}", "tenant": t, "role": "user"} for t in TENANTS]
    path.write_text(json.dumps({"keys": keys, "tenants": TENANTS}))
    return path


def auth(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer key-{who}"}


def away_from_minute_boundary() -> None:
    """Counts straddling two window buckets decay while a test runs: start early in one."""
    if time.time() % 60 > 40:
        time.sleep(60.5 - time.time() % 60)


@pytest.fixture(scope="module")
def cluster(
    tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RedisProcess, RunningServer, RunningServer]]:
    tmp = tmp_path_factory.mktemp("quotas")
    redis = RedisProcess(tmp).start()
    keys = write_keys(tmp / "keys.json")
    replicas = [start_server(tiny_model, redis_url=redis.url, api_keys=keys, max_num_seqs=4)
                for _ in range(2)]  # fmt: skip
    for r in replicas:
        r.app.state.server.quotas.retry_s = 0.2
    yield redis, replicas[0], replicas[1]
    for r in replicas:
        r.stop()
    redis.kill()


def complete(server: RunningServer, who: str, **extra: object) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/completions", json={**PROMPT, **extra},
                      headers=auth(who), timeout=60)  # fmt: skip


def usage(server: RunningServer, tenant: str) -> dict:
    r = httpx.get(f"{server.base_url}/v1/tenants/{tenant}/usage", headers=auth("admin"))
    assert r.status_code == 200, r.text
    return r.json()


def test_the_n_plus_first_request_is_refused_across_replicas(cluster) -> None:
    _, one, two = cluster
    away_from_minute_boundary()
    remaining = []
    for i in range(4):  # alternate replicas: the count is shared
        r = complete((one, two)[i % 2], "acme")
        assert r.status_code == 200, r.text
        assert r.headers["x-ratelimit-limit-requests"] == "4"
        assert r.headers["x-ratelimit-reset-requests"]
        remaining.append(int(r.headers["x-ratelimit-remaining-requests"]))
    assert remaining == [3, 2, 1, 0]
    for server in (one, two):
        r = complete(server, "acme")
        assert r.status_code == 429
        error = r.json()["error"]
        assert (error["type"], error["code"]) == ("requests", "requests_per_minute_exceeded")
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
    # every response of a tenant with quotas carries the headers, not only completions
    models = httpx.get(f"{two.base_url}/v1/models", headers=auth("acme"))
    assert models.headers["x-ratelimit-remaining-requests"] == "0"
    assert "x-ratelimit-limit-requests" not in httpx.get(f"{one.base_url}/v1/models",
                                                         headers=auth("admin")).headers  # fmt: skip
    body = usage(two, "acme")
    assert body["requests_per_minute"]["used"] == pytest.approx(4, abs=0.5)
    assert body["counters"] == "redis" and body["limits"]["requests_per_minute"] == 4
    assert httpx.get(f"{one.base_url}/v1/tenants/acme/usage", headers=auth("acme")).status_code == 403
    assert httpx.get(f"{one.base_url}/v1/tenants/nobody/usage", headers=auth("admin")).status_code == 404
    metrics = one.metrics_text()
    assert 'deltaserve_tenant_rejections_total{limit="requests",tenant="acme"} 1.0' in metrics
    assert 'deltaserve_tenant_requests_total{outcome="success",tenant="acme"} 2.0' in metrics
    assert 'deltaserve_tenant_generation_tokens_total{tenant="acme"} 6.0' in metrics
    assert 'deltaserve_tenant_queue_wait_seconds_count{tenant="acme"} 2.0' in metrics


def test_key_file_weights_reach_the_fair_queue(cluster) -> None:
    _, one, _ = cluster
    policy = one.app.state.server.engine.engine.scheduler.policy
    assert isinstance(policy, VTCPolicy)  # the default with API keys
    assert policy.weight("acme") == 2.0 and policy.weight("beta") == 1.0


def test_token_reservations_are_reconciled_to_what_was_used(cluster) -> None:
    _, one, two = cluster
    away_from_minute_boundary()
    used = 0
    for server in (one, two):
        r = complete(server, "beta", max_tokens=3)
        assert r.status_code == 200, r.text
        used += r.json()["usage"]["total_tokens"]
    assert usage(one, "beta")["tokens_per_minute"]["used"] == pytest.approx(used, abs=1)
    assert usage(one, "beta")["concurrent_requests"] == 0
    # prompt + max_tokens over what is left of the 1000: refused before running, by tokens
    r = complete(two, "beta", max_tokens=1000 - used)
    assert r.status_code == 429 and r.json()["error"]["type"] == "tokens"
    assert int(r.headers["x-ratelimit-remaining-tokens"]) == 1000 - used


@pytest.mark.anyio
async def test_redis_script_reconciles_and_frees_the_slot(cluster) -> None:
    redis, _, _ = cluster
    lim = RedisLimiter(redis.url)
    quota = TenantQuota(tokens_per_minute=100, max_concurrent_requests=1)
    now = time.time()
    first = await lim.admit("script", quota, 80, "a", now)
    assert first.refused is None and first.counts.concurrent == 1
    assert (await lim.admit("script", quota, 30, "b", now)).refused == "tokens"
    await lim.finish("script", first.bucket, 5 - 80, "a")
    counts = await lim.peek("script", now)
    assert counts.tokens.cur == 5 and counts.concurrent == 0
    await lim.close()


def test_redis_killed_mid_test_local_limits_then_shared_again(cluster) -> None:
    redis, one, two = cluster
    away_from_minute_boundary()
    codes: list[int] = []
    try:
        redis.kill()
        # during the outage each replica enforces gamma's limit on its own: 3 each, no 5xx
        for server in (one, two):
            got = [complete(server, "gamma").status_code for _ in range(4)]
            codes += got
            assert got == [200, 200, 200, 429], got
        assert "deltaserve_quota_redis_fallback 1.0" in one.metrics_text()
        assert usage(one, "gamma")["counters"] == "local"
    finally:
        redis.start()
    # Redis is back (empty: no persistence): the replicas share one count again
    time.sleep(0.3)  # past the retry interval
    wait_until(lambda: usage(one, "gamma")["counters"] == "redis", 5.0, "Redis to be used again")
    wait_until(lambda: usage(two, "gamma")["counters"] == "redis", 5.0, "Redis to be used again")
    shared = [complete((one, two)[i % 2], "gamma").status_code for i in range(4)]
    assert shared == [200, 200, 200, 429], shared
    assert "deltaserve_quota_redis_fallback 0.0" in one.metrics_text()
    assert all(c < 500 for c in codes)


def test_concurrent_admissions_never_exceed_the_shared_limit(cluster) -> None:
    """Twelve clients on both replicas at once: exactly the limit of 5 is admitted."""
    _, one, two = cluster
    away_from_minute_boundary()
    results: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(12)

    def hit(server: RunningServer) -> None:
        start.wait()
        code = complete(server, "delta", max_tokens=1).status_code
        with lock:
            results.append(code)

    threads = [threading.Thread(target=hit, args=((one, two)[i % 2],)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == [200] * 5 + [429] * 7
