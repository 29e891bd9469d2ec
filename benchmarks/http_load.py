"""The HTTP load of the served rows: all requests of a variant sent at once by concurrent
clients to an OpenAI-compatible `/v1/completions` (deltaserve or vLLM), timed end to end.

Each request: `prompt` = the request's token ids (no BOS added), `max_tokens = min_tokens = G`,
`ignore_eos`, `temperature 0`, non-streaming; `model` = the adapter's name or the base's id.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from benchmarks.common import RunResult, timed_repeats

WARMUP_TOKENS = 4


@dataclass
class LoadResult:
    seconds: float
    completion_tokens: int
    texts: list[str]


def body(model: str, prompt: list[int], gen_len: int) -> dict:
    """The completion request of one client (vLLM's extensions for exactly gen_len tokens)."""
    return {"model": model, "prompt": prompt, "max_tokens": gen_len, "min_tokens": gen_len,
            "ignore_eos": True, "temperature": 0.0}


async def _send_all(base_url: str, models: list[str], prompts: list[list[int]], gen_len: int,
                    on_done: Callable[[int], None] | None) -> LoadResult:
    limits = httpx.Limits(max_connections=len(prompts), max_keepalive_connections=len(prompts))
    async with httpx.AsyncClient(base_url=base_url, limits=limits,
                                 timeout=httpx.Timeout(1800.0, connect=30.0)) as client:
        done = 0

        async def one(model: str, prompt: list[int]) -> dict:
            nonlocal done
            r = await client.post("/v1/completions", json=body(model, prompt, gen_len))
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code} for model {model!r}: {r.text[:300]}")
            done += 1
            if on_done is not None:
                on_done(done)
            return r.json()

        start = time.perf_counter()
        outs = await asyncio.gather(*(one(m, p) for m, p in zip(models, prompts, strict=True)))
        seconds = time.perf_counter() - start
    return LoadResult(seconds=seconds,
                      completion_tokens=sum(o["usage"]["completion_tokens"] for o in outs),
                      texts=[o["choices"][0]["text"] for o in outs])


def send_all(base_url: str, models: list[str], prompts: list[list[int]], gen_len: int,
             on_done: Callable[[int], None] | None = None) -> LoadResult:
    """One concurrent client per request; wall seconds from the first send to the last reply."""
    return asyncio.run(_send_all(base_url, models, prompts, gen_len, on_done))


def measure(base_url: str, res: RunResult, models: list[str], prompts: list[list[int]],
            gen_len: int, progress: Callable[[str], None] = print, repeats: int = 1) -> None:
    """Warm-up (every request, WARMUP_TOKENS tokens: all adapters loaded, every batch shape
    seen), then the timed load `repeats` times; fills res.seconds (the median run: from the
    first send to the last reply), res.run_seconds and res.generated_tokens."""
    send_all(base_url, models, prompts, WARMUP_TOKENS)
    step = max(1, len(prompts) // 4)

    def on_done(n: int) -> None:
        if n % step == 0 or n == len(prompts):
            progress(f"  {n}/{len(prompts)} requests done")

    def once() -> tuple[int, float]:
        out = send_all(base_url, models, prompts, gen_len, on_done)
        progress(f"  run {len(res.run_seconds) + 1}/{repeats}: "
                 f"{out.completion_tokens / out.seconds:.1f} tok/s")
        return out.completion_tokens, out.seconds

    timed_repeats(res, repeats, once)
