"""The Scheduler with chunked prefill and the prefix cache: real Sequences, a real
BlockAllocator, no model. `_update` plays the engine's part (LLMEngine._update): tokens marked
computed, full blocks registered, one token sampled by rows that reached their last token."""

from __future__ import annotations

import random

from deltaserve.engine.kv_cache import BlockAllocator
from deltaserve.engine.prefix_cache import extend_hashes, root_key
from deltaserve.engine.scheduler import Scheduler, SchedulerConfig, SchedulerOutput
from tests.unit.engine.test_scheduler import _seq

BS = 4


def _sched(num_blocks=64, max_num_seqs=8, budget=16, caching=True) -> Scheduler:
    cfg = SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget, max_loras=8,
                          enable_chunked_prefill=True)
    return Scheduler(cfg, BlockAllocator(num_blocks, BS, enable_caching=caching))


def _cached(prompt_len: int, max_tokens: int = 4, prompt=None):
    seq = _seq(prompt_len, max_tokens=max_tokens)
    if prompt is not None:
        seq.request.prompt_token_ids = list(prompt)
    seq.request.cache_root = root_key("base", None, None, None, "global")
    return seq


def _check(s: Scheduler, out: SchedulerOutput) -> None:
    """Budget kept, decodes first, every scheduled token has a slot, refcounts add up."""
    assert out.num_batched_tokens <= s.config.max_num_batched_tokens
    kinds = [it.num_new_tokens == 1 and it.seq.num_computed_tokens > 0 for it in out.scheduled]
    assert kinds == sorted(kinds, reverse=True), "a prompt chunk was scheduled before a decode"
    for it in out.scheduled:
        end = it.seq.num_computed_tokens + it.num_new_tokens
        assert end <= it.seq.num_tokens and len(it.seq.block_table) >= s.blocks.blocks_for(end)
    refs = {}
    for seq in s.running:
        for b in seq.block_table:
            refs[b] = refs.get(b, 0) + 1
    assert all(s.blocks._refs[b] == n for b, n in refs.items()), "reference counts drifted"
    assert set(refs).isdisjoint(s.blocks._free)
    assert len(refs) + s.blocks.num_free == s.blocks.num_blocks


def _step(s: Scheduler) -> SchedulerOutput:
    out = s.schedule()
    _check(s, out)
    for it in out.scheduled:
        seq, samples = it.seq, it.samples
        seq.num_computed_tokens += it.num_new_tokens
        s.cache_computed(seq)
        if samples:
            seq.output_token_ids.append(7)
            if len(seq.output_token_ids) >= seq.request.max_tokens:
                s.finish(seq)
    return out


def _run(s: Scheduler, limit=2000) -> list[SchedulerOutput]:
    outs = []
    while s.has_unfinished():
        outs.append(_step(s))
        assert len(outs) < limit, "no progress"
    return outs


def test_decodes_first_then_chunks_of_a_prompt_longer_than_the_budget():
    s = _sched(budget=10)
    a = _cached(3, max_tokens=8)
    s.add(a)
    _step(s)  # a prefilled
    b = _cached(23, max_tokens=2)  # 2.3x the budget
    s.add(b)
    chunks = []
    while not b.output_token_ids:
        out = _step(s)
        assert out.scheduled[0].seq is a and out.scheduled[0].num_new_tokens == 1
        chunks.append([it.num_new_tokens for it in out.scheduled if it.seq is b][0])
    assert chunks == [9, 9, 5] and len(a.output_token_ids) == 4  # a never stalled
    _run(s)
    assert s.blocks.num_free == s.blocks.num_blocks


def test_a_shared_prefix_is_computed_once_and_stays_cached_after_its_owner_leaves():
    s = _sched(budget=64)
    system = list(range(100, 120))  # 5 full blocks
    first = _cached(0, prompt=system + [1, 2, 3])
    s.add(first)
    _run(s)
    assert s.blocks.num_cached >= 5 and s.blocks.num_free == s.blocks.num_blocks
    second = _cached(0, prompt=system + [9, 9])
    s.add(second)
    out = _step(s)
    assert out.scheduled[0].num_new_tokens == 2  # only the user turn is computed
    assert second.num_computed_tokens == 22
    assert s.prefix_stats.hits["base"] == 20 and s.prefix_stats.queries["base"] == 23 + 22
    whole = _cached(0, prompt=system)  # entirely cached: its last token is still computed
    s.add(whole)
    out = _step(s)
    assert [it.num_new_tokens for it in out.scheduled if it.seq is whole] == [4]


def test_different_roots_never_share_blocks():
    s = _sched(budget=64)
    a = _cached(0, prompt=list(range(30, 50)))
    s.add(a)
    _run(s)
    b = _seq(0)
    b.request.prompt_token_ids = list(range(30, 50))
    b.request.cache_root = root_key("base", "lora", "sha-x", "acme", "global")
    s.add(b)
    out = _step(s)
    assert out.scheduled[0].num_new_tokens == 20 and s.prefix_stats.hits["base"] == 0


def test_lru_evicts_the_oldest_unreferenced_blocks_first():
    s = _sched(num_blocks=12, budget=64)
    old, new = _cached(0, prompt=range(0, 16)), _cached(0, prompt=range(50, 66))
    for q in (old, new):
        s.add(q)
        _run(s)
    squeeze = _cached(0, prompt=range(200, 216), max_tokens=1)  # needs 5 fresh blocks
    s.add(squeeze)
    _run(s)
    again = [_cached(0, prompt=range(0, 16)), _cached(0, prompt=range(50, 66))]
    bs = s.blocks
    found = [len(bs.lookup(extend_hashes(q, 15, BS))) for q in again]
    assert found[1] == 3 and found[0] < 3  # the older prompt lost blocks, the newer none


def test_preempted_sequences_find_their_blocks_again():
    """A cache too small for the batch: preempted sequences are recomputed from what of their
    own prefix is still cached; everything finishes and no block leaks."""
    random.seed(0)
    s = _sched(num_blocks=24, max_num_seqs=6, budget=12)
    seqs = [_cached(0, max_tokens=random.randint(4, 12),
                    prompt=[random.randrange(200) for _ in range(random.randint(5, 30))])
            for _ in range(10)]
    for q in seqs:
        s.add(q)
    _run(s)
    assert s.num_preemptions > 0 and all(q.finished for q in seqs)
    assert s.prefix_stats.hits["base"] > 0  # only re-admissions can hit: prompts are distinct
    assert s.blocks.num_free == s.blocks.num_blocks


def test_random_arrivals_keep_every_invariant():
    rng = random.Random(1)
    s = _sched(num_blocks=40, max_num_seqs=5, budget=9)
    shared = [rng.randrange(200) for _ in range(12)]
    made = []
    for _ in range(300):
        if rng.random() < 0.3 and len(made) < 40:
            q = _cached(0, max_tokens=rng.randint(1, 9),
                        prompt=shared[:rng.randint(0, 12)] + [rng.randrange(200)
                                                             for _ in range(rng.randint(1, 20))])
            made.append(q)
            s.add(q)
        if s.has_unfinished():
            _step(s)
    _run(s)
    assert all(q.finished for q in made) and s.blocks.num_free == s.blocks.num_blocks
    assert all(len(q.output_token_ids) == q.request.max_tokens for q in made)
