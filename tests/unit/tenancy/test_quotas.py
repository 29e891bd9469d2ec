"""Quota arithmetic, the local limiter, the quota service's fallback and the key file's tenants."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deltaserve.entrypoints.errors import tenancy_error
from deltaserve.tenancy.auth import ApiKeyAuth
from deltaserve.tenancy.quotas import (
    QuotaExceededError,
    QuotaService,
    format_duration,
    ratelimit_headers,
)
from deltaserve.tenancy.ratelimit import Counts, LocalLimiter, Window
from deltaserve.tenancy.tenants import TenantQuota

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    def __init__(self, t: float = 6000.0):  # a bucket boundary (100 windows of 60 s)
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_window_estimate_and_waits() -> None:
    w = Window(prev=10, cur=2, frac=0.5)
    assert w.estimate() == 7.0
    assert w.seconds_until(limit=10, cost=1) == 0.0
    # 13.5 + 1 → 13 needs prev's share to drop by 1.5 at 10/60 per second: 9 s
    assert Window(10, 6, 0.25).seconds_until(limit=13, cost=1) == pytest.approx(9.0)
    # cur alone is over: wait for the next bucket (45 s) and then cur decays: 60·(1 − 4/8)
    assert Window(0, 8, 0.25).seconds_until(limit=5, cost=1) == pytest.approx(45 + 30)
    assert Window(0, 0, 0.0).seconds_until(limit=5, cost=6) == float("inf")
    assert Window(0, 3, 0.5).seconds_to_reset() == pytest.approx(90.0)
    assert Window(3, 0, 0.5).seconds_to_reset() == pytest.approx(30.0)


def test_format_duration_is_openai_style() -> None:
    assert format_duration(0.02) == "20ms"
    assert format_duration(6.5) == "6.5s"
    assert format_duration(60) == "1m0s"
    assert format_duration(90.2) == "1m31s"


async def test_local_limiter_counts_refuses_and_reconciles() -> None:
    lim, quota = LocalLimiter(), TenantQuota(requests_per_minute=2, tokens_per_minute=100)
    first = await lim.admit("t", quota, 60, "l1", 6000.0)
    assert first.refused is None and first.counts.tokens.cur == 60
    refused = await lim.admit("t", quota, 60, "l2", 6001.0)
    assert refused.refused == "tokens"  # 60 + 60 > 100: nothing counted
    assert (await lim.peek("t", 6001.0)).requests.cur == 1
    await lim.finish("t", first.bucket, 15 - 60, "l1")  # used 15 of the 60 reserved
    assert (await lim.peek("t", 6001.0)).tokens.cur == 15
    assert (await lim.admit("t", quota, 60, "l3", 6002.0)).refused is None
    assert (await lim.admit("t", quota, 1, "l4", 6003.0)).refused == "requests"


async def test_concurrency_slots_free_on_finish_and_expire() -> None:
    lim = LocalLimiter(lease_ttl_s=100)
    quota = TenantQuota(max_concurrent_requests=1)
    d = await lim.admit("t", quota, 1, "a", 6000.0)
    assert (await lim.admit("t", quota, 1, "b", 6000.0)).refused == "concurrent_requests"
    await lim.finish("t", d.bucket, 0, "a")
    assert (await lim.admit("t", quota, 1, "c", 6000.0)).refused is None
    # c's finish never comes (a crashed replica): the slot expires
    assert (await lim.admit("t", quota, 1, "d", 6200.0)).refused is None


async def test_service_refusal_has_type_code_and_headers() -> None:
    quotas = {"acme": TenantQuota(requests_per_minute=1, tokens_per_minute=1000)}
    svc = QuotaService(lambda t: quotas.get(t, TenantQuota()), clock=Clock())
    assert await svc.admit("free", 10**9) is None  # no quota: nothing counted, no headers
    res = await svc.admit("acme", 10)
    assert res is not None and res.headers["x-ratelimit-remaining-requests"] == "0"
    assert res.headers["x-ratelimit-remaining-tokens"] == "990"
    with pytest.raises(QuotaExceededError) as info:
        await svc.admit("acme", 10)
    err = info.value
    body = tenancy_error(err).to_dict()["error"]  # the OpenAI body the API answers with
    assert (err.status_code, body["type"], body["code"]) == (
        429, "requests", "requests_per_minute_exceeded")  # fmt: skip
    assert int(err.headers["retry-after"]) >= 1
    assert err.headers["x-ratelimit-limit-requests"] == "1"


async def test_redis_outage_falls_back_to_local_limits() -> None:
    """An unreachable Redis: admissions use local counters (reported once), no exception."""
    events: list[bool] = []
    quotas = {"acme": TenantQuota(requests_per_minute=2)}
    svc = QuotaService(lambda t: quotas.get(t, TenantQuota()), "redis://127.0.0.1:1/0",
                       on_fallback=events.append, clock=Clock())  # fmt: skip
    assert await svc.admit("acme", 1) is not None
    assert await svc.admit("acme", 1) is not None
    with pytest.raises(QuotaExceededError):
        await svc.admit("acme", 1)
    assert events == [True] and svc.backend == "local"
    await svc.close()


def test_headers_only_for_set_limits() -> None:
    counts = Counts(Window(0, 3, 0.5), Window(0, 0, 0.5), 0)
    h = ratelimit_headers(TenantQuota(requests_per_minute=10), counts)
    assert h == {"x-ratelimit-limit-requests": "10", "x-ratelimit-remaining-requests": "7",
                 "x-ratelimit-reset-requests": "1m30s"}  # fmt: skip


def test_key_file_tenants_parse_and_reject_bad_entries(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    keys = [{"key": "k", "tenant": "acme"}]
    path.write_text(json.dumps({"keys": keys, "tenants": {"acme": {"tokens_per_minute": 5,
                                                                     "weight": 2}}}))  # fmt: skip
    auth = ApiKeyAuth.from_file(path)
    assert auth.quota("acme").tokens_per_minute == 5 and auth.weights() == {"acme": 2.0}
    assert auth.quota("other").rate_limited is False
    assert auth.known_tenants() >= {"acme"}
    for bad in ({"acme": {"weight": 0}}, {"acme": {"requests_per_minute": -1}},
                {"acme": {"rpm": 3}}, ["acme"]):  # fmt: skip
        path.write_text(json.dumps({"keys": keys, "tenants": bad}))
        with pytest.raises(ValueError, match="tenants"):
            ApiKeyAuth.from_file(path)


def test_queue_policy_auto_is_fair_when_keys_name_tenants(tmp_path: Path) -> None:
    from deltaserve.entrypoints.engine_factory import engine_config
    from deltaserve.entrypoints.settings import Settings

    keyed = Settings(model="m", api_keys=tmp_path / "keys.json")
    assert engine_config(keyed).queue_policy == "vtc"
    assert engine_config(Settings(model="m")).queue_policy == "fcfs"
    assert engine_config(Settings(model="m", api_keys=tmp_path, queue_policy="fcfs")).queue_policy == "fcfs"
