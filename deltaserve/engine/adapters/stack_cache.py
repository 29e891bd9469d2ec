"""The stacked weights (LoRA or sparse delta) of the adapters recent steps used, kept across
steps: stacking copies every adapter's weights, so it happens when the set changes, not per step.

While the step's adapters are a subset of the stack (decode steps of a steady batch) it is
reused as is; it is rebuilt when most of its adapters have left. Adapters that join are
appended where the stack can grow (LoRA: copying the stack once instead of restacking every
adapter, whose ranks are padded to the stack's), else the stack is rebuilt (sparse deltas:
building from the pool's tensors costs what copying the old stack would).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Protocol, TypeVar, runtime_checkable

from deltaserve.engine.adapters.pool import Adapter, AdapterPool


@runtime_checkable
class Growable(Protocol):
    def extended(self, other): ...  # the stack with other's adapters appended, or None


S = TypeVar("S")


class StackCache(Generic[S]):
    def __init__(self, pool: AdapterPool, build: Callable[[list[Adapter]], S]):
        self.pool = pool
        self._build = build
        self.stack: S | None = None
        self.keys: list[str] = []
        """The stacked adapters in stack order (row slots index this list)."""

    def covering(self, keys: list[str], protected: set[str]) -> list[str]:
        """Make the stack hold every adapter of `keys`; returns the stack's order."""
        cached, wanted = set(self.keys), set(keys)
        # Appending keeps the stack's departed adapters resident: only while the union fits
        # the pool's byte budget (the scheduler budgets the running adapters alone).
        union_fits = sum(map(self.pool.device_bytes, cached | wanted)) <= \
            self.pool.device_budget_bytes
        if self.stack is not None and len(cached | wanted) <= 2 * len(wanted) and union_fits:
            if wanted <= cached:
                return self.keys
            if isinstance(self.stack, Growable):
                new = sorted(wanted - cached)
                grown = self.stack.extended(self._make(new, protected | cached))
                if grown is not None:
                    self.stack, self.keys = grown, self.keys + new
                    return self.keys
        return self._rebuild(keys, protected)

    def _rebuild(self, keys: list[str], protected: set[str]) -> list[str]:
        order = sorted(keys)
        self.stack, self.keys = None, []  # free the old stack before building anew
        self.stack = self._make(order, protected)
        self.keys = order
        return order

    def _make(self, keys: list[str], protected: set[str]) -> S:
        return self._build(self.pool.on_device(keys, protected))
