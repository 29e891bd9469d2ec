"""Continuous-batching scheduler: CPU-only bookkeeping that returns plain data.

Each step either admits waiting sequences as a prefill step, or decodes every running sequence
one token (or both in one step, in mixed mode). Invariants kept between steps:
- the running set never holds more than `max_num_seqs` sequences or more than `max_loras`
  distinct adapters, and its adapters fit the device adapter budget;
- a running sequence owns the KV blocks for all its computed tokens; when a decode step
  cannot get a block, the most recently admitted sequence is preempted (its blocks freed, it is
  put back at the head of the queue and later recomputed) — nothing is lost or corrupted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from deltaserve.engine.kv_cache import BlockAllocator
from deltaserve.engine.request import SeqStatus, Sequence


@dataclass
class SchedulerConfig:
    max_num_seqs: int
    """Most sequences running at once."""
    max_num_batched_tokens: int
    """Token budget of one step (prefill tokens + one per decoding sequence)."""
    max_loras: int
    """Distinct adapters in the running set (and therefore in any step)."""
    adapter_budget_bytes: int | None = None
    """Device bytes the running set's adapters may take (None: unlimited)."""
    mixed_prefill_decode: bool = False
    """Admit prefills into decode steps instead of giving them their own step."""


@dataclass
class ScheduledSeq:
    seq: Sequence
    num_new_tokens: int
    """Tokens to compute this step: all uncomputed ones for a prefill, 1 for a decode."""


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    adapters: list[str] = field(default_factory=list)
    """Distinct adapter keys of the scheduled sequences, first-use order."""

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class QueuePolicy(Protocol):
    """Decides in which order waiting sequences are considered for admission.

    `on_add` sees a sequence before it joins the queue, `on_scheduled` what each step
    computes (a fairness policy charges its tenants there; see fairness.py).
    """

    def order(self, waiting: list[Sequence]) -> list[Sequence]: ...

    def on_add(self, seq: Sequence, waiting: list[Sequence], running: list[Sequence]) -> None: ...

    def on_scheduled(self, scheduled: list[ScheduledSeq]) -> None: ...


class SideCaches(Protocol):
    """KV caches beside the base's that some sequences also need (proxy-tuning small models).

    `grow` gives a sequence room for `num_tokens` tokens in all of them, or nothing (False);
    `free` returns everything the sequence holds there.
    """

    def grow(self, seq: Sequence, num_tokens: int) -> bool: ...

    def free(self, seq: Sequence) -> None: ...


class NoSideCaches:
    def grow(self, seq: Sequence, num_tokens: int) -> bool:
        return True

    def free(self, seq: Sequence) -> None:
        return None


class FCFSPolicy:
    """First come, first served (preempted sequences go back to the head)."""

    def order(self, waiting: list[Sequence]) -> list[Sequence]:
        return list(waiting)

    def on_add(self, seq: Sequence, waiting: list[Sequence], running: list[Sequence]) -> None:
        return None

    def on_scheduled(self, scheduled: list[ScheduledSeq]) -> None:
        return None


class Scheduler:
    def __init__(
        self,
        config: SchedulerConfig,
        blocks: BlockAllocator,
        adapter_bytes: Callable[[str], int] = lambda key: 0,
        policy: QueuePolicy | None = None,
        side: SideCaches | None = None,
    ):
        self.config = config
        self.blocks = blocks
        self.adapter_bytes = adapter_bytes
        self.policy = policy or FCFSPolicy()
        self.side: SideCaches = side or NoSideCaches()
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    # ---- queue management -------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        seq.status = SeqStatus.WAITING
        self.policy.on_add(seq, self.waiting, self.running)
        self.waiting.append(seq)

    def finish(self, seq: Sequence) -> None:
        """Drop a sequence (finished or aborted) and return its blocks at once."""
        seq.status = SeqStatus.FINISHED
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.free(seq.block_table)
        self.side.free(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def running_adapters(self) -> list[str]:
        return _distinct(s.adapter_key for s in self.running)

    def waiting_adapters(self) -> list[str]:
        return _distinct(s.adapter_key for s in self.waiting)

    # ---- scheduling ---------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        if self.config.mixed_prefill_decode:
            self._schedule_decodes(out)
            self._admit(out, self.config.max_num_batched_tokens - out.num_batched_tokens)
        else:
            self._admit(out, self.config.max_num_batched_tokens)
            if out.is_empty:
                self._schedule_decodes(out)
        out.adapters = _distinct(s.seq.adapter_key for s in out.scheduled)
        self.policy.on_scheduled(out.scheduled)
        return out

    def _admit(self, out: SchedulerOutput, budget: int) -> None:
        """Move waiting sequences to running while slots, tokens, blocks and adapters allow."""
        if not self.waiting:
            return
        adapters = set(self.running_adapters())
        used_bytes = sum(self.adapter_bytes(a) for a in adapters)
        for seq in self.policy.order(self.waiting):
            if len(self.running) >= self.config.max_num_seqs:
                break
            need_tokens = seq.num_tokens - seq.num_computed_tokens
            if need_tokens > budget:
                break
            key = seq.adapter_key
            if key is not None and key not in adapters:
                extra = self.adapter_bytes(key)
                budget_bytes = self.config.adapter_budget_bytes
                over_bytes = budget_bytes is not None and used_bytes + extra > budget_bytes
                if len(adapters) >= self.config.max_loras or over_bytes:
                    continue  # others may use adapters already in the step
            # One block of headroom per running sequence keeps the next decode from preempting.
            need_blocks = self.blocks.blocks_for(seq.num_tokens + 1) - len(seq.block_table)
            if not self.blocks.can_allocate(need_blocks):
                break
            if not self.side.grow(seq, seq.num_tokens + 1):
                break
            seq.block_table.extend(self.blocks.allocate(need_blocks))
            if key is not None and key not in adapters:
                adapters.add(key)
                used_bytes += self.adapter_bytes(key)
            self.waiting.remove(seq)
            seq.status = SeqStatus.RUNNING
            self.running.append(seq)
            out.scheduled.append(ScheduledSeq(seq, need_tokens))
            budget -= need_tokens

    def _schedule_decodes(self, out: SchedulerOutput) -> None:
        """One token for every running sequence, preempting the newest when blocks run out."""
        scheduled_ids = {id(s.seq) for s in out.scheduled}
        for seq in list(self.running):
            if seq not in self.running or id(seq) in scheduled_ids:
                continue  # preempted by an earlier iteration, or a fresh prefill
            while not self._grow(seq):
                victim = self.running[-1]
                self._preempt(victim, out)
                if victim is seq:
                    break
            if seq in self.running:
                out.scheduled.append(ScheduledSeq(seq, 1))

    def _grow(self, seq: Sequence) -> bool:
        """Blocks for all of seq's tokens, in the base cache and any side caches."""
        while self.blocks.blocks_for(seq.num_tokens) > len(seq.block_table):
            if not self.blocks.can_allocate(1):
                return False
            seq.block_table.extend(self.blocks.allocate(1))
        return self.side.grow(seq, seq.num_tokens)

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.running.remove(seq)
        self.blocks.free(seq.block_table)
        self.side.free(seq)
        seq.num_computed_tokens = 0
        seq.status = SeqStatus.WAITING
        seq.request.metrics.num_preemptions += 1
        self.waiting.insert(0, seq)
        self.num_preemptions += 1
        out.preempted.append(seq)
        out.scheduled = [s for s in out.scheduled if s.seq is not seq]


def _distinct(keys) -> list[str]:
    seen: dict[str, None] = {}
    for k in keys:
        if k is not None:
            seen.setdefault(k, None)
    return list(seen)
