"""The shared limiter: the same sliding windows as ratelimit.py, in Redis, for every replica.

Each admission is one Lua script (atomic in Redis: no two replicas can both take the last
slot). Keys, all under `deltaserve:quota:{<tenant>}:` (the braces keep a tenant's keys in one
cluster slot): `r:<bucket>` and `t:<bucket>` (requests and tokens counted in that window
bucket, expiring after two windows) and `leases` (a sorted set of in-flight request ids scored
by their expiry). Redis errors propagate: quotas.py falls back to the local limiter.
"""

from __future__ import annotations

import math

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from deltaserve.tenancy.ratelimit import (
    LEASE_TTL_S,
    LIMITS,
    WINDOW_S,
    Counts,
    Decision,
    Window,
    bucket_of,
)
from deltaserve.tenancy.tenants import TenantQuota

# KEYS: r_prev r_cur t_prev t_cur leases
# ARGV: now frac rpm tpm conc tokens lease expiry ttl   (a limit of -1 = unlimited)
# → {refused (0 = admitted, else 1-based index into LIMITS), r_prev, r_cur, t_prev, t_cur, conc}
_ADMIT = """
local now, frac = tonumber(ARGV[1]), tonumber(ARGV[2])
local rpm, tpm, conc_max = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local tokens = tonumber(ARGV[6])
local rp = tonumber(redis.call('GET', KEYS[1]) or '0')
local rc = tonumber(redis.call('GET', KEYS[2]) or '0')
local tp = tonumber(redis.call('GET', KEYS[3]) or '0')
local tc = tonumber(redis.call('GET', KEYS[4]) or '0')
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
local conc = redis.call('ZCARD', KEYS[5])
local refused = 0
if rpm >= 0 and rp * (1 - frac) + rc + 1 > rpm then refused = 1
elseif tpm >= 0 and tp * (1 - frac) + tc + tokens > tpm then refused = 2
elseif conc_max >= 0 and conc + 1 > conc_max then refused = 3 end
if refused == 0 then
  rc = redis.call('INCR', KEYS[2])
  redis.call('EXPIRE', KEYS[2], ARGV[9])
  tc = redis.call('INCRBY', KEYS[4], tokens)
  redis.call('EXPIRE', KEYS[4], ARGV[9])
  redis.call('ZADD', KEYS[5], ARGV[8], ARGV[7])
  redis.call('EXPIRE', KEYS[5], ARGV[9] * 20)
  conc = conc + 1
end
return {refused, rp, rc, tp, tc, conc}
"""

# KEYS: t_bucket leases   ARGV: token_delta lease
_FINISH = """
redis.call('ZREM', KEYS[2], ARGV[2])
local delta = tonumber(ARGV[1])
if delta ~= 0 and redis.call('EXISTS', KEYS[1]) == 1 then
  local v = redis.call('INCRBY', KEYS[1], delta)
  if v < 0 then redis.call('SET', KEYS[1], 0, 'KEEPTTL') end
end
return 1
"""


def _prefix(tenant: str) -> str:
    return f"deltaserve:quota:{{{tenant}}}:"


class RedisLimiter:
    """Limiter over one Redis (redis-py asyncio); short timeouts so an outage is noticed fast."""

    def __init__(self, url: str, window_s: float = WINDOW_S, lease_ttl_s: float = LEASE_TTL_S,
                 timeout_s: float = 0.5):  # fmt: skip
        self.window_s = window_s
        self.lease_ttl_s = lease_ttl_s
        self._redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )  # fmt: skip
        self._admit = self._redis.register_script(_ADMIT)
        self._finish = self._redis.register_script(_FINISH)

    def _keys(self, tenant: str, b: int) -> list[str]:
        p = _prefix(tenant)
        return [f"{p}r:{b - 1}", f"{p}r:{b}", f"{p}t:{b - 1}", f"{p}t:{b}", f"{p}leases"]

    async def admit(
        self, tenant: str, quota: TenantQuota, tokens: int, lease: str, now: float
    ) -> Decision:
        b, frac = bucket_of(now, self.window_s)

        def lim(v: int | None) -> int:
            return -1 if v is None else v

        args = [now, frac, lim(quota.requests_per_minute), lim(quota.tokens_per_minute),
                lim(quota.max_concurrent_requests), tokens, lease, now + self.lease_ttl_s,
                math.ceil(2 * self.window_s)]  # fmt: skip
        refused, rp, rc, tp, tc, conc = await self._admit(keys=self._keys(tenant, b), args=args)
        counts = Counts(Window(int(rp), int(rc), frac), Window(int(tp), int(tc), frac), int(conc))
        return Decision(LIMITS[int(refused) - 1] if refused else None, counts, b)

    async def finish(self, tenant: str, bucket: int, token_delta: int, lease: str) -> None:
        p = _prefix(tenant)
        await self._finish(keys=[f"{p}t:{bucket}", f"{p}leases"], args=[token_delta, lease])

    async def peek(self, tenant: str, now: float) -> Counts:
        b, frac = bucket_of(now, self.window_s)
        keys = self._keys(tenant, b)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.mget(keys[:4])
            pipe.zcount(keys[4], f"({now}", "+inf")
            values, conc = await pipe.execute()
        rp, rc, tp, tc = (int(v or 0) for v in values)
        return Counts(Window(rp, rc, frac), Window(tp, tc, frac), int(conc))

    async def close(self) -> None:
        await self._redis.aclose()
