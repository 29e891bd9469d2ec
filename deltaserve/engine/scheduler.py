"""Continuous-batching scheduler: CPU-only bookkeeping that returns plain data.

With chunked prefill (the default) a step is filled decode-first, as vLLM v1 does: one token
for every decoding sequence, then chunks of partially prefilled prompts, then newly admitted
ones, up to the token budget; a prompt longer than the budget is computed over several steps
and samples nothing until its last chunk. Without it, each step either admits waiting
sequences as a prefill step (whole prompts), or decodes every running sequence one token (or
both in one step, in mixed mode). On admission, the longest prefix of full blocks already in
the prefix cache (kv_cache.py) is shared instead of computed.
Invariants kept between steps:
- the running set never holds more than `max_num_seqs` sequences or more than `max_loras`
  distinct adapters, and its adapters fit the device adapter budget;
- a running sequence owns (or shares) the KV blocks for all its computed tokens; when a
  sequence cannot get a block, the most recently admitted sequence is preempted (its blocks
  freed, it is put back at the head of the queue and later recomputed, from whatever of its
  prefix is still cached) — nothing is lost or corrupted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from deltaserve.engine.kv_cache import BlockAllocator
from deltaserve.engine.prefix_cache import extend_hashes
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
    """Without chunked prefill: admit prefills into decode steps instead of giving them their
    own step."""
    enable_chunked_prefill: bool = False
    """Fill each step decode-first, then with chunks of prompts (longer prompts than the
    budget are split over steps)."""


@dataclass
class ScheduledSeq:
    seq: Sequence
    num_new_tokens: int
    """Tokens to compute this step: 1 for a decode; for a prefill all uncomputed ones, or a
    chunk of them with chunked prefill."""

    @property
    def samples(self) -> bool:
        """Whether this step reaches the sequence's last token (a chunk that leaves part of
        the prompt uncomputed samples nothing)."""
        return self.seq.num_computed_tokens + self.num_new_tokens == self.seq.num_tokens


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


@dataclass
class PrefixCacheStats:
    """Prompt tokens looked up in the prefix cache and found there, per adapter kind."""

    queries: dict[str, int] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)

    def record(self, kind: str, queried: int, hit: int) -> None:
        self.queries[kind] = self.queries.get(kind, 0) + queried
        self.hits[kind] = self.hits.get(kind, 0) + hit


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
        self.prefix_stats = PrefixCacheStats()

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
        self._release(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def running_adapters(self) -> list[str]:
        return _distinct(s.adapter_key for s in self.running)

    def waiting_adapters(self) -> list[str]:
        return _distinct(s.adapter_key for s in self.waiting)

    def cache_computed(self, seq: Sequence) -> None:
        """Register seq's blocks that are full and computed in the prefix cache (after a step)."""
        bs = self.blocks.block_size
        if not self._cacheable(seq) or seq.num_computed_tokens // bs <= seq.num_registered_blocks:
            return  # most decode steps fill no new block
        hashes = extend_hashes(seq, seq.num_computed_tokens, bs)
        for i in range(seq.num_registered_blocks, len(hashes)):
            self.blocks.register(seq.block_table[i], hashes[i])
        seq.num_registered_blocks = len(hashes)

    # ---- scheduling ---------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        if self.config.enable_chunked_prefill:
            self._schedule_decodes(out)
            self._schedule_partial_prefills(out, budget - out.num_batched_tokens)
            self._admit(out, budget - out.num_batched_tokens)
        elif self.config.mixed_prefill_decode:
            self._schedule_decodes(out)
            self._admit(out, budget - out.num_batched_tokens)
        else:
            self._admit(out, budget)
            if out.is_empty:
                self._schedule_decodes(out)
        out.adapters = _distinct(s.seq.adapter_key for s in out.scheduled)
        self.policy.on_scheduled(out.scheduled)
        return out

    def _admit(self, out: SchedulerOutput, budget: int) -> None:
        """Move waiting sequences to running while slots, tokens, blocks and adapters allow."""
        if not self.waiting:
            return
        chunked = self.config.enable_chunked_prefill
        adapters = set(self.running_adapters())
        used_bytes = sum(self.adapter_bytes(a) for a in adapters)
        for seq in self.policy.order(self.waiting):
            if len(self.running) >= self.config.max_num_seqs or budget <= 0:
                break
            key = seq.adapter_key
            if key is not None and key not in adapters:
                extra = self.adapter_bytes(key)
                budget_bytes = self.config.adapter_budget_bytes
                over_bytes = budget_bytes is not None and used_bytes + extra > budget_bytes
                if len(adapters) >= self.config.max_loras or over_bytes:
                    continue  # others may use adapters already in the step
            hit = self._cached_prefix(seq)
            computed = len(hit) * self.blocks.block_size
            need_tokens = seq.num_tokens - computed
            n = min(need_tokens, budget) if chunked else need_tokens
            if n > budget:
                break
            if not self._allocate(seq, hit, computed + n):
                break
            self._record_hit(seq, computed)
            if key is not None and key not in adapters:
                adapters.add(key)
                used_bytes += self.adapter_bytes(key)
            self.waiting.remove(seq)
            seq.status = SeqStatus.RUNNING
            self.running.append(seq)
            out.scheduled.append(ScheduledSeq(seq, n))
            budget -= n

    def _cached_prefix(self, seq: Sequence) -> list[int]:
        """The cached blocks seq can start from: full blocks only, never its last token (its
        logits must be computed), none for rows that score every prompt position."""
        if not self._cacheable(seq) or seq.scores_prompt:
            return []
        bs = self.blocks.block_size
        usable = (seq.num_tokens - 1) // bs * bs
        return self.blocks.lookup(extend_hashes(seq, usable, bs))

    def _allocate(self, seq: Sequence, hit: list[int], end: int) -> bool:
        """Blocks for seq's first `end` tokens (sharing the cached `hit`), in the base cache
        and any side caches; all or nothing. A step that ends the prompt keeps one block of
        headroom, so the next decode does not preempt."""
        upto = end + 1 if end == seq.num_tokens else end
        need = self.blocks.blocks_for(upto) - len(hit)
        if not self.blocks.can_allocate(need + self.blocks.num_idle(hit)):
            return False
        if not self.side.grow(seq, upto):
            return False
        self.blocks.share(hit)
        seq.block_table = hit + self.blocks.allocate(need)
        seq.num_computed_tokens = len(hit) * self.blocks.block_size
        seq.num_registered_blocks = len(hit)
        return True

    def _cacheable(self, seq: Sequence) -> bool:
        return self.blocks.enable_caching and seq.request.cache_root is not None

    def _record_hit(self, seq: Sequence, cached_tokens: int) -> None:
        req = seq.request
        if not self._cacheable(seq):
            return
        queried = len(req.prompt_token_ids)
        hit = min(cached_tokens, queried)
        self.prefix_stats.record(req.adapter_kind or "base", queried, hit)
        if seq.index == 0 and req.metrics.num_preemptions == 0:
            req.num_cached_tokens = hit

    def _schedule_decodes(self, out: SchedulerOutput) -> None:
        """One token for every decoding sequence, preempting the newest when blocks run out."""
        scheduled_ids = {id(s.seq) for s in out.scheduled}
        for seq in list(self.running):
            if seq not in self.running or id(seq) in scheduled_ids:
                continue  # preempted by an earlier iteration, or a fresh prefill
            if seq.num_tokens - seq.num_computed_tokens != 1:
                continue  # a prompt still being prefilled in chunks
            if self._grow_or_preempt(seq, seq.num_tokens, out):
                out.scheduled.append(ScheduledSeq(seq, 1))

    def _schedule_partial_prefills(self, out: SchedulerOutput, budget: int) -> None:
        """The next chunk of every running sequence whose prompt is not fully computed."""
        for seq in list(self.running):
            if budget <= 0:
                break
            pending = seq.num_tokens - seq.num_computed_tokens
            if seq not in self.running or pending <= 1:
                continue
            n = min(pending, budget)
            end = seq.num_computed_tokens + n
            if self._grow_or_preempt(seq, end + 1 if end == seq.num_tokens else end, out):
                out.scheduled.append(ScheduledSeq(seq, n))
                budget -= n

    def _grow_or_preempt(self, seq: Sequence, num_tokens: int, out: SchedulerOutput) -> bool:
        """Room for seq's first num_tokens tokens, preempting the newest running sequences
        while there is none; False when seq itself had to go."""
        while not self._grow(seq, num_tokens):
            victim = self.running[-1]
            self._preempt(victim, out)
            if victim is seq:
                return False
        return True

    def _grow(self, seq: Sequence, num_tokens: int) -> bool:
        """Blocks for num_tokens of seq's tokens, in the base cache and any side caches."""
        while self.blocks.blocks_for(num_tokens) > len(seq.block_table):
            if not self.blocks.can_allocate(1):
                return False
            seq.block_table.extend(self.blocks.allocate(1))
        return self.side.grow(seq, num_tokens)

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.running.remove(seq)
        self._release(seq)
        seq.num_computed_tokens = 0
        seq.status = SeqStatus.WAITING
        seq.request.metrics.num_preemptions += 1
        self.waiting.insert(0, seq)
        self.num_preemptions += 1
        out.preempted.append(seq)
        out.scheduled = [s for s in out.scheduled if s.seq is not seq]

    def _release(self, seq: Sequence) -> None:
        """Give back seq's blocks (its registered ones stay cached until evicted)."""
        self.blocks.free(seq.block_table)
        self.side.free(seq)
        seq.num_registered_blocks = 0


def _distinct(keys) -> list[str]:
    seen: dict[str, None] = {}
    for k in keys:
        if k is not None:
            seen.setdefault(k, None)
    return list(seen)
