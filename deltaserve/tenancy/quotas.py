"""Per-tenant quotas: admission, reconciliation and the x-ratelimit headers.

With --redis-url the counters live in Redis and every replica shares them; without it they are
local. When Redis fails, admissions fall back to this replica's local counters at once (logged,
`deltaserve_quota_redis_fallback` = 1) and Redis is retried every `retry_s`; once it answers,
the shared counters are used again, so replicas converge on one count. A request keeps the
limiter that admitted it until it finishes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from redis.exceptions import RedisError

from deltaserve.tenancy.errors import QuotaExceededError
from deltaserve.tenancy.ratelimit import Counts, Limiter, LocalLimiter, Window, now_s
from deltaserve.tenancy.tenants import TenantQuota

logger = logging.getLogger(__name__)

T = TypeVar("T")
_REDIS_ERRORS = (RedisError, OSError, asyncio.TimeoutError)

_FIELDS = {
    "requests": "requests_per_minute",
    "tokens": "tokens_per_minute",
    "concurrent_requests": "max_concurrent_requests",
}


@dataclass
class Reservation:
    """An admitted request's hold on its tenant's quota; finish it exactly once."""

    tenant: str
    tokens: int
    bucket: int
    lease: str
    limiter: Limiter
    headers: dict[str, str] = field(default_factory=dict)
    done: bool = False


class QuotaService:
    """Admits requests against their tenant's quota (see the module docstring)."""

    def __init__(
        self,
        quota_of: Callable[[str], TenantQuota],
        redis_url: str | None = None,
        on_fallback: Callable[[bool], None] = lambda active: None,
        clock: Callable[[], float] = now_s,
        retry_s: float = 1.0,
    ):
        self.quota_of = quota_of
        self.local = LocalLimiter()
        self.shared: Limiter | None = None
        if redis_url:
            from deltaserve.tenancy.ratelimit_redis import RedisLimiter

            self.shared = RedisLimiter(redis_url)
        self._on_fallback = on_fallback
        self._clock = clock
        self.retry_s = retry_s
        self.redis_down_since: float | None = None
        self._next_try = 0.0

    @property
    def backend(self) -> str:
        """Which counters admissions use now: redis, or local (no Redis, or an outage)."""
        return "redis" if self.shared is not None and self.redis_down_since is None else "local"

    async def _call(self, op: Callable[[Limiter], Awaitable[T]]) -> tuple[T, Limiter]:
        """Run `op` on the shared limiter when it is usable, else on the local one."""
        if self.shared is not None and time.monotonic() >= self._next_try:
            try:
                result = await op(self.shared)
            except _REDIS_ERRORS as exc:
                self._down(exc)
            else:
                self._up()
                return result, self.shared
        return await op(self.local), self.local

    def _down(self, exc: BaseException) -> None:
        self._next_try = time.monotonic() + self.retry_s
        if self.redis_down_since is None:
            self.redis_down_since = time.monotonic()
            logger.warning("quota counters: Redis unreachable (%s); using local limits",
                           type(exc).__name__)  # fmt: skip
            self._on_fallback(True)

    def _up(self) -> None:
        if self.redis_down_since is not None:
            logger.info("quota counters: Redis is back after %.1fs; shared limits again",
                        time.monotonic() - self.redis_down_since)  # fmt: skip
            self.redis_down_since = None
            self._on_fallback(False)

    async def admit(self, tenant: str, tokens: int) -> Reservation | None:
        """Count one request of `tokens` (prompt + max_tokens); None for an unlimited tenant.

        Raises QuotaExceededError naming the first limit that refused it.
        """
        quota = self.quota_of(tenant)
        if not quota.rate_limited:
            return None
        lease, now = uuid.uuid4().hex, self._clock()
        decision, limiter = await self._call(lambda lim: lim.admit(tenant, quota, tokens, lease, now))
        headers = ratelimit_headers(quota, decision.counts)
        if decision.refused is not None:
            retry = retry_after(quota, decision.counts, decision.refused, tokens)
            headers["retry-after"] = str(retry)
            refused = decision.refused
            raise QuotaExceededError(_message(quota, refused, tokens, retry), refused,
                                     f"{_FIELDS.get(refused, refused)}_exceeded", headers)  # fmt: skip
        return Reservation(tenant, tokens, decision.bucket, lease, limiter, headers)

    async def finish(self, res: Reservation, actual_tokens: int) -> None:
        """Free the concurrency slot and replace the reservation by the tokens really used."""
        if res.done:
            return
        res.done = True
        try:
            await res.limiter.finish(res.tenant, res.bucket, actual_tokens - res.tokens, res.lease)
        except _REDIS_ERRORS as exc:  # the lease expires by itself; the window rolls on
            self._down(exc)

    async def headers(self, tenant: str) -> dict[str, str]:
        """The x-ratelimit headers for any response to `tenant` (empty if it has no quota)."""
        quota = self.quota_of(tenant)
        if not quota.rate_limited:
            return {}
        counts = await self.counts(tenant)
        return ratelimit_headers(quota, counts)

    async def counts(self, tenant: str) -> Counts:
        now = self._clock()
        counts, _ = await self._call(lambda lim: lim.peek(tenant, now))
        return counts

    async def close(self) -> None:
        closer = getattr(self.shared, "close", None)
        if closer is not None:
            try:
                await closer()
            except _REDIS_ERRORS:
                pass


def retry_after(quota: TenantQuota, counts: Counts, limit: str, tokens: int) -> int:
    """Whole seconds (≥ 1) until the refused request could fit."""
    if limit == "requests" and quota.requests_per_minute is not None:
        wait = counts.requests.seconds_until(quota.requests_per_minute, 1)
    elif limit == "tokens" and quota.tokens_per_minute is not None:
        wait = counts.tokens.seconds_until(quota.tokens_per_minute, tokens)
    else:
        wait = 1.0  # a concurrency slot frees when some request ends
    return max(1, math.ceil(min(wait, 60.0)))


def ratelimit_headers(quota: TenantQuota, counts: Counts) -> dict[str, str]:
    """OpenAI's x-ratelimit-{limit,remaining,reset}-{requests,tokens} for the set limits."""
    out: dict[str, str] = {}
    for kind, limit, window in (
        ("requests", quota.requests_per_minute, counts.requests),
        ("tokens", quota.tokens_per_minute, counts.tokens),
    ):
        if limit is None:
            continue
        out[f"x-ratelimit-limit-{kind}"] = str(limit)
        out[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(limit - window.estimate())))
        out[f"x-ratelimit-reset-{kind}"] = format_duration(window.seconds_to_reset())
    return out


def format_duration(seconds: float) -> str:
    """OpenAI's style: 20ms, 6.5s, 1m0s."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    if seconds < 60:
        return f"{round(seconds, 1):g}s"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s"


def _message(quota: TenantQuota, limit: str, tokens: int, retry: int) -> str:
    if limit == "requests":
        what = f"requests per minute (limit {quota.requests_per_minute})"
    elif limit == "tokens":
        what = f"tokens per minute (limit {quota.tokens_per_minute}, requested {tokens})"
        if quota.tokens_per_minute is not None and tokens > quota.tokens_per_minute:
            return (f"This request needs {tokens} tokens (prompt + max_tokens), more than the "
                    f"tenant's limit of {quota.tokens_per_minute} tokens per minute; lower "
                    "max_tokens.")  # fmt: skip
    else:
        what = f"concurrent requests (limit {quota.max_concurrent_requests})"
    return f"Rate limit reached on {what}. Please try again in {retry}s."


def usage_body(tenant: str, quota: TenantQuota, counts: Counts, backend: str) -> dict[str, object]:
    """The admin usage view of one tenant."""

    def window(w: Window) -> dict[str, float]:
        return {"used": round(w.estimate(), 3), "reset_s": round(w.seconds_to_reset(), 3)}

    return {
        "object": "tenant.usage",
        "tenant": tenant,
        "limits": quota.model_dump(),
        "requests_per_minute": window(counts.requests),
        "tokens_per_minute": window(counts.tokens),
        "concurrent_requests": counts.concurrent,
        "counters": backend,
    }
