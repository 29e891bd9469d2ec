"""Workload W: deltaserve's engine vs HF PEFT mixed-adapter batching, in one run.

    python -m benchmarks.run_w [--out DIR] [--variants W-base,W-8,W,W-delta,W-proxy,W-int8] [--engines deltaserve,peft]
        [--num-requests 64] [--prompt-len 64] [--gen-len 64] [--num-adapters 32] [--small]
        [--device auto|cpu|cuda] [--threads N] [--mixed-prefill-decode] [--update-readme]

Prints tokens/s per (engine, variant) and the ratios, writes results.json and
throughput.png under --out, and with --update-readme rewrites the table of the run's device
(CPU or CUDA) in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import shlex
import sys
import time
import warnings
from pathlib import Path

from benchmarks import report, workload
from benchmarks.common import (
    ARCH_VARIANTS,
    DEFAULT_VARIANTS,
    ENGINES,
    VARIANTS,
    RunResult,
    adapters_in,
)

# --small: a smoke-size model and workload that runs in seconds (flags still override).
SMALL_DEFAULTS = {"num_requests": 8, "prompt_len": 16, "gen_len": 8, "num_adapters": 4}
FULL_DEFAULTS = {"num_requests": 64, "prompt_len": 64, "gen_len": 64, "num_adapters": 32}


def _csv(choices):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated subset of {','.join(choices)}, got {text!r}"
            )
        return items

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run_w",
        description="Workload W: deltaserve engine vs HF PEFT mixed-adapter batch generation.",
    )
    p.add_argument("--out", default="bench-out",
                   help="where assets (cached) and results go (default: bench-out)")
    # One Llama base per run here: the other-arch variants are `make bench`'s (benchmarks/bench.py).
    p.add_argument("--variants", type=_csv([v for v in VARIANTS if v not in ARCH_VARIANTS]),
                   default=list(DEFAULT_VARIANTS),
                   help="comma-separated variants: W-base (no adapters), W-8, W, W-delta (a quarter "
                   "of the requests on 8 sparse deltas of 10%% density), W-proxy (a quarter on 2 proxy adapters "
                   "sharing one anti-expert), W-int8 (W on the base quantized to int8 at load) "
                   "(default: all but W-int8)")
    p.add_argument("--engines", type=_csv(ENGINES), default=list(ENGINES),
                   help="comma-separated engines (default: deltaserve,peft)")
    p.add_argument("--num-requests", type=int, help="requests, all in one batch (default 64)")
    p.add_argument("--prompt-len", type=int, help="prompt tokens per request (default 64)")
    p.add_argument("--gen-len", type=int, help="generated tokens per request (default 64)")
    p.add_argument("--num-adapters", type=int,
                   help="adapters in the workload = adapters of variant W (default 32)")
    p.add_argument("--small", action="store_true",
                   help="smoke-size model (hidden 64, 2 layers) and workload (8 requests, "
                        "16+8 tokens, 4 adapters) for quick checks")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where both engines run (default auto: cuda if available, else cpu)")
    p.add_argument("--threads", type=int,
                   help="torch.set_num_threads(N) before running (default: torch's default)")
    p.add_argument("--mixed-prefill-decode", action="store_true",
                   help="deltaserve: prefills share steps with decodes "
                        "(EngineConfig.mixed_prefill_decode) instead of getting their own step")
    p.add_argument("--update-readme", action="store_true",
                   help="rewrite the results table of this device (CPU or CUDA) in "
                        "benchmarks/README.md")
    args = p.parse_args(argv)
    defaults = SMALL_DEFAULTS if args.small else FULL_DEFAULTS
    for key, val in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, val)
    for key in ("num_requests", "prompt_len", "gen_len"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be at least 1")
    if args.num_adapters < 0:
        p.error("--num-adapters must be >= 0")
    if args.prompt_len + args.gen_len > workload.MAX_POSITIONS:
        p.error(f"prompt + generated tokens must fit in {workload.MAX_POSITIONS} positions")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    elif args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # transformers 5 deprecation noise triggered inside PEFT's generate/load paths.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    raw_argv = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m benchmarks.run_w", *map(shlex.quote, raw_argv)])
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = report.machine_info(args.device)
    print(f"device: {report.device_label(machine)}"
          + (", mixed prefill/decode (deltaserve)" if args.mixed_prefill_decode else ""),
          flush=True)

    base_spec = workload.SMALL_SPEC if args.small else workload.W_SPEC
    spec = dataclasses.replace(base_spec, num_adapters=args.num_adapters)
    assets = workload.build(out, spec)
    prompts = assets.prompts(args.num_requests, args.prompt_len)

    from benchmarks import deltaserve_engine, peft_baseline

    runners = {
        "deltaserve": functools.partial(
            deltaserve_engine.run, device=args.device,
            mixed_prefill_decode=args.mixed_prefill_decode,
        ),
        "peft": functools.partial(peft_baseline.run, device=args.device),
    }
    results: list[RunResult] = []
    for engine in args.engines:
        for variant in args.variants:
            k = adapters_in(variant, spec.num_adapters)
            print(f"[{engine}] {variant}: {len(prompts)} requests x "
                  f"({args.prompt_len} prompt + {args.gen_len} generated) tokens, "
                  f"{k} adapters ...", flush=True)
            res = runners[engine](assets, variant, prompts, args.gen_len)
            if res.error:
                print(f"[{engine}] {variant}: {res.error}", flush=True)
            else:
                print(f"[{engine}] {variant}: {res.generated_tokens} tokens in "
                      f"{res.seconds:.2f} s = {res.tok_s:.1f} tok/s", flush=True)
            results.append(res)

    report.print_table(results)
    agree = report.agreement(results)
    for variant, a in agree.items():
        print(f"greedy agreement deltaserve vs peft, {variant}: {a['identical']}/"
              f"{a['requests']} identical, common prefix {a['common_prefix']} "
              "(informational)")

    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "command": command,
        "device": args.device,
        "threads": machine["torch_threads"],
        "threads_requested": args.threads,  # None: torch's default
        "mixed_prefill_decode": args.mixed_prefill_decode,
        "machine": machine,
        "workload": dataclasses.asdict(spec) | {
            "num_requests": args.num_requests, "prompt_len": args.prompt_len,
            "gen_len": args.gen_len,
        },
    }
    report.write_json(out / "results.json", results, meta)
    title = (f"workload {'W (small)' if args.small else 'W'}: {args.num_requests} requests, "
             f"{args.prompt_len}+{args.gen_len} tokens, {report.device_label(machine)}"
             + (", mixed prefill/decode" if args.mixed_prefill_decode else ""))
    # The reference figures and targets are 2-core CPU numbers: drawn on CPU runs only.
    report.plot(out / "throughput.png", results, title,
                with_reference=not args.small and args.device == "cpu")
    print(f"\nwrote {out / 'results.json'} and {out / 'throughput.png'}")
    if args.update_readme:
        report.update_readme(results, meta)
        print(f"updated {report.README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
