"""What every engine runner shares: the variants, the request→adapter map, and the result row."""

from __future__ import annotations

import gc
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

# Variant name -> number of distinct adapters the requests use (None = all the workload has).
# W-8 caps at the workload's adapter count so a --small run (4 adapters) still works.
# W-delta: a quarter of the requests use 8 sparse deltas (10% density), the rest the base.
# W-proxy: a quarter of the requests use 2 proxy adapters (experts sharing one anti-expert).
# W-int8: W's traffic over the base quantized to int8 at load (--quantization int8).
# W-qwen3 / W-gemma3: W's traffic over a Qwen3 / Gemma 3 base of W's sizes, with its own LoRAs.
VARIANTS: dict[str, int | None] = {"W-base": 0, "W-8": 8, "W": None, "W-delta": 8,
                                   "W-proxy": 2, "W-int8": None, "W-qwen3": None,
                                   "W-gemma3": None}
QUANTIZED_VARIANTS: dict[str, str] = {"W-int8": "int8"}
"""Variants on a quantized base -> its --quantization; deltaserve only, and run only when
asked for (--variants W-int8): they are not in DEFAULT_VARIANTS."""
ARCH_VARIANTS: dict[str, str] = {"W-qwen3": "qwen3", "W-gemma3": "gemma3"}
"""Variants on a base of another architecture -> its ModelSpec.arch (their own assets and
server); run only when asked for (--variants W-qwen3): they are not in DEFAULT_VARIANTS."""
DEFAULT_VARIANTS = [v for v in VARIANTS if v not in QUANTIZED_VARIANTS | ARCH_VARIANTS]
DELTA_VARIANTS = frozenset({"W-delta"})
PROXY_VARIANTS = frozenset({"W-proxy"})
"""Variants whose adapters are proxy adapters (benchmarks/proxy_assets.py); deltaserve only."""
"""Variants whose adapters are sparse deltas (benchmarks/delta_assets.py), not the LoRAs."""
ENGINES = ("deltaserve", "peft")
SAMPLE_REQUESTS = 4  # how many requests' tokens each run keeps to compare engines


def adapters_in(variant: str, num_adapters: int) -> int:
    """How many distinct adapters `variant` uses when the workload has `num_adapters`."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    k = VARIANTS[variant]
    return num_adapters if k is None else min(k, num_adapters)


def variants_by_arch(variants: list[str]) -> dict[str, list[str]]:
    """`variants` grouped by the arch of their base ("llama" for W's own), in order of first
    appearance: each group runs on its own assets."""
    groups: dict[str, list[str]] = {}
    for v in variants:
        groups.setdefault(ARCH_VARIANTS.get(v, "llama"), []).append(v)
    return groups


def round_robin(num_requests: int, k: int) -> list[int | None]:
    """Adapter index of each request: 0, 1, ..., k-1, 0, 1, ...; None (base) when k == 0."""
    return [None if k == 0 else i % k for i in range(num_requests)]


@dataclass
class RunResult:
    """One (engine, variant) measurement."""

    engine: str
    variant: str
    num_adapters: int
    num_requests: int
    prompt_len: int
    gen_len: int
    generated_tokens: int = 0
    seconds: float = 0.0
    error: str | None = None
    """Why there is no measurement (engine missing or failed); tok_s is then 0."""
    sample_tokens: list[list[int]] = field(default_factory=list)
    """Generated token ids of the first SAMPLE_REQUESTS requests, to compare engines."""
    run_seconds: list[float] = field(default_factory=list)
    """Wall seconds of each timed repetition; `seconds` is their median."""

    @property
    def tok_s(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 and not self.error else 0.0

    def to_json(self) -> dict:
        return {
            "engine": self.engine,
            "variant": self.variant,
            "num_adapters": self.num_adapters,
            "num_requests": self.num_requests,
            "prompt_len": self.prompt_len,
            "gen_len": self.gen_len,
            "generated_tokens": self.generated_tokens,
            "seconds": round(self.seconds, 4),
            "run_seconds": [round(s, 4) for s in self.run_seconds],
            "tok_s": round(self.tok_s, 2),
            "error": self.error,
            "sample_tokens": self.sample_tokens,
        }


def timed_repeats(res: RunResult, repeats: int, once: Callable[[], tuple[int, float]]) -> None:
    """Run `once` (one timed load: returns the tokens it generated and its wall seconds)
    `repeats` times and keep the median: on a small shared VM single runs move by ±10%, more
    than some of the ratios the targets compare. Sets res.run_seconds, res.seconds (the
    median) and res.generated_tokens."""
    for _ in range(max(1, repeats)):
        res.generated_tokens, seconds = once()
        res.run_seconds.append(seconds)
    res.seconds = statistics.median(res.run_seconds)


def sync(device: str) -> None:
    """Wait for queued GPU work, so a clock read around it sees it finished (no-op on CPU)."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def free_memory(device: str = "cpu") -> None:
    """Drop the previous run's model before loading the next (CPU RAM / GPU memory is shared)."""
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()
