"""Sliding-window rate limiting: the window arithmetic and the replica-local limiter.

Both limiters (this local one and the Redis one in ratelimit_redis.py) keep, per tenant, a
counter per fixed window (bucket = floor(now / window_s)) of requests and of tokens, and
estimate the sliding window as `prev · (1 − elapsed/window_s) + cur` (the two-bucket sliding
window). Concurrency is a set of leases with an expiry, so a replica that dies cannot hold a
tenant's slots for ever. An admission checks every limit and counts nothing unless all pass.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Protocol

from deltaserve.tenancy.tenants import TenantQuota

WINDOW_S = 60.0
LEASE_TTL_S = 900.0
"""A concurrency slot expires this long after admission even if its finish never arrives."""

LIMITS = ("requests", "tokens", "concurrent_requests")
"""Names of the per-request limits, as 429 bodies and metrics call them."""


@dataclass(frozen=True)
class Window:
    """One counter's two buckets as seen at one instant."""

    prev: int
    cur: int
    frac: float
    """Elapsed fraction of the current bucket, in [0, 1)."""

    def estimate(self) -> float:
        return self.prev * (1.0 - self.frac) + self.cur

    def seconds_until(self, limit: int, cost: int, window_s: float = WINDOW_S) -> float:
        """How long until `cost` more fits under `limit` (inf if it never can)."""
        if cost > limit:
            return math.inf
        if self.estimate() + cost <= limit:
            return 0.0
        rest_of_bucket = window_s * (1.0 - self.frac)
        if self.cur + cost <= limit:  # prev's share decays at prev/window_s per second
            return (self.estimate() + cost - limit) * window_s / self.prev
        # next bucket: cur (then prev) decays; need cur · (1 − s/window_s) + cost ≤ limit
        return rest_of_bucket + window_s * (1.0 - (limit - cost) / self.cur)

    def seconds_to_reset(self, window_s: float = WINDOW_S) -> float:
        """How long until the window is back to its initial (empty) state."""
        rest_of_bucket = window_s * (1.0 - self.frac)
        if self.cur > 0:
            return rest_of_bucket + window_s
        return rest_of_bucket if self.prev > 0 else 0.0


@dataclass(frozen=True)
class Counts:
    """A tenant's usage as one limiter saw it."""

    requests: Window
    tokens: Window
    concurrent: int


@dataclass(frozen=True)
class Decision:
    refused: str | None
    """The first limit that refused (one of LIMITS), None when admitted."""
    counts: Counts
    """Usage after the admission (before it, when refused)."""
    bucket: int
    """The window bucket the admission was counted in (finish reconciles tokens there)."""


class Limiter(Protocol):
    async def admit(
        self, tenant: str, quota: TenantQuota, tokens: int, lease: str, now: float
    ) -> Decision: ...

    async def finish(self, tenant: str, bucket: int, token_delta: int, lease: str) -> None:
        """Free the lease; add `token_delta` (actual − reserved) to the bucket if it still exists."""
        ...

    async def peek(self, tenant: str, now: float) -> Counts: ...


def bucket_of(now: float, window_s: float = WINDOW_S) -> tuple[int, float]:
    """(bucket index, elapsed fraction of it)."""
    b = math.floor(now / window_s)
    return b, now / window_s - b


def refusal(quota: TenantQuota, counts: Counts, tokens: int) -> str | None:
    """Which limit an admission of one request of `tokens` would break (None: it fits)."""
    rpm, tpm, conc = quota.requests_per_minute, quota.tokens_per_minute, quota.max_concurrent_requests
    if rpm is not None and counts.requests.estimate() + 1 > rpm:
        return "requests"
    if tpm is not None and counts.tokens.estimate() + tokens > tpm:
        return "tokens"
    if conc is not None and counts.concurrent + 1 > conc:
        return "concurrent_requests"
    return None


class LocalLimiter:
    """Counters in this process (no Redis, or during a Redis outage)."""

    def __init__(self, window_s: float = WINDOW_S, lease_ttl_s: float = LEASE_TTL_S):
        self.window_s = window_s
        self.lease_ttl_s = lease_ttl_s
        self._buckets: dict[tuple[str, str, int], int] = {}
        """(tenant, "r" | "t", bucket) → count."""
        self._leases: dict[str, dict[str, float]] = {}
        """tenant → lease id → expiry (time.time seconds)."""

    def _counts(self, tenant: str, now: float) -> tuple[Counts, int]:
        b, frac = bucket_of(now, self.window_s)
        get = self._buckets.get
        leases = self._leases.setdefault(tenant, {})
        for lease in [k for k, exp in leases.items() if exp <= now]:
            del leases[lease]
        counts = Counts(
            Window(get((tenant, "r", b - 1), 0), get((tenant, "r", b), 0), frac),
            Window(get((tenant, "t", b - 1), 0), get((tenant, "t", b), 0), frac),
            len(leases),
        )
        return counts, b

    async def admit(
        self, tenant: str, quota: TenantQuota, tokens: int, lease: str, now: float
    ) -> Decision:
        counts, b = self._counts(tenant, now)
        refused = refusal(quota, counts, tokens)
        if refused is not None:
            return Decision(refused, counts, b)
        self._gc(b)
        self._buckets[(tenant, "r", b)] = counts.requests.cur + 1
        self._buckets[(tenant, "t", b)] = counts.tokens.cur + tokens
        self._leases[tenant][lease] = now + self.lease_ttl_s
        after, _ = self._counts(tenant, now)
        return Decision(None, after, b)

    async def finish(self, tenant: str, bucket: int, token_delta: int, lease: str) -> None:
        self._leases.get(tenant, {}).pop(lease, None)
        key = (tenant, "t", bucket)
        if token_delta and key in self._buckets:
            self._buckets[key] = max(0, self._buckets[key] + token_delta)

    async def peek(self, tenant: str, now: float) -> Counts:
        return self._counts(tenant, now)[0]

    def _gc(self, current: int) -> None:
        for key in [k for k in self._buckets if k[2] < current - 1]:
            del self._buckets[key]


def now_s() -> float:
    return time.time()
