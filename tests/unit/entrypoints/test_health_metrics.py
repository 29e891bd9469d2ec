"""deltaserve_ready, deltaserve_redis_up and deltaserve_http_requests_total (the deploy rules'
and alerts' inputs), on an app over the scripted engine."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from deltaserve.entrypoints.metrics import ServerMetrics
from deltaserve.tenancy.auth import DEFAULT_TENANT


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_ready_follows_readiness_and_redis_up_needs_redis(client: TestClient) -> None:
    values = _samples(client.get("/metrics").text)
    assert values[("deltaserve_ready", ())] == 1
    assert not [k for k in values if k[0] == "deltaserve_redis_up"]  # no --redis-url
    client.app.state.server.draining = True
    assert client.get("/ready").status_code == 503
    assert _samples(client.get("/metrics").text)[("deltaserve_ready", ())] == 0


def test_redis_up_reports_the_backend() -> None:
    metrics = ServerMetrics(lambda: None)
    metrics.set_health(lambda: (False, False))
    values = _samples(metrics.render().decode())
    assert values[("deltaserve_ready", ())] == 0
    assert values[("deltaserve_redis_up", ())] == 0


def test_http_responses_by_tenant_route_template_and_code(client: TestClient) -> None:
    client.post("/v1/completions", json={"model": "alpha", "prompt": "hi", "max_tokens": 2})
    client.post("/v1/completions", json={"model": "nope", "prompt": "hi", "max_tokens": 2})
    client.get("/v1/adapters/alpha")
    client.get("/no/such/path")
    values = _samples(client.get("/metrics").text)

    def count(tenant: str, route: str, code: str) -> float:
        labels = (("code", code), ("route", route), ("tenant", tenant))
        return values.get(("deltaserve_http_requests_total", labels), 0.0)

    assert count(DEFAULT_TENANT, "/v1/completions", "200") == 1
    assert count(DEFAULT_TENANT, "/v1/completions", "404") == 1
    assert count(DEFAULT_TENANT, "/v1/adapters/{name}", "200") == 1  # the template, not the name
    assert count("none", "unmatched", "404") == 1
