"""When and how long to wait before retrying a request.

Retried: 429 (quota or queue full), 503 (starting, draining, store outage) and failures to get
a response at all (connection refused or dropped, connect/pool timeouts). Never retried: any
other status (a 400 stays a 400), and read timeouts (the server may still be generating; a
retry would run the generation twice). The wait is the server's `Retry-After` when it sends
a usable one, else exponential backoff with jitter: `initial * 2**attempt`, capped at
`max_delay`, minus up to `jitter` of itself so that many clients do not retry in lockstep.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass

import httpx

RETRY_STATUSES = frozenset({429, 503})
MAX_RETRY_AFTER_S = 60.0
"""A longer `Retry-After` is not waited for in-process: backoff is used instead."""


@dataclass(frozen=True)
class RetryPolicy:
    """How a client retries. `max_retries` = extra attempts after the first (0: never retry)."""

    max_retries: int = 2
    initial_delay: float = 0.5
    """Seconds before the first retry (before jitter)."""
    max_delay: float = 8.0
    """Longest computed backoff, in seconds."""
    jitter: float = 0.25
    """Fraction of the delay removed at random (0: deterministic)."""

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if self.initial_delay < 0 or self.max_delay < 0 or not 0 <= self.jitter <= 1:
            raise ValueError("delays must be >= 0 and jitter within [0, 1]")

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (0-based), without a hint."""
        delay = min(self.max_delay, self.initial_delay * (2.0**attempt))
        return delay * (1.0 - self.jitter * random.random())

    def delay(self, attempt: int, response: httpx.Response | None) -> float:
        """The wait before the next attempt: the server's Retry-After if usable, else backoff."""
        hint = retry_after(response.headers) if response is not None else None
        if hint is not None and 0 <= hint <= MAX_RETRY_AFTER_S:
            return hint
        return self.backoff(attempt)


def retry_after(headers: httpx.Headers) -> float | None:
    """Seconds the server asks us to wait: `retry-after-ms`, or `Retry-After` as seconds or an
    HTTP date; None when absent or unparsable."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    return email.utils.mktime_tz(parsed) - time.time()


def should_retry_status(status_code: int) -> bool:
    """True for the statuses a retry may fix."""
    return status_code in RETRY_STATUSES


def should_retry_exception(exc: httpx.HTTPError) -> bool:
    """True for transport failures where no response came back. A dropped connection may
    have run the request once already: a generation is then repeated, and a repeated adapter
    registration answers 409 (ConflictError)."""
    if isinstance(exc, httpx.TimeoutException):
        return isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout)
    return isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError)
