"""The shipped Prometheus config and rules: promtool, rule unit tests, and a real Prometheus
scraping a live deltaserve server and evaluating every recording rule and dashboard query."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import openai
import pytest

from tests.deploy.conftest import DEPLOY, Prometheus, require_binary
from tests.deploy.promql import dashboard_exprs, for_grafana, recording_rules, rules
from tests.integration.server.conftest import RunningServer

HERE = Path(__file__).parent


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("promtool"), *args], capture_output=True, text=True, timeout=120
    )


def test_promtool_accepts_the_shipped_config_and_rules():
    config = _promtool("check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    assert "1 rule files found" in config.stdout
    checked = _promtool("check", "rules", str(DEPLOY / "prometheus" / "rules.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_rules_cover_what_operators_need():
    records = set(recording_rules())
    alerts = {r["alert"] for r in rules() if "alert" in r}
    assert {
        "job:deltaserve_generation_tokens:rate1m",
        "job:deltaserve_time_to_first_token_seconds:p50_5m",
        "job:deltaserve_time_to_first_token_seconds:p95_5m",
        "job:deltaserve_time_per_output_token_seconds:p50_5m",
        "job:deltaserve_time_per_output_token_seconds:p95_5m",
        "job_tier:deltaserve_adapter_cache_hit_ratio:rate5m",
        "job:deltaserve_request_error_ratio:rate5m",
    } <= records
    assert {
        "DeltaserveQueueBacklog", "DeltaserveKVCacheNearFull", "DeltaserveNotReady",
        "DeltaserveRedisUnreachable", "DeltaserveHighErrorRatio", "DeltaserveSlowAdapterLoads",
    } <= alerts  # fmt: skip


def test_alerts_fire_on_synthetic_series():
    """promtool's rule unit tests: each alert fires on the series it is about, and only then."""
    result = _promtool("test", "rules", str(HERE / "rules_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _traffic(server: RunningServer) -> None:
    """Completions, streamed and not, on the base and on adapters (tenant acme)."""
    client = openai.OpenAI(
        base_url=f"{server.base_url}/v1", api_key="sk-acme", max_retries=0, timeout=60
    )
    for model in ("tiny", "alpha", "beta", "gamma"):
        client.completions.create(model=model, prompt="hello", max_tokens=6, temperature=0)
        stream = client.completions.create(
            model=model, prompt="world", max_tokens=6, temperature=0, stream=True
        )
        assert "".join(c.choices[0].text for c in stream if c.choices)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-adapter", prompt="x", max_tokens=2)


def test_real_prometheus_scrapes_the_server_and_evaluates_every_rule(
    live_server: RunningServer, prometheus: Prometheus
):
    up = prometheus.wait_for('up{job="deltaserve"} == 1')
    assert up[0]["metric"]["instance"] == live_server.base_url.removeprefix("http://")
    _traffic(live_server)
    # Raw series from the server, labelled by the scrape.
    assert prometheus.wait_for('deltaserve_ready{job="deltaserve"} == 1')
    assert prometheus.wait_for('deltaserve_redis_up{job="deltaserve"} == 1')
    assert prometheus.wait_for('deltaserve_http_requests_total{tenant="acme", code="404"}')
    # Every recording rule answers; the throughput and latency ones with real numbers.
    values = {}
    for name in recording_rules():
        result = prometheus.wait_for(name)
        values[name] = {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in result}
    tokens = prometheus.wait_for("job:deltaserve_generation_tokens:rate1m > 0")
    assert float(tokens[0]["value"][1]) > 0
    for q in ("p50", "p95"):
        ttft = prometheus.wait_for(f"job:deltaserve_time_to_first_token_seconds:{q}_5m > 0")
        assert math.isfinite(float(ttft[0]["value"][1]))
        assert prometheus.wait_for(f"job:deltaserve_time_per_output_token_seconds:{q}_5m > 0")
    # A 404 is the client's error: no 5xx, so the server error ratio is exactly 0 — once the
    # rate window holds the traffic (before that the ratio is 0/0 = NaN, which `>= 0` drops).
    # (a request after the series were first scraped: one born with its final value has
    # rate 0 however much traffic it counted)
    _traffic(live_server)
    ratio = prometheus.wait_for("job:deltaserve_request_error_ratio:rate5m >= 0")
    assert [float(r["value"][1]) for r in ratio] == [0.0]
    tiers = {dict(k)["tier"] for k in values["job_tier:deltaserve_adapter_cache_hit_ratio:rate5m"]}
    assert tiers == {"device", "host", "redis", "origin"}
    # Prometheus itself loaded every rule without evaluation errors.
    loaded = prometheus.rules()
    assert len(loaded) == len(rules())
    assert all(r["health"] == "ok" for r in loaded), [r for r in loaded if r["health"] != "ok"]


def test_every_dashboard_query_evaluates(live_server: RunningServer, prometheus: Prometheus):
    prometheus.wait_for('up{job="deltaserve"} == 1')
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    for expr in exprs:
        prometheus.query(for_grafana(expr))  # asserts status "success" (it parses and runs)
