"""Virtual Token Counter (VTC) queue policy: fair admission across tenants.

Sheng et al., "Fairness in Serving Large Language Models" (OSDI 2024). Each tenant has a
counter of the service it received, in weighted tokens: a computed prompt token costs
`input_cost`, a generated token `output_cost` (the paper's w_p = 1, w_q = 2), both divided by
the tenant's weight. Admission considers the backlogged tenant with the smallest counter first;
within a tenant, sequences keep their queue order (FCFS, preempted ones at the head). A tenant
that becomes backlogged again has its counter lifted to the smallest counter among the other
backlogged (else running) tenants, so idle time is not banked as credit.

Plain data, no model: the scheduler calls `on_add` when a sequence is queued, `order` to pick
the admission order, and `on_scheduled` with what a step computes.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from deltaserve.engine.config import EngineConfig
from deltaserve.engine.request import Sequence
from deltaserve.engine.scheduler import FCFSPolicy, QueuePolicy

if TYPE_CHECKING:
    from deltaserve.engine.scheduler import ScheduledSeq

ANONYMOUS = ""
"""The tenant of sequences that carry none."""


def tenant_of(seq: Sequence) -> str:
    return seq.request.tenant or ANONYMOUS


class VTCPolicy:
    """Weighted virtual token counters over tenants (see the module docstring)."""

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        input_cost: float = 1.0,
        output_cost: float = 2.0,
    ):
        self.weights: Mapping[str, float] = dict(weights or {})
        """tenant → weight (> 0); absent tenants weigh 1. Replaced whole by set_weights."""
        self.input_cost = input_cost
        self.output_cost = output_cost
        self.counters: dict[str, float] = {}

    def set_weights(self, weights: Mapping[str, float]) -> None:
        """Swap in new weights (one assignment: safe while another thread reads them)."""
        self.weights = {t: float(w) for t, w in weights.items() if w and w > 0}

    def weight(self, tenant: str) -> float:
        return self.weights.get(tenant, 1.0)

    def on_add(self, seq: Sequence, waiting: list[Sequence], running: list[Sequence]) -> None:
        """Lift the counter of a tenant that was not backlogged (before `seq` joins `waiting`)."""
        tenant = tenant_of(seq)
        backlogged = {tenant_of(s) for s in waiting}
        if tenant in backlogged:
            return
        others = [self.counters.get(t, 0.0) for t in backlogged]
        if not others:
            others = [self.counters.get(t, 0.0) for t in {tenant_of(s) for s in running}
                      if t != tenant]  # fmt: skip
        if others:
            self.counters[tenant] = max(self.counters.get(tenant, 0.0), min(others))

    def order(self, waiting: list[Sequence]) -> list[Sequence]:
        """Interleave tenants by projected counter (each admission adds its prompt cost)."""
        queues: dict[str, list[Sequence]] = {}
        for seq in waiting:
            queues.setdefault(tenant_of(seq), []).append(seq)
        if len(queues) <= 1:
            return list(waiting)
        # heap of (projected counter, position of the tenant's next sequence, tenant)
        position = {id(s): i for i, s in enumerate(waiting)}
        heap = [(self.counters.get(t, 0.0), position[id(q[0])], t) for t, q in queues.items()]
        heapq.heapify(heap)
        heads = dict.fromkeys(queues, 0)
        out: list[Sequence] = []
        while heap:
            counter, _, tenant = heapq.heappop(heap)
            queue, i = queues[tenant], heads[tenant]
            seq = queue[i]
            out.append(seq)
            heads[tenant] = i + 1
            if i + 1 < len(queue):
                cost = self._cost(seq.num_tokens - seq.num_computed_tokens, 0, tenant)
                heapq.heappush(heap, (counter + cost, position[id(queue[i + 1])], tenant))
        return out

    def on_scheduled(self, scheduled: Iterable[ScheduledSeq]) -> None:
        """Charge each tenant for what this step computes for it."""
        for item in scheduled:
            seq = item.seq
            tenant = tenant_of(seq)
            prefill = seq.num_computed_tokens < len(seq.prompt_token_ids) or item.num_new_tokens > 1
            cost = (self._cost(item.num_new_tokens, 0, tenant) if prefill
                    else self._cost(0, item.num_new_tokens, tenant))  # fmt: skip
            self.counters[tenant] = self.counters.get(tenant, 0.0) + cost

    def _cost(self, input_tokens: int, output_tokens: int, tenant: str) -> float:
        raw = self.input_cost * input_tokens + self.output_cost * output_tokens
        return raw / self.weight(tenant)


def make_policy(config: EngineConfig) -> QueuePolicy:
    """The queue policy `config.queue_policy` names."""
    if config.queue_policy == "vtc":
        return VTCPolicy(config.tenant_weights)
    if config.queue_policy != "fcfs":
        raise ValueError(f"queue_policy must be fcfs|vtc, got {config.queue_policy!r}")
    return FCFSPolicy()
