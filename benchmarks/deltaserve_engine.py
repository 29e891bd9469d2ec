"""deltaserve's own engine on workload W, through its offline `LLMEngine.generate` API.

The engine is imported lazily: while it is missing (or broken) the harness reports
"deltaserve engine not available" for this engine and still runs the PEFT baseline.
"""

from __future__ import annotations

import importlib
import time
import traceback
from types import SimpleNamespace

from benchmarks import plans
from benchmarks.common import (
    QUANTIZED_VARIANTS,
    SAMPLE_REQUESTS,
    RunResult,
    adapters_in,
    free_memory,
    sync,
    timed_repeats,
)
from benchmarks.workload import Assets

WARMUP_TOKENS = 4


def _api() -> SimpleNamespace:
    """The engine's public classes, imported by name (the engine is optional at import time)."""
    mods = {name: importlib.import_module(f"deltaserve.engine.{name}")
            for name in ("adapters.base", "config", "llm_engine", "sampling_params")}
    return SimpleNamespace(
        AdapterRequest=mods["adapters.base"].AdapterRequest,
        EngineConfig=mods["config"].EngineConfig,
        LLMEngine=mods["llm_engine"].LLMEngine,
        SamplingParams=mods["sampling_params"].SamplingParams,
    )


def unavailable_reason() -> str | None:
    """None when the engine imports; otherwise a one-line reason."""
    try:
        _api()
    except Exception as exc:  # ImportError, or an error inside a half-written module
        return f"deltaserve engine not available ({type(exc).__name__}: {exc})"
    return None


def _params(num_tokens: int):
    # Greedy, exactly num_tokens per request (min = max, EOS ignored), like the PEFT run.
    return _api().SamplingParams(
        max_tokens=num_tokens, min_tokens=num_tokens, temperature=0.0, ignore_eos=True
    )


def run(
    assets: Assets,
    variant: str,
    prompts: list[list[int]],
    gen_len: int,
    device: str = "cpu",
    mixed_prefill_decode: bool = False,
    repeats: int = 1,
) -> RunResult:
    """Measure generated tokens / wall second of one `generate` over all requests (the
    median of `repeats` timed calls).

    device: "cpu" or "cuda" (EngineConfig.device). mixed_prefill_decode: prefills share
    steps with decodes (EngineConfig.mixed_prefill_decode) instead of getting their own step.
    """
    k = adapters_in(variant, assets.spec.num_adapters)
    res = RunResult(
        engine="deltaserve", variant=variant, num_adapters=k, num_requests=len(prompts),
        prompt_len=len(prompts[0]), gen_len=gen_len,
    )
    reason = unavailable_reason()
    if reason:
        res.error = reason
        return res
    try:
        _measure(assets, prompts, gen_len, res, device, mixed_prefill_decode, repeats)
    except Exception as exc:  # report, keep the other runs going
        traceback.print_exc()
        res.error = f"deltaserve run failed ({type(exc).__name__}: {exc})"
    free_memory(device)
    return res


def _measure(
    assets: Assets,
    prompts: list[list[int]],
    gen_len: int,
    res: RunResult,
    device: str,
    mixed_prefill_decode: bool,
    repeats: int,
) -> None:
    api = _api()
    p = plans.plan(assets, res.variant, len(prompts))
    res.num_adapters = len(p.adapters)
    by_name = {a.name: api.AdapterRequest(name=a.name, path=str(a.path), kind=a.kind)
               for a in p.adapters}
    adapters = [None if a is None else by_name[a.name] for a in p.per_request]
    # The engine's defaults (dtype auto, adapter pool and proxy budgets): what a user gets.
    engine = api.LLMEngine(
        api.EngineConfig(
            model=str(assets.base_dir),
            max_num_seqs=len(prompts),
            device=device,
            mixed_prefill_decode=mixed_prefill_decode,
            quantization=QUANTIZED_VARIANTS.get(res.variant),
        )
    )

    # Warm up with the timed batch itself (a few tokens): every adapter loaded, and the same
    # prefill/decode shapes (kernel selection, allocator growth) seen once before timing.
    engine.generate(prompts, _params(WARMUP_TOKENS), adapters=adapters)

    # generate() already waits for the GPU (it reads the tokens back); the syncs make the
    # timed region's edges explicit on CUDA.
    def once() -> tuple[int, float]:
        sync(device)
        start = time.perf_counter()
        outs = engine.generate(prompts, _params(gen_len), adapters=adapters)
        sync(device)
        seconds = time.perf_counter() - start
        token_ids = [list(o.outputs[0].token_ids) for o in outs]
        res.sample_tokens = token_ids[:SAMPLE_REQUESTS]
        return sum(len(t) for t in token_ids), seconds

    timed_repeats(res, repeats, once)
    if res.generated_tokens != len(prompts) * gen_len:
        print(
            f"warning: deltaserve generated {res.generated_tokens} tokens, "
            f"expected {len(prompts) * gen_len}"
        )
