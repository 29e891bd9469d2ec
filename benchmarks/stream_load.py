"""Streamed requests sent on a schedule (workload R) to an OpenAI-compatible `/v1/completions`,
each timed token by token on the client: time to first token, time per output token after it,
and the gaps between streamed chunks (inter-token latency).

Each request: `prompt` = token ids, `max_tokens = min_tokens = N`, `ignore_eos`, greedy,
`stream` with `stream_options.include_usage` (the completion token count comes from usage).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from benchmarks.traffic import ChatRequest


@dataclass
class Timing:
    """What one streamed request looked like from the client (seconds)."""

    sent: float
    first: float | None = None
    last: float | None = None
    chunk_times: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def ttft(self) -> float:
        return self.first - self.sent

    @property
    def tpot(self) -> float | None:
        """Mean time per output token after the first (None for a single token)."""
        if self.completion_tokens < 2:
            return None
        return (self.last - self.first) / (self.completion_tokens - 1)

    @property
    def itls(self) -> list[float]:
        return [b - a for a, b in zip(self.chunk_times, self.chunk_times[1:], strict=False)]


def body(model: str, req: ChatRequest) -> dict:
    return {"model": model, "prompt": req.prompt, "max_tokens": req.max_tokens,
            "min_tokens": req.max_tokens, "ignore_eos": True, "temperature": 0.0,
            "stream": True, "stream_options": {"include_usage": True}}


async def _one(client: httpx.AsyncClient, model: str, req: ChatRequest, t0: float) -> Timing:
    await asyncio.sleep(max(0.0, t0 + req.at - time.perf_counter()))
    t = Timing(sent=time.perf_counter())
    async with client.stream("POST", "/v1/completions", json=body(model, req)) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code} for {model!r}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            now = time.perf_counter()
            chunk = json.loads(line[6:])
            if chunk.get("choices"):  # a token (its text may be empty: partial UTF-8, specials)
                t.first = t.first or now
                t.last = now
                t.chunk_times.append(now)
            if chunk.get("usage"):
                usage = chunk["usage"]
                t.completion_tokens = usage["completion_tokens"]
                t.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    if t.first is None:
        raise RuntimeError(f"no token streamed for {model!r}")
    return t


async def _run(base_url: str, models: list[str], reqs: list[ChatRequest],
               on_done: Callable[[int], None] | None) -> tuple[list[Timing], float]:
    limits = httpx.Limits(max_connections=len(reqs), max_keepalive_connections=len(reqs))
    async with httpx.AsyncClient(base_url=base_url, limits=limits,
                                 timeout=httpx.Timeout(1800.0, connect=30.0)) as client:
        done = 0

        async def tracked(model: str, req: ChatRequest, t0: float) -> Timing:
            nonlocal done
            t = await _one(client, model, req, t0)
            done += 1
            if on_done is not None:
                on_done(done)
            return t

        t0 = time.perf_counter()
        timings = await asyncio.gather(*(tracked(m, r, t0)
                                         for m, r in zip(models, reqs, strict=True)))
    return timings, t0


def run(base_url: str, models: list[str], reqs: list[ChatRequest],
        on_done: Callable[[int], None] | None = None) -> tuple[list[Timing], float]:
    """Send every request at its time (`at` seconds after the start); returns each request's
    Timing and the start (perf_counter seconds)."""
    return asyncio.run(_run(base_url, models, reqs, on_done))
