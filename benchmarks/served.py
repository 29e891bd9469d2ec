"""deltaserve as a user runs it: `deltaserve serve --model BASE --adapter-dir DIR --port P`
(no other flag: every default is the product's), driven over HTTP by one concurrent client per
request (benchmarks/http_load.py). One server serves every variant of the run; its adapter
directory holds, as symlinks, every adapter the variants use (LoRAs, sparse deltas, proxies),
each under its own name, so the server reads them as an operator's --adapter-dir. Variants on
a quantized base (W-int8) get their own server, started with --quantization as the one extra
flag. A base of another architecture (W-qwen3, W-gemma3) is its own run_all call, with its
own server and log.
"""

from __future__ import annotations

import re
import shutil
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import httpx

from benchmarks import http_load, plans
from benchmarks.common import QUANTIZED_VARIANTS, RunResult
from benchmarks.server_proc import ServerProcess, free_port
from benchmarks.workload import Assets

ENGINE = "served"


def layout_adapter_dir(root: Path, variant_plans: dict[str, plans.Plan]) -> Path:
    """(Re)make `root` with one symlink per adapter the plans use: root/<name> -> its dir."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for p in variant_plans.values():
        for a in p.adapters:
            link = root / a.name
            if not link.exists():
                link.symlink_to(Path(a.path).resolve(), target_is_directory=True)
    return root


def serve_command(assets: Assets, adapter_dir: Path, port: int,
                  quantization: str | None = None) -> list[str]:
    """`deltaserve serve` with only the model, the adapter directory and the port (and the
    base's --quantization for a quantized variant)."""
    quant = [] if quantization is None else ["--quantization", quantization]
    return [sys.executable, "-m", "deltaserve", "serve", "--model",
            str(assets.base_dir), "--adapter-dir", str(adapter_dir), "--port", str(port), *quant]


def models_info(base_url: str) -> tuple[str, str | None, set[str]]:
    """(base id, serving dtype, adapter names) from GET /v1/models (the base's card first)."""
    cards = httpx.get(base_url + "/v1/models", timeout=30.0).json()["data"]
    base = next(c for c in cards if c.get("parent") is None)
    return base["id"], base.get("dtype"), {c["id"] for c in cards if c.get("parent")}


def engine_info(metrics_text: str) -> dict[str, str]:
    """The labels of `deltaserve_engine_info` (what the server chose at start-up: device,
    dtype, effective adapter cap, ...) from a /metrics page; {} where it has none."""
    m = re.search(r"^deltaserve_engine_info\{([^}]*)\}", metrics_text, re.M)
    return dict(re.findall(r'(\w+)="([^"]*)"', m.group(1))) if m else {}


def request_models(p: plans.Plan, base_id: str) -> list[str]:
    """The `model` field of each request: its adapter's name, or the base's id."""
    return [base_id if a is None else a.name for a in p.per_request]


def run_all(assets: Assets, variants: list[str], prompts: list[list[int]], gen_len: int,
            out: Path, progress: Callable[[str], None] = print,
            start_timeout: float = 600.0, repeats: int = 1) -> tuple[list[RunResult], dict]:
    """One RunResult per variant (error rows where the server or a variant failed), and
    what the server reported: its command, log path, dtype and deltaserve_engine_info (those
    of a quantized base's server under "quantized", by method)."""
    variant_plans = {v: plans.plan(assets, v, len(prompts)) for v in variants}
    results = [RunResult(engine=ENGINE, variant=v, num_adapters=len(variant_plans[v].adapters),
                         num_requests=len(prompts), prompt_len=len(prompts[0]), gen_len=gen_len)
               for v in variants]
    adapter_dir = layout_adapter_dir(out / "served-adapters", variant_plans)
    infos = {}
    for quant in dict.fromkeys(QUANTIZED_VARIANTS.get(v) for v in variants):
        rows = [r for r in results if QUANTIZED_VARIANTS.get(r.variant) == quant]
        infos[quant] = _serve(assets, adapter_dir, quant, rows, variant_plans, prompts,
                              gen_len, out, progress, start_timeout, repeats)
    main = None if None in infos or not infos else next(iter(infos))
    info = infos.pop(main, {})
    if infos:
        info["quantized"] = infos
    return results, info


def log_name(arch: str, quant: str | None) -> str:
    """The server log's file name: one per base (arch, quantization) of a run."""
    parts = ["served-server", *([arch] if arch != "llama" else []), *([quant] if quant else [])]
    return "-".join(parts) + ".log"


def _serve(assets: Assets, adapter_dir: Path, quant: str | None, results: list[RunResult],
           variant_plans: dict[str, plans.Plan], prompts: list[list[int]], gen_len: int,
           out: Path, progress: Callable[[str], None], start_timeout: float,
           repeats: int) -> dict:
    """Measure `results` on one server (base quantized as `quant`); what it reported."""
    port = free_port()
    cmd = serve_command(assets, adapter_dir, port, quant)
    log = out / log_name(assets.spec.arch, quant)
    info = {"command": "deltaserve " + " ".join(cmd[3:]), "log": str(log), "dtype": None}
    progress(f"[served] starting: {info['command']}")
    try:
        with ServerProcess(cmd, port, log, start_timeout=start_timeout) as srv:
            base_id, info["dtype"], loaded = models_info(srv.base_url)
            info["engine_info"] = engine_info(httpx.get(srv.base_url + "/metrics").text)
            progress(f"[served] ready: base {base_id!r}, {len(loaded)} adapters, engine "
                     f"{info['engine_info'] or 'info not in /metrics'}")
            for res in results:
                _run_variant(srv.base_url, res, variant_plans[res.variant], base_id, loaded,
                             prompts, gen_len, progress, repeats)
    except Exception as exc:  # not started, or died: the rows not measured say why
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        for res in results:
            if not res.error and not res.generated_tokens:
                res.error = f"server failed: {why}"
        progress(f"[served] {exc}")
    return info


def _run_variant(base_url: str, res: RunResult, p: plans.Plan, base_id: str, loaded: set[str],
                 prompts: list[list[int]], gen_len: int,
                 progress: Callable[[str], None], repeats: int) -> None:
    missing = sorted({a.name for a in p.adapters} - loaded)
    if missing:
        res.error = f"adapters not loaded by the server (see its log): {', '.join(missing)}"
    else:
        progress(f"[served] {res.variant}: {len(prompts)} concurrent requests, "
                 f"{len(p.adapters)} adapters ...")
        try:
            http_load.measure(base_url, res, request_models(p, base_id), prompts, gen_len,
                              progress, repeats)
        except Exception as exc:  # one variant's failure must not stop the others
            traceback.print_exc()
            res.error = f"{type(exc).__name__}: {str(exc)[:200]}"
    progress(f"[served] {res.variant}: "
             + (res.error if res.error else f"{res.tok_s:.1f} tok/s ({res.seconds:.2f} s)"))
