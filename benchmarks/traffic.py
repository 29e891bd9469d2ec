"""Workload R: multi-tenant chat traffic arriving over time (benchmarks/README.md, "Workload R").

16 tenants, each with its own LoRA of the W model and its own 768-token system prompt; every
request is a tenant's system prompt plus a fresh user turn of 64–256 tokens, asks for 64–128
tokens (EOS ignored), streams, and arrives by a Poisson process. All token ids, so every server
sees the same tokens. In the `fresh` variant every request gets a system prompt of its own
(nothing to share: what prefix caching is worth is the difference).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from benchmarks import corpus
from benchmarks.workload import Assets

TENANTS = 16
SYSTEM_LEN = 768
USER_LEN = (64, 256)
OUTPUT_LEN = (64, 128)
SHARED, FRESH = "shared", "fresh"
_SALT_SHIFT = 997  # tokens a salt step rotates the text by: windows then start elsewhere


@dataclass(frozen=True)
class ChatRequest:
    """One request of the trace: when it is sent (seconds after the start), by which tenant,
    with which LoRA, its prompt token ids and how many tokens it asks for."""

    at: float
    tenant: int
    adapter: str
    prompt: list[int]
    max_tokens: int


def trace(assets: Assets, variant: str, rate: float, num_requests: int,
          seed: int = 0, salt: int = 0) -> list[ChatRequest]:
    """The requests of one run: Poisson arrivals at `rate` per second. Deterministic per seed:
    the same tenants, lengths and (scaled by 1/rate) gaps at every rate, so rates and servers
    compare the same traffic shape. `salt` moves the user turns (and the fresh variant's system
    prompts) to other text, so consecutive runs on one server do not meet each other's prompts
    in the prefix cache; the shared variant's system prompts stay the tenants' own."""
    if variant not in (SHARED, FRESH):
        raise ValueError(f"variant must be {SHARED} or {FRESH}, got {variant!r}")
    rng = random.Random(seed)
    stream = token_stream(assets)
    moved = stream[salt * _SALT_SHIFT:] + stream[:salt * _SALT_SHIFT]
    systems = (windows(stream, TENANTS, SYSTEM_LEN) if variant == SHARED
               else windows(moved, num_requests, SYSTEM_LEN))
    users = windows(moved[::-1], num_requests, USER_LEN[1])  # from the other end, reversed
    at, out = 0.0, []
    for i in range(num_requests):
        at += rng.expovariate(1.0) / rate
        tenant = rng.randrange(TENANTS)
        system = systems[tenant if variant == SHARED else i]
        user = users[i][:rng.randint(*USER_LEN)]
        out.append(ChatRequest(at, tenant, assets.adapter_name(tenant), system + user,
                               rng.randint(*OUTPUT_LEN)))
    return out


def token_stream(assets: Assets) -> list[int]:
    """The whole corpus in the workload's tokenizer (the text the prompts are cut from)."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(assets.tokenizer_dir))
    return tok("\n\n".join(corpus.paragraphs()), add_special_tokens=False)["input_ids"]


def windows(stream: list[int], n: int, length: int) -> list[list[int]]:
    """n windows of `length` tokens starting at n distinct, evenly spread offsets (they may
    overlap when the stream is short, but no two start alike, so none is a prefix of another
    unless the text repeats itself)."""
    if len(stream) < length + n:
        raise ValueError(f"{len(stream)} tokens cannot give {n} windows of {length}")
    stride = (len(stream) - length) // n
    return [stream[i * stride:i * stride + length] for i in range(n)]
