"""The served benchmark's output: console and markdown tables (tok/s, share of the matmul
bound), the targets with pass / fail, results.json, the plot and the README section."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import report
from benchmarks.common import RunResult

ENGINE_LABELS = {
    "served": "deltaserve serve (HTTP)",
    "offline": "deltaserve engine (offline)",
    "peft": "HF PEFT",
    "vllm": "vLLM-CPU (HTTP)",
}
START, END = "<!-- served:start -->", "<!-- served:end -->"
SECTION = "## Served benchmark (`make bench`)"


def rows(results: list[RunResult], bound_tok_s: float | None) -> list[dict]:
    """One row per result: tok/s (0 where it failed) and its share of the bound."""
    return [{"engine": r.engine, "label": ENGINE_LABELS.get(r.engine, r.engine),
             "variant": r.variant, "adapters": r.num_adapters, "tok_s": r.tok_s,
             "share_of_bound": r.tok_s / bound_tok_s if bound_tok_s and r.tok_s else None,
             "error": r.error} for r in results]


def tok_s_by_row(results: list[RunResult]) -> dict[tuple[str, str], float]:
    return {(r.engine, r.variant): r.tok_s for r in results if not r.error}


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def _ratio(x: float | None, threshold: float) -> str:
    """As the target is written: a share (85%) below 1, a multiple (2.10×) from 1 up."""
    if x is None:
        return "–"
    return f"{x:.2f}×" if threshold >= 1 else f"{100 * x:.0f}%"


def markdown_table(results: list[RunResult], bound: dict | None) -> str:
    bound_tok_s = bound["tok_s"] if bound else None
    lines = ["| engine | variant | adapters | tok/s (median) | runs (tok/s) | share of bound |",
             "|---|---|---:|---:|---|---:|"]
    if bound:
        lines.append(f"| matmul-only bound ({bound['dtype']}, {bound['rows']} rows) | W | – | "
                     f"{bound['tok_s']:.1f} | – | 100% |")
    for row, res in zip(rows(results, bound_tok_s), results, strict=True):
        tok = row["error"] if row["error"] else f"{row['tok_s']:.1f}"
        runs = " / ".join(f"{res.generated_tokens / s:.0f}" for s in res.run_seconds
                          if s > 0 and not res.error) or "–"
        lines.append(f"| {row['label']} | {row['variant']} | {row['adapters']} | {tok} | "
                     f"{runs} | {_pct(row['share_of_bound'])} |")
    return "\n".join(lines)


def targets_table(evaluated: list[dict]) -> str:
    lines = ["| target | measured | result |", "|---|---:|---|"]
    for t in evaluated:
        lines.append(f"| {t['target']} | {_ratio(t['ratio'], t['threshold'])} | {t['status']} |")
    return "\n".join(lines)


def machine_line(meta: dict) -> str:
    m = meta["machine"]
    flags = ", ".join(f for f, on in meta["cpu_flags"].items() if on) or "none of them"
    chosen = ((meta.get("served") or {}).get("engine_info") or {}).items()
    server = ", ".join(f"{k} {v}" for k, v in chosen if k != "dtype")
    vllm = (meta.get("vllm") or {}).get("version")
    return (f"**{m['cpu']}** ({m['cores']} cores; flags of interest present: {flags}); "
            f"benchmark process: torch {m['torch']}, {m['torch_threads']} torch threads; "
            f"serving dtype {meta['dtypes']['served']} (server's `/v1/models`"
            + (f"; server's engine: {server}" if server else "")
            + f"), PEFT and bound {meta['dtypes']['native']} ({meta['dtypes']['why']}); "
            f"Python {m['python']}, transformers {m['transformers']}, peft {m['peft']}"
            + (f", {vllm}" if vllm else ""))


def print_summary(results: list[RunResult], meta: dict, evaluated: list[dict]) -> None:
    print("\n" + machine_line(meta).replace("**", ""))
    print(markdown_table(results, meta.get("bound")))
    print()
    print(targets_table(evaluated))


def write_json(path: Path, results: list[RunResult], meta: dict, evaluated: list[dict]) -> None:
    bound = meta.get("bound")
    payload = {**meta, "results": [r.to_json() for r in results],
               "rows": rows(results, bound["tok_s"] if bound else None),
               "targets": evaluated}
    path.write_text(json.dumps(payload, indent=2))


def plot(path: Path, results: list[RunResult], bound: dict | None, title: str) -> None:
    """Grouped bars (x = variant, one bar per engine) and the bound as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(dict.fromkeys(r.variant for r in results))
    engines = list(dict.fromkeys(r.engine for r in results))
    by = {(r.engine, r.variant): r for r in results}
    width = 0.8 / max(len(engines), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.8 * len(variants) + 2), 4.5))
    for j, engine in enumerate(engines):
        xs = [i + (j - (len(engines) - 1) / 2) * width for i in range(len(variants))]
        vals = [by[(engine, v)].tok_s if (engine, v) in by else 0.0 for v in variants]
        bars = ax.bar(xs, vals, width, label=ENGINE_LABELS.get(engine, engine))
        for b, v, val in zip(bars, variants, vals, strict=True):
            if (engine, v) in by:  # measured, skipped or failed: say which instead of a gap
                ax.annotate(f"{val:.0f}" if val > 0 else "n/a",
                            (b.get_x() + b.get_width() / 2, val), ha="center", va="bottom",
                            fontsize=7)
    if bound:
        ax.axhline(bound["tok_s"], color="red", linestyle="--",
                   label=f"matmul-only bound ({bound['tok_s']:.0f})")
    ax.set_xticks(range(len(variants)), variants)
    ax.set_ylabel("generated tokens / s")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def section(results: list[RunResult], meta: dict, evaluated: list[dict],
            image: str | None) -> str:
    """The README block between START and END (markers included)."""
    body = [START, f"Measured {meta['date']} with `{meta['command']}` on {machine_line(meta)}.",
            "", markdown_table(results, meta.get("bound")), "", targets_table(evaluated)]
    if image:
        body += ["", f"![served benchmark]({image})"]
    return "\n".join([*body, END])


def update_readme(results: list[RunResult], meta: dict, evaluated: list[dict],
                  image: str | None = None, readme: Path = report.README) -> None:
    report.replace_section(readme, START, END, SECTION, section(results, meta, evaluated, image))
