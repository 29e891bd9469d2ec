"""Every LoRA matches PEFT, alone and inside mixed batches with base rows and other adapters."""

from __future__ import annotations

import pytest
import torch

from deltaserve.engine.adapters.base import AdapterRequest
from deltaserve.engine.sampling_params import SamplingParams
from tests.integration.engine.conftest import engine_for, hf_logprobs

PROMPTS = [[5, 17, 99, 3, 250, 41, 7], [120, 4, 66], list(range(30, 58)), [200, 1, 2, 3, 9]]
GREEDY = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True, logprobs=3)


def _req(name, loras):
    return AdapterRequest(name=name, path=loras[name][0])


@pytest.mark.parametrize("name", ["r1-qv", "r4-all", "r8-mlp", "r16-rs", "r64-ko"])
def test_lora_matches_peft(llama_dir, llama_loras, name):
    model_dir, _ = llama_dir
    peft_model = llama_loras[name][1]
    eng = engine_for(model_dir, max_lora_rank=64)
    outs = eng.generate(PROMPTS, GREEDY, adapters=[_req(name, llama_loras)] * len(PROMPTS))
    for prompt, out in zip(PROMPTS, outs, strict=True):
        gen = out.outputs[0].token_ids
        ref = hf_logprobs(peft_model, prompt, gen)
        assert gen == ref.argmax(-1).tolist()
        got = torch.tensor([lp.logprob for lp in out.outputs[0].logprobs])
        want = ref.gather(1, torch.tensor(gen).unsqueeze(1)).squeeze(1)
        torch.testing.assert_close(got, want, atol=3e-4, rtol=1e-4)


def test_lora_changes_output(llama_dir, llama_loras):
    model_dir, base = llama_dir
    eng = engine_for(model_dir, max_lora_rank=64)
    base_out = eng.generate([PROMPTS[0]], GREEDY)[0].outputs[0].logprobs
    lora_out = eng.generate([PROMPTS[0]], GREEDY, adapters=[_req("r4-all", llama_loras)])[0]
    assert abs(base_out[0].logprob - lora_out.outputs[0].logprobs[0].logprob) > 1e-3


def _mixed_requests(loras):
    """Base rows plus five adapters of ranks 1..64, interleaved, several prompts each."""
    names = [None, "r1-qv", "r4-all", None, "r8-mlp", "r16-rs", "r64-ko", "r4-all", None, "r1-qv"]
    reqs = []
    for i, name in enumerate(names):
        prompt = PROMPTS[i % len(PROMPTS)]
        reqs.append((prompt, _req(name, loras) if name else None))
    return reqs


def test_mixed_batch_equals_each_alone(llama_dir, llama_loras):
    model_dir, _ = llama_dir
    reqs = _mixed_requests(llama_loras)
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    eng = engine_for(model_dir, max_lora_rank=64)
    together = eng.generate([p for p, _ in reqs], params, adapters=[a for _, a in reqs])
    assert eng.last_batch_adapters >= 5  # they really shared steps
    alone_eng = engine_for(model_dir, max_lora_rank=64)
    for (prompt, adapter), out in zip(reqs, together, strict=True):
        alone = alone_eng.generate([prompt], params, adapters=[adapter])[0]
        assert out.outputs[0].token_ids == alone.outputs[0].token_ids


def test_arrivals_mid_generation_do_not_change_results(llama_dir, llama_loras):
    """Requests join while others are mid-decode (continuous batching), greedy unchanged."""
    model_dir, _ = llama_dir
    reqs = _mixed_requests(llama_loras)
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    ref = engine_for(model_dir, max_lora_rank=64).generate(
        [p for p, _ in reqs], params, adapters=[a for _, a in reqs]
    )
    for mixed in (False, True):
        eng = engine_for(model_dir, max_lora_rank=64, mixed_prefill_decode=mixed)
        final = {}
        pending = list(enumerate(reqs))
        while pending or eng.has_unfinished():
            if pending:  # one new request every step
                i, (prompt, adapter) = pending.pop(0)
                eng.add_request(f"r{i}", prompt, params, adapter)
            for out in eng.step():
                if out.finished:
                    final[out.request_id] = out
        for i, out in enumerate(ref):
            assert final[f"r{i}"].outputs[0].token_ids == out.outputs[0].token_ids, (mixed, i)


def test_adapter_cap_per_step_still_completes_all(llama_dir, llama_loras):
    """With max_loras=2, five adapters take turns; every result equals the uncapped run."""
    model_dir, _ = llama_dir
    reqs = _mixed_requests(llama_loras)
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    ref = engine_for(model_dir, max_lora_rank=64).generate(
        [p for p, _ in reqs], params, adapters=[a for _, a in reqs])
    eng = engine_for(model_dir, max_lora_rank=64, max_loras=2)
    seen = 0
    for i, (p, a) in enumerate(reqs):
        eng.add_request(f"c{i}", p, params, a)
    final = {}
    while eng.has_unfinished():
        outs = eng.step()
        seen = max(seen, eng.last_batch_adapters)
        assert len(eng.scheduler.running_adapters()) <= 2
        final.update({o.request_id: o for o in outs if o.finished})
    assert seen == 2
    for i, out in enumerate(ref):
        assert final[f"c{i}"].outputs[0].token_ids == out.outputs[0].token_ids


def test_default_admits_every_adapter_that_fits_the_pool(llama_dir, llama_loras):
    """No count cap by default: all five adapters share the first step; the gateway's
    max_lora reports what the byte budget holds."""
    model_dir, _ = llama_dir
    reqs = _mixed_requests(llama_loras)
    eng = engine_for(model_dir, max_lora_rank=64, max_loras=None)
    assert eng.scheduler.config.max_loras == eng.config.max_num_seqs
    for i, (p, a) in enumerate(reqs):
        eng.add_request(f"d{i}", p, SamplingParams(max_tokens=2, ignore_eos=True), a)
    eng.step()
    assert eng.last_batch_adapters == 5
    stats = eng.stats()
    largest = eng._max_lora_bytes()
    assert stats.max_loras == min(eng.config.max_num_seqs, eng.pool.device_budget_bytes // largest)


def test_default_budget_is_bytes_not_a_count(llama_dir, llama_loras):
    """A pool budget that fits two of these adapters (real ranks) admits two per step."""
    model_dir, _ = llama_dir
    reqs = [(p, a) for p, a in _mixed_requests(llama_loras) if a is not None]
    probe = engine_for(model_dir, max_lora_rank=64, max_loras=None)
    sizes = {}
    for _, a in reqs:
        probe.pool.acquire(a)
        sizes[a.key] = probe.pool.device_bytes(a.key)
    budget = sorted(sizes.values())[-1] + sorted(sizes.values())[-2]
    eng = engine_for(model_dir, max_lora_rank=64, max_loras=None, adapter_device_bytes=budget)
    for i, (p, a) in enumerate(reqs):
        eng.add_request(f"b{i}", p, SamplingParams(max_tokens=3, ignore_eos=True), a)
    most = 0
    while eng.has_unfinished():
        eng.step()
        running = eng.scheduler.running_adapters()
        assert sum(sizes[k] for k in running) <= budget
        most = max(most, len(running))
    assert most >= 2
