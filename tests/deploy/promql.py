"""What the shipped PromQL refers to: metric names, recording rules, dashboard expressions."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "deltaserve.json"

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_BRACES = re.compile(r"\{[^}]*\}")
# Grafana's variables, replaced by what Grafana would send.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "15s", "$job": ".*"}


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def recording_rules() -> dict[str, str]:
    return {r["record"]: r["expr"] for r in rules() if "record" in r}


def dashboard_exprs() -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and query variables."""
    dash = json.loads(DASHBOARD.read_text())

    def walk(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                yield node["expr"]
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    return list(walk(dash["panels"]))


def variable_queries() -> list[str]:
    """The metric selectors inside the dashboard's `label_values(metric, label)` variables."""
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for var in dash["templating"]["list"]:
        query = var.get("definition") or ""
        match = re.match(r"label_values\((\w+),", query)
        if match:
            out.append(match.group(1))
    return out


def names_in(expr: str) -> set[str]:
    """Series names an expression reads: `deltaserve_*` metrics and `*:*` recording rules.

    String literals and label matchers (`{...}`) are dropped first, so label names and values
    never count as metric names.
    """
    stripped = _BRACES.sub(" ", _STRING.sub('""', expr))
    return {n for n in _IDENT.findall(stripped) if n.startswith("deltaserve_") or ":" in n}


def for_grafana(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    return expr
