"""The Scheduler alone: real Sequence/Request objects and a BlockAllocator, no model.

`_update` plays the engine's part after each step (LLMEngine._update): every scheduled sequence
gets its new tokens marked computed and one sampled token appended; sequences that reached
their max_tokens are finished.
"""

from __future__ import annotations

import random

import pytest

from deltaserve.engine.kv_cache import BlockAllocator
from deltaserve.engine.request import Request, SeqStatus, Sequence
from deltaserve.engine.sampling_params import SamplingParams
from deltaserve.engine.scheduler import Scheduler, SchedulerConfig, SchedulerOutput

_ids = iter(range(10**9))


def _seq(prompt_len: int, adapter: str | None = None, max_tokens: int = 4) -> Sequence:
    sid = next(_ids)
    req = Request(f"r{sid}", list(range(prompt_len)), SamplingParams(max_tokens=max_tokens),
                  max_tokens, adapter_key=adapter)
    seq = Sequence(sid, req, 0, seed=sid)
    req.seqs.append(seq)
    return seq


def _sched(num_blocks=64, block_size=4, max_num_seqs=8, budget=64, max_loras=4,
           adapter_budget=None, mixed=False, adapter_bytes=lambda k: 0) -> Scheduler:
    cfg = SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget,
                          max_loras=max_loras, adapter_budget_bytes=adapter_budget,
                          mixed_prefill_decode=mixed)
    return Scheduler(cfg, BlockAllocator(num_blocks, block_size), adapter_bytes=adapter_bytes)


def _check_invariants(s: Scheduler, out: SchedulerOutput) -> None:
    """Blocks are conserved and never shared; every scheduled token has a KV slot."""
    owned = [b for seq in s.running for b in seq.block_table]
    assert len(owned) == len(set(owned)), "a block is owned twice"
    assert len(owned) + s.blocks.num_free == s.blocks.num_blocks, "blocks leaked or duplicated"
    assert set(owned).isdisjoint(s.blocks._free)
    for seq in s.waiting:
        assert seq.block_table == [] and seq.status is SeqStatus.WAITING
    assert len(s.running) <= s.config.max_num_seqs
    assert len(s.running_adapters()) <= s.config.max_loras
    assert len(out.adapters) <= s.config.max_loras
    for item in out.scheduled:
        seq = item.seq
        assert seq.status is SeqStatus.RUNNING
        end = seq.num_computed_tokens + item.num_new_tokens
        assert end == seq.num_tokens, "a step must compute every uncomputed token"
        assert len(seq.block_table) >= s.blocks.blocks_for(end), "scheduled without a KV slot"
    assert len({id(i.seq) for i in out.scheduled}) == len(out.scheduled)


def _step(s: Scheduler) -> SchedulerOutput:
    out = s.schedule()
    _check_invariants(s, out)
    _update(s, out)
    return out


def _update(s: Scheduler, out: SchedulerOutput) -> None:
    for item in out.scheduled:
        seq = item.seq
        seq.num_computed_tokens += item.num_new_tokens
        seq.output_token_ids.append(7)
        if len(seq.output_token_ids) >= seq.request.max_tokens:
            seq.finish_reason = "length"
            s.finish(seq)


def _run_to_end(s: Scheduler, max_steps: int = 500) -> list[SchedulerOutput]:
    outs = []
    while s.has_unfinished():
        outs.append(_step(s))
        assert len(outs) < max_steps, "scheduler made no progress"
    return outs


def _seqs(out: SchedulerOutput) -> list[Sequence]:
    return [i.seq for i in out.scheduled]


def test_continuous_batching_join_and_leave():
    s = _sched()
    a, b = _seq(5, max_tokens=2), _seq(3, max_tokens=5)
    s.add(a)
    s.add(b)
    out = _step(s)  # prefill both
    assert [(i.seq, i.num_new_tokens) for i in out.scheduled] == [(a, 5), (b, 3)]
    out = _step(s)  # decode both; a reaches max_tokens and leaves
    assert [(i.seq, i.num_new_tokens) for i in out.scheduled] == [(a, 1), (b, 1)]
    assert a.finished and a.block_table == [] and s.running == [b]
    c = _seq(6, max_tokens=3)
    s.add(c)  # joins between steps
    out = _step(s)
    assert [(i.seq, i.num_new_tokens) for i in out.scheduled] == [(c, 6)]
    out = _step(s)
    assert _seqs(out) == [b, c] and all(i.num_new_tokens == 1 for i in out.scheduled)
    _run_to_end(s)
    assert [len(x.output_token_ids) for x in (a, b, c)] == [2, 5, 3]
    assert s.blocks.num_free == s.blocks.num_blocks


def test_max_num_seqs_caps_running_set():
    s = _sched(max_num_seqs=2)
    seqs = [_seq(3, max_tokens=2 + i) for i in range(5)]
    for q in seqs:
        s.add(q)
    out = _step(s)
    assert _seqs(out) == seqs[:2] and len(s.waiting) == 3
    out = _step(s)  # seq 0 finishes after this decode
    assert _seqs(out) == seqs[:2] and seqs[0].finished
    out = _step(s)  # a slot opened: seq 2 is admitted
    assert _seqs(out) == [seqs[2]]
    outs = _run_to_end(s)
    assert max(len(o.scheduled) for o in outs) <= 2
    assert all(q.finished for q in seqs) and s.blocks.num_free == s.blocks.num_blocks


def test_token_budget_limits_prefill_step():
    s = _sched(budget=13)
    seqs = [_seq(6) for _ in range(3)]
    for q in seqs:
        s.add(q)
    out = _step(s)
    assert _seqs(out) == seqs[:2] and out.num_batched_tokens == 12
    out = _step(s)  # the third prefill gets its own step
    assert _seqs(out) == [seqs[2]] and out.num_batched_tokens == 6
    outs = _run_to_end(s)
    assert all(o.num_batched_tokens <= 13 for o in outs)


def test_token_budget_in_mixed_mode_counts_decodes():
    s = _sched(budget=8, mixed=True)
    a = _seq(4, max_tokens=10)
    s.add(a)
    _step(s)
    b, c = _seq(7), _seq(6)
    s.add(b)
    s.add(c)
    out = _step(s)  # 1 decode token + 7 prefill tokens = 8; c (6) must wait
    assert [(i.seq, i.num_new_tokens) for i in out.scheduled] == [(a, 1), (b, 7)]
    assert out.num_batched_tokens == 8 and s.waiting == [c]


def test_prefill_first_mode_gives_prefills_their_own_step():
    s = _sched(mixed=False)
    a = _seq(4, max_tokens=10)
    s.add(a)
    _step(s)
    b = _seq(5)
    s.add(b)
    out = _step(s)
    assert [(i.seq, i.num_new_tokens) for i in out.scheduled] == [(b, 5)]
    assert len(a.output_token_ids) == 1, "a must not decode in the prefill step"
    out = _step(s)
    assert _seqs(out) == [a, b]


def test_mixed_mode_puts_decodes_and_prefills_in_one_step():
    s = _sched(mixed=True)
    a = _seq(4, max_tokens=10)
    s.add(a)
    _step(s)
    b = _seq(5)
    s.add(b)
    out = _step(s)
    assert [(i.seq, i.num_new_tokens) for i in out.scheduled] == [(a, 1), (b, 5)]


def test_max_loras_lets_requests_with_running_adapters_pass():
    s = _sched(max_loras=2)
    a1, b1 = _seq(3, "a", max_tokens=3), _seq(3, "b", max_tokens=3)
    c1, a2, base = _seq(3, "c"), _seq(3, "a"), _seq(3, None)
    for q in (a1, b1):
        s.add(q)
    _step(s)
    for q in (c1, a2, base):
        s.add(q)
    out = _step(s)
    assert _seqs(out) == [a2, base], "c would be a third adapter: it waits, later ones pass"
    assert s.waiting == [c1] and set(s.running_adapters()) == {"a", "b"}
    assert s.waiting_adapters() == ["c"]
    outs = _run_to_end(s)
    assert c1.finished
    assert all(len(o.adapters) <= 2 for o in outs)
    first_c = next(o for o in outs if c1 in _seqs(o))
    assert "c" in first_c.adapters and not any(q in s.running for q in (a1, b1))


def test_adapter_byte_budget():
    sizes = {"a": 60, "b": 50, "c": 30}
    s = _sched(max_loras=8, adapter_budget=100, adapter_bytes=sizes.__getitem__)
    a, b, c, a2 = _seq(2, "a"), _seq(2, "b"), _seq(2, "c"), _seq(2, "a")
    for q in (a, b, c, a2):
        s.add(q)
    out = _step(s)
    assert _seqs(out) == [a, c, a2], "b (60+50 > 100) waits; c (60+30) fits; a is already in"
    assert out.adapters == ["a", "c"]
    assert s.waiting == [b]
    _run_to_end(s)
    assert b.finished


def test_admission_waits_for_kv_blocks():
    s = _sched(num_blocks=4, block_size=4)
    a, b = _seq(9, max_tokens=3), _seq(5, max_tokens=2)
    s.add(a)
    s.add(b)
    out = _step(s)  # a takes blocks_for(9 + 1) = 3 blocks; b needs 2 but only 1 is free
    assert _seqs(out) == [a] and s.waiting == [b] and len(a.block_table) == 3
    while not a.finished:
        out = _step(s)
        assert b not in _seqs(out) or a.finished
    _run_to_end(s)
    assert b.finished and s.blocks.num_free == 4


def test_decode_preempts_newest_and_readmits_it():
    s = _sched(num_blocks=4, block_size=4)
    a, b = _seq(6, max_tokens=8), _seq(3, max_tokens=8)
    s.add(a)
    s.add(b)
    _step(s)  # a: blocks_for(7) = 2 blocks, b: blocks_for(4) = 1 block + the one left
    assert s.blocks.num_free == 1 and len(b.block_table) == 1
    preempted_out = None
    for _ in range(10):
        out = _step(s)
        if out.preempted:
            preempted_out = out
            break
    assert preempted_out is not None, "the pool of 4 blocks must run out"
    assert preempted_out.preempted == [b], "the newest running sequence is the victim"
    assert _seqs(preempted_out) == [a]
    assert s.waiting[0] is b and b.num_computed_tokens == 0 and b.block_table == []
    assert b.status is SeqStatus.WAITING and b.request.metrics.num_preemptions == 1
    assert s.num_preemptions == 1
    generated = len(b.output_token_ids)
    assert generated >= 1
    readmit = None
    for o in _run_to_end(s):
        if readmit is None and b in _seqs(o):
            readmit = next(i for i in o.scheduled if i.seq is b)
    assert readmit is not None and readmit.num_new_tokens == 3 + generated, "recompute all"
    assert len(b.output_token_ids) == 8 and len(a.output_token_ids) == 8
    assert s.blocks.num_free == s.blocks.num_blocks


def test_newest_sequence_needing_a_block_preempts_itself_in_mixed_mode():
    s = _sched(num_blocks=3, block_size=2, mixed=True)
    a, b = _seq(2, max_tokens=3), _seq(1, max_tokens=4)  # both fit alone in 3 blocks
    s.add(a)
    s.add(b)
    _step(s)  # a: blocks_for(3) = 2 blocks, b: blocks_for(2) = 1 block; none left
    _step(s)  # both decode within their blocks
    out = _step(s)  # b needs a 2nd block; it is the newest, so it yields rather than a
    assert out.preempted == [b] and _seqs(out) == [a]
    assert s.waiting == [b] and b.block_table == [] and b.num_computed_tokens == 0
    _run_to_end(s)
    assert a.finished and b.finished and s.blocks.num_free == 3


def test_finish_and_abort_free_blocks():
    s = _sched(num_blocks=16, block_size=4)
    a, b, c = _seq(8), _seq(8), _seq(8)
    for q in (a, b):
        s.add(q)
    _step(s)
    s.add(c)
    used = len(a.block_table)
    free_before = s.blocks.num_free
    s.finish(a)  # abort a running sequence
    assert a.finished and a.block_table == [] and a not in s.running
    assert s.blocks.num_free == free_before + used
    s.finish(c)  # abort a waiting one
    assert c not in s.waiting and c.finished
    _run_to_end(s)
    assert s.blocks.num_free == 16 and not s.has_unfinished()


@pytest.mark.parametrize("mixed", [False, True])
def test_random_workload_keeps_invariants_and_leaks_nothing(mixed):
    rng = random.Random(1234 + mixed)
    sizes = {k: rng.choice([10, 30, 50]) for k in "abcdef"}
    s = _sched(num_blocks=24, block_size=4, max_num_seqs=6, budget=40, max_loras=3,
               adapter_budget=100, mixed=mixed, adapter_bytes=sizes.__getitem__)
    pending = [
        _seq(rng.randint(1, 24), rng.choice([None, *sizes]), max_tokens=rng.randint(1, 20))
        for _ in range(40)
    ]
    everyone = list(pending)
    steps = 0
    while pending or s.has_unfinished():
        for _ in range(rng.randint(0, 2)):
            if pending:
                s.add(pending.pop(0))
        out = _step(s)
        steps += 1
        assert steps < 3000
        used = sum(sizes[k] for k in s.running_adapters())
        assert used <= 100
        assert out.num_batched_tokens <= 40
        if rng.random() < 0.03 and s.running:  # an abort now and then
            s.finish(rng.choice(s.running))
    assert s.blocks.num_free == s.blocks.num_blocks
    assert all(q.finished for q in everyone)
    assert s.num_preemptions > 0, "the workload is sized to exercise preemption"
    done = [q for q in everyone if q.finish_reason == "length"]
    assert all(len(q.output_token_ids) == q.request.max_tokens for q in done)
