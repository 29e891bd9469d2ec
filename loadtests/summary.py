"""The short summary of a locust run, from its `<prefix>_stats.csv`.

Rows whose type is an HTTP method are requests; `TTFT`, `TPOT` and `E2E` rows are the
client-side stream timings the locustfile reports (milliseconds, like every locust time).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

HTTP_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}
STREAM_TIMINGS = ("TTFT", "TPOT", "E2E")


def _number(value: str) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None  # locust writes "N/A" for a percentile it has no data for


def summarise(stats_csv: Path) -> dict[str, Any]:
    """{requests, failures, requests_per_s, TTFT/TPOT/E2E p50/p95 in ms, per entry counts}."""
    with stats_csv.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    http = [r for r in rows if r["Type"] in HTTP_METHODS]
    out: dict[str, Any] = {
        "requests": sum(int(r["Request Count"]) for r in http),
        "failures": sum(int(r["Failure Count"]) for r in http),
        "requests_per_s": round(sum(float(r["Requests/s"]) for r in http), 3),
        "entries": {f'{r["Type"]} {r["Name"]}': int(r["Request Count"]) for r in http},
    }
    for kind in STREAM_TIMINGS:
        row = next((r for r in rows if r["Type"] == kind), None)
        out[kind] = {
            "count": int(row["Request Count"]) if row else 0,
            "p50_ms": _number(row["50%"]) if row else None,
            "p95_ms": _number(row["95%"]) if row else None,
        }
    return out


def render(summary: dict[str, Any]) -> str:
    """A few lines for a terminal."""
    lines = [
        f"requests {summary['requests']}  failures {summary['failures']}  "
        f"req/s {summary['requests_per_s']}",
    ]
    for kind in STREAM_TIMINGS:
        t = summary[kind]
        lines.append(f"{kind:<4} p50 {t['p50_ms']} ms  p95 {t['p95_ms']} ms  (n={t['count']})")
    return "\n".join(lines)


def write(summary: dict[str, Any], out_dir: Path) -> None:
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out_dir / "summary.txt").write_text(render(summary) + "\n", encoding="utf-8")
