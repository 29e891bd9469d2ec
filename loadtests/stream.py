"""Reading an OpenAI server-sent event stream and timing it from the client's side.

TTFT: request sent → first chunk carrying generated text. TPOT: the mean gap between
generated tokens after the first, (t_last − t_first) / (tokens − 1), with the token count
taken from the final usage chunk (`stream_options.include_usage`) when the server sends one,
else from the number of text chunks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass
class StreamTiming:
    ttft_s: float | None = None
    tpot_s: float | None = None
    tokens: int = 0
    error: str | None = None
    done: bool = False


def _text_of(payload: dict) -> str:
    """Generated text in one chunk: chat deltas' `content` or completions' `text`."""
    parts = []
    for choice in payload.get("choices") or ():
        if "delta" in choice:
            parts.append((choice["delta"] or {}).get("content") or "")
        else:
            parts.append(choice.get("text") or "")
    return "".join(parts)


def read_stream(
    lines: Iterable[bytes | str], start: float, clock: Callable[[], float] = time.perf_counter
) -> StreamTiming:
    """Consume the stream's lines; `start` is the `clock()` reading when the request was sent."""
    timing = StreamTiming()
    first = last = None
    chunks = 0
    usage_tokens = None
    for raw in lines:
        line = raw.decode() if isinstance(raw, bytes) else raw
        if not line.startswith("data:"):
            continue
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            timing.done = True
            break
        payload = json.loads(data)
        if "error" in payload:
            timing.error = str(payload["error"].get("message", payload["error"]))
            break
        if payload.get("usage"):
            usage_tokens = payload["usage"].get("completion_tokens")
        if _text_of(payload):
            now = clock()
            first = now if first is None else first
            last = now
            chunks += 1
    if not timing.done and timing.error is None:
        timing.error = "the stream ended without data: [DONE]"
    timing.tokens = usage_tokens if usage_tokens is not None else chunks
    if first is not None:
        timing.ttft_s = first - start
        if timing.tokens > 1 and last is not None:
            timing.tpot_s = (last - first) / (timing.tokens - 1)
    return timing
