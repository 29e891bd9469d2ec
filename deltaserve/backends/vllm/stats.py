"""vLLM's per-step statistics → our EngineStats snapshot (the gauges behind /metrics).

vLLM hands every step's SchedulerStats / IterationStats to its stat loggers on the event loop;
`StatsFeed.factory` is such a logger that keeps the latest snapshot instead of printing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from vllm.config import VllmConfig
from vllm.v1.metrics.loggers import StatLoggerBase
from vllm.v1.metrics.stats import IterationStats, SchedulerStats

from deltaserve.backends.vllm.adapters import adapter_name
from deltaserve.engine.protocol import EngineStats


class StatsFeed:
    """The latest EngineStats; `adapters` supplies the resident/hit/miss part on each read."""

    def __init__(self, max_loras: int, device: str, dtype: str, adapters: Callable[[], dict]):
        self.snapshot = EngineStats(max_loras=max_loras, device=device, dtype=dtype)
        self._adapters = adapters

    def stats(self, idle: bool = False) -> EngineStats:
        """The latest snapshot; `idle` (no request in flight) clears the queue gauges, which
        vLLM last reported while the final requests were still running."""
        snap = replace(self.snapshot, **self._adapters())
        if idle:
            snap = replace(snap, num_running=0, num_waiting=0, running_adapters=[],
                           waiting_adapters=[])  # fmt: skip
        return snap

    def record(self, sched: SchedulerStats | None, it: IterationStats | None) -> None:
        s = self.snapshot
        if sched is not None:
            s.num_running = sched.num_running_reqs
            s.num_waiting = sched.num_waiting_reqs + sched.num_skipped_waiting_reqs
            s.kv_cache_usage = sched.kv_cache_usage
            s.running_adapters = _names(sched.running_lora_adapters)
            s.waiting_adapters = _names(sched.waiting_lora_adapters)
            s.last_batch_size = sched.num_running_reqs
            s.last_batch_adapters = len(s.running_adapters)
        if it is not None:
            s.num_preemptions_total += it.num_preempted_reqs
            s.steps_total += 1

    def factory(self, vllm_config: VllmConfig, engine_index: int = 0) -> StatLoggerBase:
        """vLLM's PerEngineStatLoggerFactory: one logger per engine core, all feeding us."""
        return _FeedLogger(self)


def _names(counts: dict[str, int]) -> list[str]:
    """API names of the LoRAs with requests (vLLM counts per `<name>@<id>`)."""
    return sorted({adapter_name(n) for n, c in counts.items() if c})


class _FeedLogger(StatLoggerBase):
    def __init__(self, feed: StatsFeed):
        self.feed = feed

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
        self.feed.record(scheduler_stats, iteration_stats)

    def log_engine_initialized(self) -> None:
        return None
