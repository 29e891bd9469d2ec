"""Prefix caching and chunked prefill change nothing a request gets (float32).

Every adapter kind (base, LoRAs of two ranks, a sparse delta, a proxy pair; a mix is served as
a LoRA) rides in mixed batches. The reference is the engine with both features off (whole
prompts in their own prefill steps, nothing reused), itself checked against transformers and
PEFT by the other oracle tests; here the rows also meet transformers directly after cache hits.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from deltaserve.adapter_store.compression import compress
from deltaserve.engine.adapters.base import AdapterRequest
from deltaserve.engine.sampling_params import SamplingParams
from tests.integration.engine.conftest import engine_for, hf_logprobs
from tests.integration.engine.proxy_helpers import make_proxy, small_models
from tests.integration.engine.test_sparse_delta_vs_dense import make_finetune

GREEDY = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True, logprobs=2)
SEEDED = SamplingParams(max_tokens=6, temperature=0.9, top_p=0.9, seed=7, ignore_eos=True)
SYSTEM = [(i * 37 + 11) % 250 for i in range(44)]  # the shared "system prompt"
OFF = dict(enable_prefix_caching=False, enable_chunked_prefill=False)


def _prompts(n: int, salt: int) -> list[list[int]]:
    """n prompts: the shared prefix plus a user turn of 3..20 tokens."""
    return [SYSTEM + [(salt * 13 + i * 7 + j * 3) % 250 for j in range(3 + (i * 5) % 18)]
            for i in range(n)]


@pytest.fixture(scope="module")
def kinds(llama_dir, llama_loras, tmp_path_factory):
    """One AdapterRequest per row kind (None: base), each with a content uid as the store
    gives it."""
    model_dir, base = llama_dir
    root = tmp_path_factory.mktemp("kinds")
    make_finetune(base, root / "ft", seed=4)
    compress(Path(model_dir), root / "ft", root / "delta", "dare", 0.3, seed=3, progress=False)
    sm = small_models(root)
    proxy = make_proxy(root, "proxy", sm["anti"][0], sm["lora"][0])
    return [
        None,
        AdapterRequest("r4-all", llama_loras["r4-all"][0], uid="sha-r4"),
        AdapterRequest("r16-rs", llama_loras["r16-rs"][0], uid="sha-r16"),
        AdapterRequest("delta", str(root / "delta"), kind="sparse_delta", uid="sha-delta"),
        AdapterRequest("proxy", str(proxy), kind="proxy", uid="sha-proxy"),
    ]


def _run(eng, waves, kinds, params):
    """Run each wave of prompts to completion in turn (later waves meet a warm cache)."""
    outs = []
    for prompts in waves:
        adapters = [kinds[i % len(kinds)] for i in range(len(prompts))]
        outs += eng.generate(prompts, params, adapters=adapters)
    return outs


def _same(got, want, logprobs=True):
    for g, w in zip(got, want, strict=True):
        assert g.outputs[0].token_ids == w.outputs[0].token_ids
        if logprobs:
            torch.testing.assert_close(torch.tensor([lp.logprob for lp in g.outputs[0].logprobs]),
                                       torch.tensor([lp.logprob for lp in w.outputs[0].logprobs]),
                                       atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("cfg", [
    dict(enable_prefix_caching=True, enable_chunked_prefill=True, max_num_batched_tokens=24),
    dict(enable_prefix_caching=True, enable_chunked_prefill=False),
    dict(enable_prefix_caching=False, enable_chunked_prefill=True, max_num_batched_tokens=24),
], ids=["cache+chunks", "cache", "chunks"])
def test_every_kind_matches_the_plain_engine(llama_dir, kinds, cfg):
    """Two waves sharing a prefix (hits across requests), prompts up to 2.7x the step budget,
    greedy and seeded: the same tokens and logprobs as the engine with both features off."""
    model_dir, _ = llama_dir
    waves = [_prompts(10, 1), _prompts(10, 2)]
    want = _run(engine_for(model_dir, block_size=4, max_num_seqs=16, **OFF), waves, kinds, GREEDY)
    eng = engine_for(model_dir, block_size=4, max_num_seqs=16, **cfg)
    _same(_run(eng, waves, kinds, GREEDY), want)
    stats = eng.scheduler.prefix_stats
    if cfg["enable_prefix_caching"]:
        for kind in ("base", "lora", "sparse_delta"):  # the 2nd wave hits the 1st's prefix
            assert stats.hits[kind] >= 2 * (len(SYSTEM) // 4) * 4, (kind, stats)
        assert "proxy" not in stats.queries  # proxy rows are not cached (prefix_cache.py)
    else:
        assert not stats.queries
    seeded_want = _run(engine_for(model_dir, block_size=4, max_num_seqs=16, **OFF), waves, kinds,
                       SEEDED)
    seeded = _run(engine_for(model_dir, block_size=4, max_num_seqs=16, **cfg), waves, kinds,
                  SEEDED)
    _same(seeded, seeded_want, logprobs=False)


def test_rows_after_a_hit_equal_transformers(llama_dir, llama_loras):
    """The rows that start from cached blocks still equal transformers + PEFT."""
    model_dir, base = llama_dir
    lora = AdapterRequest("r4-all", llama_loras["r4-all"][0], uid="sha-r4")
    eng = engine_for(model_dir, block_size=4, max_num_seqs=8, max_num_batched_tokens=32)
    eng.generate(_prompts(2, 5), GREEDY, adapters=[None, lora])
    prompts = _prompts(2, 6)
    outs = eng.generate(prompts, GREEDY, adapters=[None, lora])
    assert all(o.num_cached_tokens == len(SYSTEM) for o in outs)
    for prompt, out, oracle in zip(prompts, outs, [base, llama_loras["r4-all"][1]], strict=True):
        gen = out.outputs[0].token_ids
        ref = hf_logprobs(oracle, prompt, gen)
        assert gen == ref.argmax(-1).tolist()


def test_preempted_sequences_resume_from_their_cached_blocks(llama_dir, kinds):
    """A KV cache too small for the batch: sequences are preempted and recomputed (finding
    their own blocks again); tokens equal the roomy plain engine's."""
    model_dir, _ = llama_dir
    waves = [_prompts(12, 3)]
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True, logprobs=2)
    want = _run(engine_for(model_dir, block_size=4, **OFF), waves, kinds, params)
    small = engine_for(model_dir, block_size=4, max_num_seqs=16, max_num_batched_tokens=48,
                       max_model_len=96, kv_cache_memory_bytes=60 * 2048)  # 60 blocks of 4
    assert small.block_allocator.num_blocks == 60
    _same(_run(small, waves, kinds, params), want)
    assert small.scheduler.num_preemptions > 0
    assert sum(small.scheduler.prefix_stats.hits.values()) > 0  # see also test_scheduler.py


def test_echo_scoring_after_a_hit(llama_dir, kinds):
    """A request asking for prompt logprobs after its prefix is cached (and chunked) scores
    every prompt position as without the cache; its sibling samples still hit."""
    model_dir, _ = llama_dir
    scored = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True, prompt_logprobs=2, n=2)
    prompt = _prompts(1, 9)[0]
    ref = engine_for(model_dir, block_size=4, **OFF)
    eng = engine_for(model_dir, block_size=4, max_num_seqs=4, max_num_batched_tokens=16)
    for kind in kinds:
        want = ref.generate([prompt], scored, adapters=[kind])[0]
        eng.generate(_prompts(1, 8), GREEDY, adapters=[kind])  # caches SYSTEM for this kind
        got = eng.generate([prompt], scored, adapters=[kind])[0]
        assert len(got.prompt_logprobs) == len(prompt) and got.prompt_logprobs[0] is None
        for g, w in zip(got.prompt_logprobs[1:], want.prompt_logprobs[1:], strict=True):
            assert (g.token_id, g.rank) == (w.token_id, w.rank)
            assert g.logprob == pytest.approx(w.logprob, abs=2e-4)
            assert [t for t, _ in g.top] == [t for t, _ in w.top]
        assert [c.token_ids for c in got.outputs] == [c.token_ids for c in want.outputs]
    assert eng.scheduler.prefix_stats.hits["base"] >= len(SYSTEM) // 4 * 4  # the sibling


def test_a_reregistered_adapter_never_meets_stale_kv(llama_dir, llama_loras, tmp_path):
    """`mine` replaced by other weights (a new content uid) under the same name and path:
    its rows equal a fresh engine's for the new weights, not the old ones' cached K/V."""
    model_dir, _ = llama_dir
    path = tmp_path / "mine"
    shutil.copytree(llama_loras["r4-all"][0], path)
    prompts = _prompts(3, 4)
    eng = engine_for(model_dir, block_size=4)
    old = eng.generate(prompts, GREEDY, adapters=[AdapterRequest("mine", str(path), uid="v1")] * 3)
    shutil.rmtree(path)
    shutil.copytree(llama_loras["r8-mlp"][0], path)
    new_req = AdapterRequest("mine", str(path), uid="v2")
    new = eng.generate(prompts, GREEDY, adapters=[new_req] * 3)
    fresh = engine_for(model_dir, block_size=4, **OFF).generate(prompts, GREEDY,
                                                                adapters=[new_req] * 3)
    _same(new, fresh)
    assert [o.outputs[0].token_ids for o in new] != [o.outputs[0].token_ids for o in old]
    assert all(o.num_cached_tokens == 0 for o in new[:1])  # v2's first row found nothing


def test_tenant_scope_keeps_base_rows_apart(llama_dir):
    """Global scope: two tenants' base rows share a cached prompt; tenant scope: never."""
    model_dir, _ = llama_dir
    prompt = _prompts(1, 2)
    for scope, shared in (("global", True), ("tenant", False)):
        eng = engine_for(model_dir, block_size=4, prefix_cache_scope=scope)
        eng.add_request("a", prompt[0], GREEDY, tenant="acme")
        while eng.has_unfinished():
            eng.step()
        eng.add_request("b", prompt[0], GREEDY, tenant="globex")
        out = []
        while eng.has_unfinished():
            out += eng.step()
        assert (out[-1].num_cached_tokens > 0) is shared, scope
