"""The Grafana dashboard and the rules query only what the server really exposes."""

from __future__ import annotations

import json

import yaml

from tests.deploy.conftest import DEPLOY
from tests.deploy.promql import (
    DASHBOARD,
    dashboard_exprs,
    names_in,
    recording_rules,
    rules,
    variable_queries,
)


def test_promql_name_extraction():
    expr = (
        'sum by (tier) (rate(deltaserve_adapter_cache_hits_total{job=~"deltaserve_x", '
        'tier!="device"}[5m])) / job:deltaserve_generation_tokens:rate1m'
    )
    assert names_in(expr) == {
        "deltaserve_adapter_cache_hits_total",
        "job:deltaserve_generation_tokens:rate1m",
    }


def test_every_dashboard_metric_is_exposed_by_the_server(metric_names: set[str]):
    records = recording_rules()
    used = set().union(*(names_in(e) for e in dashboard_exprs())) | set(variable_queries())
    assert len(used) >= 20
    missing = []
    for name in sorted(used):
        if ":" in name:
            if name not in records:
                missing.append(f"{name}: not a recording rule of rules.yml")
            else:
                missing += [f"{n} (via {name})" for n in names_in(records[name])
                            if n not in metric_names]  # fmt: skip
        elif name not in metric_names:
            missing.append(name)
    assert not missing, f"the dashboard queries series the server does not expose: {missing}"


def test_every_rule_reads_exposed_metrics(metric_names: set[str]):
    raw = set().union(*(names_in(r["expr"]) for r in rules())) - set(recording_rules())
    assert raw, "no metric names found in rules.yml"
    assert raw <= metric_names, raw - metric_names


def test_dashboard_covers_the_operators_questions():
    dash = json.loads(DASHBOARD.read_text())
    rows = [p["title"] for p in dash["panels"] if p["type"] == "row"]
    assert rows == ["Throughput", "Latency", "Queue and KV cache", "Adapters", "Tenants"]
    text = " ".join(dashboard_exprs())
    for needle in ("by (tenant)", "by (tier)", "deltaserve_lora_requests_info",
                   "deltaserve_kv_cache_usage_perc", "deltaserve_num_requests_waiting",
                   "deltaserve_prefix_cache_hit_ratio"):
        assert needle in text
    # Every panel's datasource is the dashboard variable the provisioned datasource fills.
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dash["panels"] if p["type"] != "row")


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus():
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/deltaserve.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    assert ds["datasources"][0]["type"] == "prometheus"
