"""Benchmark R's figures: per-run latency percentiles, the issue's targets, the results JSON,
the TTFT/TPOT-against-rate plot and the README section."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks import machine, report
from benchmarks.stream_load import Timing
from benchmarks.traffic import ChatRequest

START, END = "<!-- workload-r:start -->", "<!-- workload-r:end -->"
SECTION = "## Workload R: multi-tenant chat traffic over time"
RESULTS_DIR = Path(__file__).with_name("results")


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summarise(reqs: list[ChatRequest], timings: list[Timing], t0: float,
              before: dict[str, float], after: dict[str, float]) -> dict:
    """One run's figures: output tok/s over the run (first send to last token), TTFT and TPOT
    percentiles over requests, inter-token latency p99 over all streamed chunks, and the
    server's prefix-cache hit rate over the run (hit / looked-up prompt tokens)."""
    tokens = sum(t.completion_tokens for t in timings)
    span = max(t.last for t in timings) - t0
    ttft = [t.ttft for t in timings]
    tpot = [t.tpot for t in timings if t.tpot is not None]
    itl = [gap for t in timings for gap in t.itls]
    queries = after["queries"] - before["queries"]
    prompt_tokens = sum(len(r.prompt) for r in reqs)
    return {
        "requests": len(reqs), "prompt_tokens": prompt_tokens, "completion_tokens": tokens,
        "seconds": span, "output_tok_s": tokens / span,
        "ttft_p50": _p(ttft, 50), "ttft_p99": _p(ttft, 99),
        "tpot_p50": _p(tpot, 50), "tpot_p99": _p(tpot, 99), "itl_p99": _p(itl, 99),
        "hit_rate": round((after["hits"] - before["hits"]) / queries, 3) if queries else None,
        "client_cached_share": round(sum(t.cached_tokens for t in timings) / prompt_tokens, 3),
        "per_request": [[round(r.at, 3), round(t.ttft, 3), t.tpot and round(t.tpot, 4),
                         t.cached_tokens] for r, t in zip(reqs, timings, strict=True)],
    }


def _get(rows, server, variant, rate):
    return next((r for r in rows if (r["server"], r["variant"], r["rate"]) == (server, variant, rate)
                 and "error" not in r), None)


def evaluate(rows: list[dict], rates: list[float]) -> list[dict]:
    """The issue's targets, each per rate: ratio, threshold and pass / fail / not measured."""
    out = []

    def target(name, ratio, threshold, higher_is_better=True):
        if ratio is None:
            status = "not measured"
        else:
            ok = ratio >= threshold if higher_is_better else ratio <= threshold
            status = "pass" if ok else "FAIL"
        out.append({"target": name, "ratio": ratio, "threshold": threshold, "status": status})

    def ratio(a, b, key):
        return a[key] / b[key] if a and b and b[key] else None

    for rate in rates:
        ds, nc = _get(rows, "deltaserve", "shared", rate), _get(rows, "deltaserve-no-cache", "shared", rate)
        vl = _get(rows, "vllm", "shared", rate)
        target(f"{rate:g}/s: TTFT p99 ≤ 0.5× vLLM-CPU", ratio(ds, vl, "ttft_p99"), 0.5, False)
        target(f"{rate:g}/s: TPOT p99 ≤ 0.7× vLLM-CPU", ratio(ds, vl, "tpot_p99"), 0.7, False)
        target(f"{rate:g}/s: hit rate ≥ 70% of prompt tokens", ds and ds["hit_rate"], 0.7)
        target(f"{rate:g}/s: TTFT p50 ≥ 3× better than --no-enable-prefix-caching",
               ratio(nc, ds, "ttft_p50"), 3.0)
        target(f"{rate:g}/s: TPOT p99 ≤ 2× TPOT p50 (no stalls)",
               ds["tpot_p99"] / ds["tpot_p50"] if ds else None, 2.0, False)
    over = max(rates)
    target(f"{over:g}/s: output tok/s ≥ 1.5× vLLM-CPU",
           ratio(_get(rows, "deltaserve", "shared", over), _get(rows, "vllm", "shared", over),
                 "output_tok_s"), 1.5)
    return out


def table(rows: list[dict]) -> str:
    lines = ["| server | prefix | req/s | out tok/s | TTFT p50 | TTFT p99 | TPOT p50 | TPOT p99 "
             "| ITL p99 | hit rate |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['server']} | {r['variant']} | {r['rate']:g} | {r['error']} "
                         "| | | | | | |")
            continue
        hit = "–" if r["hit_rate"] is None else f"{100 * r['hit_rate']:.0f}%"
        lines.append(
            f"| {r['server']} | {r['variant']} | {r['rate']:g} | {r['output_tok_s']:.0f} "
            f"| {r['ttft_p50']:.2f} s | {r['ttft_p99']:.2f} s | {1000 * r['tpot_p50']:.0f} ms "
            f"| {1000 * r['tpot_p99']:.0f} ms | {1000 * r['itl_p99']:.0f} ms | {hit} |")
    return "\n".join(lines)


def targets_table(evaluated: list[dict]) -> str:
    lines = ["| target | measured | result |", "|---|---:|---|"]
    for t in evaluated:
        got = "–" if t["ratio"] is None else f"{t['ratio']:.2f}"
        lines.append(f"| {t['target']} | {got} (line {t['threshold']:g}) | {t['status']} |")
    return "\n".join(lines)


def plot(path: Path, rows: list[dict], title: str) -> None:
    """TTFT and TPOT (p50 dashed, p99 solid) against the request rate, one colour a server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    series = sorted({(r["server"], r["variant"]) for r in rows if "error" not in r})
    for (server, variant), color in zip(series, plt.cm.tab10.colors, strict=False):
        pts = sorted((r for r in rows if (r["server"], r["variant"]) == (server, variant)
                      and "error" not in r), key=lambda r: r["rate"])
        rates = [r["rate"] for r in pts]
        for ax, key, scale in ((axes[0], "ttft", 1.0), (axes[1], "tpot", 1000.0)):
            for q, style in (("p50", "--"), ("p99", "-")):
                ax.plot(rates, [scale * r[f"{key}_{q}"] for r in pts], style, marker="o",
                        color=color, label=f"{server} ({variant}) {q}")
    axes[0].set(xlabel="requests / s", ylabel="time to first token (s)", yscale="log")
    axes[1].set(xlabel="requests / s", ylabel="time per output token (ms)")
    axes[1].legend(fontsize=6, ncol=2)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(args, rows: list[dict], evaluated: list[dict],
                  progress: Callable[[str], None]) -> dict:
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": report.machine_info("cpu"),
            "cpu_flags": machine.reported_flags(), "rates": args.rates,
            "requests_per_run": args.requests}
    result = {"meta": meta, "runs": rows, "targets": evaluated}
    (args.out / "r-results.json").write_text(json.dumps(result, indent=2))
    title = (f"workload R: 16 tenants x 768-token system prompts, {args.requests} Poisson "
             f"requests per rate, streamed; {meta['machine']['cpu']}")
    plot(args.out / "r-latency.png", rows, title)
    progress("\n" + table(rows) + "\n\n" + targets_table(evaluated))
    progress(f"\nwrote {args.out / 'r-results.json'} and {args.out / 'r-latency.png'}")
    if args.update_readme:
        shutil.copy(args.out / "r-latency.png", RESULTS_DIR / "r-latency-cpu.png")
        flags = ", ".join(f for f, on in meta["cpu_flags"].items() if on)
        body = "\n".join([START, f"Measured {meta['date']} on **{meta['machine']['cpu']}** "
                          f"({meta['machine']['cores']} cores; flags: {flags}), "
                          f"{args.requests} requests per run, rates {args.rates} req/s.", "",
                          table(rows), "", targets_table(evaluated), "",
                          "![workload R latency](results/r-latency-cpu.png)", END])
        report.replace_section(report.README, START, END, SECTION, body)
        progress(f"updated {report.README}")
    return result
