"""Prometheus metrics (DESIGN §2): the only module that imports prometheus_client.

Each app owns a `ServerMetrics` with its own CollectorRegistry (several apps in one process —
tests — never share series). Request-level histograms and counters are recorded by the serving
layer when a request finishes; engine gauges (queue, KV usage, batch, adapters) are read from
`engine.stats()` at scrape time by a custom collector, so they are never stale.
Label values stay bounded: adapter names appear only in `deltaserve_lora_requests_info`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from deltaserve.engine.protocol import EngineStats

TIERS = ("device", "host", "redis", "origin")
"""Adapter cache tiers, nearest first."""

FINISH_REASONS = ("stop", "length", "abort")

# 1 ms … 5 min: CPU decode steps are tens of ms to seconds, GPU ones around a millisecond.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip

CONTENT_TYPE = CONTENT_TYPE_LATEST

# `*_created` series only add noise to every scrape (vLLM turns them off too).
disable_created_metrics()


class _EngineCollector(Collector):
    """Turns one `EngineStats` snapshot per scrape into gauges and cumulative counters."""

    def __init__(self, stats: Callable[[], EngineStats | None], extra: ServerMetrics):
        self._stats = stats
        self._extra = extra

    def collect(self) -> Iterator[Metric]:
        s = self._stats() or EngineStats()
        yield _gauge(
            "deltaserve_num_requests_running", "Requests in the running batch.", s.num_running
        )
        yield _gauge(
            "deltaserve_num_requests_waiting", "Requests waiting to be scheduled.", s.num_waiting
        )
        yield _gauge(
            "deltaserve_kv_cache_usage_perc",
            "Fraction (0..1) of KV-cache blocks in use (vLLM's convention).",
            s.kv_cache_usage,
        )
        yield _gauge(
            "deltaserve_batch_size", "Sequences in the last engine step.", s.last_batch_size
        )
        yield _gauge(
            "deltaserve_batch_adapters",
            "Distinct adapters in the last engine step.",
            s.last_batch_adapters,
        )
        yield _lora_info(s)
        yield _engine_info(s)
        yield from self._extra.health_families()
        yield from self._extra.resident_families(s)
        yield _counter(
            "deltaserve_num_preemptions",
            "Sequences preempted by the scheduler.",
            s.num_preemptions_total,
        )
        yield _counter("deltaserve_engine_steps", "Engine steps executed.", s.steps_total)
        yield from self._extra.adapter_cache_families(s)
        yield from _prefix_cache_families(s)


PREFIX_KINDS = ("base", "lora", "sparse_delta")
"""Row kinds the native engine's prefix cache serves (mixes run as LoRAs; proxy rows are not
cached): the `kind` label's values, always all present so rates never start from nothing."""


def _prefix_cache_families(s: EngineStats) -> Iterator[Metric]:
    """Prompt tokens looked up in the prefix cache and found there (vLLM's
    prefix_cache_queries / prefix_cache_hits), per row kind."""
    for name, doc, values in (
        ("deltaserve_prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
         getattr(s, "prefix_cache_queries", None) or {}),
        ("deltaserve_prefix_cache_hits", "Prompt tokens found in the prefix cache.",
         getattr(s, "prefix_cache_hits", None) or {}),
    ):
        family = CounterMetricFamily(name, doc, labels=["kind"])
        for kind in PREFIX_KINDS:
            family.add_metric([kind], float(values.get(kind, 0)))
        yield family


def _lora_info(s: EngineStats) -> GaugeMetricFamily:
    """The gateway inference extension's adapter gauge (vLLM's shape); value = scrape time."""
    info = GaugeMetricFamily(
        "deltaserve_lora_requests_info",
        "Adapters running and waiting (gateway inference-extension protocol).",
        labels=["max_lora", "running_lora_adapters", "waiting_lora_adapters"],
    )
    labels = [str(s.max_loras), ",".join(s.running_adapters), ",".join(s.waiting_adapters)]
    info.add_metric(labels, time.time())
    return info


def _engine_info(s: EngineStats) -> GaugeMetricFamily:
    """Constant 1, labelled with what the engine chose at start-up (device, dtype)."""
    info = GaugeMetricFamily(
        "deltaserve_engine_info",
        "The engine's configuration chosen at start-up (value always 1).",
        labels=["device", "dtype", "max_lora"],
    )
    info.add_metric([s.device, s.dtype, str(s.max_loras)], 1)
    return info


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=float(value))


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=float(value))


class ServerMetrics:
    """All metrics of one server; recording methods are thread-safe."""

    def __init__(self, stats: Callable[[], EngineStats | None]):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.ttft = Histogram(
            "deltaserve_time_to_first_token_seconds",
            "Time from request arrival to its first generated token.",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.tpot = Histogram(
            "deltaserve_time_per_output_token_seconds",
            "Mean time between generated tokens of a request, after the first.",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.e2e = Histogram(
            "deltaserve_e2e_request_latency_seconds",
            "Time from request arrival to its last token.",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.prompt_tokens = Counter(
            "deltaserve_prompt_tokens", "Prompt tokens processed.", registry=r
        )
        self.generation_tokens = Counter(
            "deltaserve_generation_tokens", "Tokens generated.", registry=r
        )
        self.request_success = Counter(
            "deltaserve_request_success",
            "Finished sequences by finish reason.",
            ["finished_reason"],
            registry=r,
        )
        self.adapter_load = Histogram(
            "deltaserve_adapter_load_seconds",
            "Time to bring an adapter into a tier (from the next tier out).",
            ["tier"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.http_requests = Counter(
            "deltaserve_http_requests",
            "HTTP responses by tenant, route template and status code.",
            ["tenant", "route", "code"], registry=r,
        )  # fmt: skip
        for reason in FINISH_REASONS:
            self.request_success.labels(reason)
        for tier in TIERS:
            self.adapter_load.labels(tier)
        self._lock = threading.Lock()
        self._hits = dict.fromkeys(TIERS, 0)
        self._misses = dict.fromkeys(TIERS, 0)
        self._store_stats: Callable[[], dict[str, tuple[int, int]]] | None = None
        self._health: Callable[[], tuple[bool, bool | None]] | None = None
        r.register(_EngineCollector(stats, self))
        self.tenants = TenantMetrics(r)

    def set_quota_fallback(self, active: bool) -> None:
        """Quota counters fell back to local limits (Redis outage) or are shared again."""
        self.tenants.fallback.set(1 if active else 0)
        if active:
            self.tenants.fallbacks.inc()

    def set_store_stats(self, stats: Callable[[], dict[str, tuple[int, int]]]) -> None:
        """The adapter store's (count, bytes) per tier it owns (redis, origin)."""
        self._store_stats = stats

    def set_health(self, health: Callable[[], tuple[bool, bool | None]]) -> None:
        """(ready as /ready reports it, Redis reachable — None when no Redis is configured)."""
        self._health = health

    def record_http(self, tenant: str, route: str, code: int) -> None:
        """One HTTP response; `route` is the route template (bounded), tenants come from keys."""
        self.http_requests.labels(tenant, route, str(code)).inc()

    def health_families(self) -> Iterator[Metric]:
        """`deltaserve_ready` (1/0) and, with a Redis backend, `deltaserve_redis_up` (1/0)."""
        ready, redis_up = self._health() if self._health is not None else (False, None)
        yield _gauge("deltaserve_ready", "1 when /ready answers 200, else 0.", float(ready))
        if redis_up is not None:
            yield _gauge(
                "deltaserve_redis_up", "1 while the shared Redis store is reachable.", redis_up
            )

    def record_request(
        self,
        prompt_tokens: int,
        generation_tokens: int,
        finish_reasons: list[str],
        ttft_s: float | None,
        e2e_s: float,
    ) -> None:
        """One engine request is over (finished or aborted)."""
        self.prompt_tokens.inc(prompt_tokens)
        self.generation_tokens.inc(generation_tokens)
        for reason in finish_reasons:
            label = reason if reason in FINISH_REASONS else "abort"
            self.request_success.labels(label).inc()
        if ttft_s is not None:
            self.ttft.observe(ttft_s)
        self.e2e.observe(e2e_s)

    def record_inter_token(self, mean_s: float) -> None:
        """Mean time per output token of one finished sequence (after the first token)."""
        self.tpot.observe(mean_s)

    def record_adapter_lookup(self, tier: str, hit: bool) -> None:
        """An adapter was looked up in `tier` (the adapter store calls this)."""
        counts = self._hits if hit else self._misses
        with self._lock:
            counts[tier] = counts.get(tier, 0) + 1

    def observe_adapter_load(self, tier: str, seconds: float) -> None:
        """An adapter was loaded into `tier`."""
        self.adapter_load.labels(tier).observe(seconds)

    def resident_families(self, stats: EngineStats) -> Iterator[Metric]:
        """Adapters and bytes resident per tier: device/host from the engine, the rest from the store."""
        store = self._store_stats() if self._store_stats is not None else {}
        engine_bytes: dict[str, int] = getattr(stats, "adapters_resident_bytes", None) or {}
        count = GaugeMetricFamily(
            "deltaserve_adapters_resident", "Adapters resident per cache tier.", labels=["tier"]
        )
        nbytes = GaugeMetricFamily(
            "deltaserve_adapters_resident_bytes",
            "Bytes of adapters resident per cache tier.",
            labels=["tier"],
        )
        for tier in TIERS:
            c, b = store.get(tier, (stats.adapters_resident.get(tier, 0), engine_bytes.get(tier, 0)))
            count.add_metric([tier], float(c))
            nbytes.add_metric([tier], float(b))
        yield count
        yield nbytes

    def adapter_cache_families(self, stats: EngineStats) -> Iterator[Metric]:
        """Hit/miss counters per tier: server-side records plus the engine's, when it has them."""
        engine_hits: dict[str, int] = getattr(stats, "adapter_cache_hits", None) or {}
        engine_misses: dict[str, int] = getattr(stats, "adapter_cache_misses", None) or {}
        with self._lock:
            hits, misses = dict(self._hits), dict(self._misses)
        for name, doc, own, engine in (
            (
                "deltaserve_adapter_cache_hits",
                "Adapter lookups served by a tier.",
                hits,
                engine_hits,
            ),
            (
                "deltaserve_adapter_cache_misses",
                "Adapter lookups a tier could not serve.",
                misses,
                engine_misses,
            ),
        ):
            family = CounterMetricFamily(name, doc, labels=["tier"])
            for tier in TIERS:
                family.add_metric([tier], float(own.get(tier, 0) + engine.get(tier, 0)))
            yield family

    def render(self) -> bytes:
        """The Prometheus text exposition of everything."""
        return generate_latest(self.registry)


OUTCOMES = ("success", "abort", "error", "rejected")
"""Request outcomes per tenant: finished, aborted (client gone, drain), failed, refused (429)."""


class TenantMetrics:
    """Per-tenant series; tenant labels come only from the API-key file (bounded)."""

    def __init__(self, r: CollectorRegistry):
        self.requests = Counter(
            "deltaserve_tenant_requests", "HTTP generation requests per tenant by outcome.",
            ["tenant", "outcome"], registry=r,
        )  # fmt: skip
        self.prompt_tokens = Counter(
            "deltaserve_tenant_prompt_tokens", "Prompt tokens processed per tenant.",
            ["tenant"], registry=r,
        )  # fmt: skip
        self.generation_tokens = Counter(
            "deltaserve_tenant_generation_tokens", "Tokens generated per tenant.",
            ["tenant"], registry=r,
        )  # fmt: skip
        self.rejections = Counter(
            "deltaserve_tenant_rejections", "Requests refused (429) per tenant by limit.",
            ["tenant", "limit"], registry=r,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "deltaserve_tenant_queue_wait_seconds",
            "Time an engine request waited in the queue before its first step, per tenant.",
            ["tenant"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.fallback = Gauge(
            "deltaserve_quota_redis_fallback",
            "1 while quota counters use local limits because Redis is unreachable.",
            registry=r,
        )
        self.fallbacks = Counter(
            "deltaserve_quota_redis_fallbacks", "Times quota counters fell back to local limits.",
            registry=r,
        )  # fmt: skip

    def record_outcome(self, tenant: str, outcome: str) -> None:
        self.requests.labels(tenant, outcome if outcome in OUTCOMES else "error").inc()

    def record_rejection(self, tenant: str, limit: str) -> None:
        self.rejections.labels(tenant, limit).inc()
        self.requests.labels(tenant, "rejected").inc()

    def record_tokens(self, tenant: str, prompt: int, generated: int, wait_s: float | None) -> None:
        self.prompt_tokens.labels(tenant).inc(prompt)
        self.generation_tokens.labels(tenant).inc(generated)
        if wait_s is not None:
            self.queue_wait.labels(tenant).observe(max(0.0, wait_s))
