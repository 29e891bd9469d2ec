"""Engine-level behaviour on a tiny real model: preemption, abort, seeds, stops, n > 1."""

from __future__ import annotations

import asyncio

import pytest

from deltaserve.engine.adapters.base import AdapterRequest
from deltaserve.engine.async_engine import AsyncLLMEngine
from deltaserve.engine.config import EngineConfig
from deltaserve.engine.kv_cache import kv_bytes_per_block
from deltaserve.engine.sampling_params import SamplingParams
from tests.integration.engine.conftest import engine_for

PROMPTS = [[5, 17, 99, 3, 250, 41, 7], [120, 4, 66], list(range(30, 58)), [200, 1, 2, 3, 9]]


def _assert_clean(eng):
    """No request left, every KV block back, no adapter still referenced."""
    assert not eng.has_unfinished() and not eng.requests
    assert eng.block_allocator.num_free == eng.block_allocator.num_blocks
    assert all(eng.pool.refcount(k) == 0 for k in list(eng.pool._host))


def test_kv_exhaustion_preempts_and_results_are_unchanged(llama_dir, llama_loras):
    model_dir, _ = llama_dir
    adapters = [None, AdapterRequest("a", llama_loras["r4-all"][0]), None,
                AdapterRequest("b", llama_loras["r8-mlp"][0])] * 2
    prompts = [PROMPTS[i % 4] for i in range(8)]
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    ref = engine_for(model_dir).generate(prompts, params, adapters=adapters)
    # 16 blocks of 4 tokens: far less than 8 sequences of up to 68 tokens need.
    per_block = kv_bytes_per_block(engine_for(model_dir).model_config, 4, __import__("torch").float32)
    eng = engine_for(model_dir, block_size=4, kv_cache_memory_bytes=per_block * 20,
                     max_model_len=72)
    outs = eng.generate(prompts, params, adapters=adapters)
    assert eng.scheduler.num_preemptions > 0
    for a, b in zip(ref, outs, strict=True):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
    _assert_clean(eng)


def test_abort_returns_blocks_and_adapter_refs(llama_dir, llama_loras):
    model_dir, _ = llama_dir
    eng = engine_for(model_dir)
    adapter = AdapterRequest("a", llama_loras["r4-all"][0])
    params = SamplingParams(max_tokens=50, temperature=0, ignore_eos=True)
    eng.add_request("x", PROMPTS[0], params, adapter)
    eng.add_request("y", PROMPTS[1], params, adapter)
    eng.add_request("waiting", PROMPTS[2], params)
    eng.step()
    eng.step()
    assert eng.pool.refcount(adapter.key) == 2
    out = eng.abort("x")
    assert out.finished and out.outputs[0].finish_reason == "abort"
    assert eng.pool.refcount(adapter.key) == 1
    eng.abort("waiting")
    eng.abort("y")
    _assert_clean(eng)
    assert eng.abort("unknown") is None


def test_seeded_sampling_is_independent_of_batch_companions(llama_dir, llama_loras):
    model_dir, _ = llama_dir
    seeded = SamplingParams(max_tokens=16, temperature=0.9, top_p=0.9, top_k=50, seed=1234,
                            ignore_eos=True)
    alone = engine_for(model_dir).generate([PROMPTS[0]], seeded)[0].outputs[0].token_ids
    eng = engine_for(model_dir)
    others = SamplingParams(max_tokens=20, temperature=1.0, ignore_eos=True)
    prompts = [PROMPTS[2], PROMPTS[1], PROMPTS[0], PROMPTS[3]]
    params = [others, others, seeded, others]
    adapters = [AdapterRequest("a", llama_loras["r4-all"][0]), None, None, None]
    together = eng.generate(prompts, params, adapters=adapters)
    assert together[2].outputs[0].token_ids == alone
    other_seed = SamplingParams(max_tokens=16, temperature=0.9, top_p=0.9, top_k=50, seed=99,
                                ignore_eos=True)
    assert engine_for(model_dir).generate([PROMPTS[0]], other_seed)[0].outputs[0].token_ids != alone


def test_n_samples_differ_and_are_reproducible(llama_dir):
    model_dir, _ = llama_dir
    p = SamplingParams(n=3, max_tokens=12, temperature=1.0, seed=7, ignore_eos=True)
    a = engine_for(model_dir).generate([PROMPTS[0]], p)[0]
    b = engine_for(model_dir).generate([PROMPTS[0]], p)[0]
    assert [o.index for o in a.outputs] == [0, 1, 2]
    assert [o.token_ids for o in a.outputs] == [o.token_ids for o in b.outputs]
    assert len({tuple(o.token_ids) for o in a.outputs}) == 3


def test_stop_strings_token_ids_and_lengths(llama_dir):
    model_dir, _ = llama_dir
    eng = engine_for(model_dir)
    free = eng.generate([PROMPTS[0]], SamplingParams(max_tokens=20, temperature=0,
                                                      ignore_eos=True))[0].outputs[0]
    tok = eng.tokenizer
    assert free.text == tok.decode(free.token_ids, skip_special_tokens=True)
    # A stop string taken from the middle of the free-running text cuts right before it.
    stop = free.text[5:8]
    cut = eng.generate([PROMPTS[0]], SamplingParams(max_tokens=20, temperature=0, stop=[stop],
                                                     ignore_eos=True))[0].outputs[0]
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    assert cut.text == free.text[: free.text.index(stop)]
    kept = eng.generate([PROMPTS[0]], SamplingParams(max_tokens=20, temperature=0, stop=[stop],
                                                      include_stop_str_in_output=True,
                                                      ignore_eos=True))[0].outputs[0]
    assert kept.text == free.text[: free.text.index(stop) + len(stop)]
    # Stop token id: generation ends on it, and it is reported.
    stop_id = free.token_ids[3]
    st = eng.generate([PROMPTS[0]], SamplingParams(max_tokens=20, temperature=0,
                                                    stop_token_ids=[stop_id]))[0].outputs[0]
    assert st.token_ids == free.token_ids[: free.token_ids.index(stop_id) + 1]
    assert st.finish_reason == "stop" and st.stop_reason == stop_id
    # min_tokens suppresses the stop token until enough were generated.
    mt = eng.generate([PROMPTS[0]], SamplingParams(max_tokens=20, min_tokens=10, temperature=0,
                                                    stop_token_ids=[stop_id]))[0].outputs[0]
    assert len(mt.token_ids) >= 10 and stop_id not in mt.token_ids[:9]
    ln = eng.generate([PROMPTS[0]], SamplingParams(max_tokens=4, temperature=0,
                                                    ignore_eos=True))[0].outputs[0]
    assert ln.finish_reason == "length" and len(ln.token_ids) == 4
    _assert_clean(eng)


def test_prompt_beyond_context_is_refused(llama_dir):
    model_dir, _ = llama_dir
    eng = engine_for(model_dir, max_model_len=32)
    with pytest.raises(ValueError, match="maximum context length is 32"):
        eng.add_request("big", list(range(30)), SamplingParams(max_tokens=10))
    with pytest.raises(ValueError, match="empty"):
        eng.add_request("empty", [], SamplingParams(max_tokens=1))
    with pytest.raises(ValueError, match="token ids"):
        eng.add_request("oov", [10**6], SamplingParams(max_tokens=1))
    out = eng.generate([list(range(30))], SamplingParams(max_tokens=None, temperature=0,
                                                         ignore_eos=True))[0]
    assert len(out.outputs[0].token_ids) == 2 and out.outputs[0].finish_reason == "length"


async def _started_async_engine(model_dir: str) -> AsyncLLMEngine:
    eng = AsyncLLMEngine(EngineConfig(model=model_dir, dtype="float32", device="cpu",
                                      kv_cache_memory_bytes=16 << 20))
    await eng.start()
    return eng


def test_async_engine_streams_and_cancel_frees(llama_dir, llama_loras):
    model_dir, _ = llama_dir

    async def main():
        eng = await _started_async_engine(model_dir)
        try:
            params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
            adapter = AdapterRequest("a", llama_loras["r4-all"][0])
            seen = [o async for o in eng.generate(PROMPTS[0], params, "s1", adapter)]
            assert [len(o.outputs[0].token_ids) for o in seen] == list(range(1, 9))
            assert seen[-1].finished and not seen[-2].finished
            ref = engine_for(model_dir).generate([PROMPTS[0]], params, adapters=[adapter])[0]
            assert seen[-1].outputs[0].token_ids == ref.outputs[0].token_ids
            # A consumer that goes away mid-stream aborts the request.
            long = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)
            gen = eng.generate(PROMPTS[1], long, "s2", adapter)
            await gen.__anext__()
            await gen.aclose()
            for _ in range(100):
                await asyncio.sleep(0.02)
                st = eng.stats()
                if st.num_running == 0 and st.kv_cache_usage == 0:
                    break
            assert eng.stats().num_running == 0 and eng.stats().kv_cache_usage == 0
            assert eng.engine.pool.refcount(adapter.key) == 0
        finally:
            await eng.shutdown()

    asyncio.run(main())


def test_final_only_requests_get_one_output_beside_streaming_ones(llama_dir, llama_loras):
    """Non-streaming requests (final_only) get their finished output alone, with the engine's
    first-token stamp; streaming ones in the same steps still get one output per step."""
    model_dir, _ = llama_dir

    async def main():
        eng = await _started_async_engine(model_dir)
        try:
            adapter = AdapterRequest("a", llama_loras["r4-all"][0])

            async def run(rid, kind):
                params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True,
                                        output_kind=kind)
                return [o async for o in eng.generate(PROMPTS[0], params, rid, adapter)]

            final, streamed = await asyncio.gather(run("f", "final_only"), run("c", "cumulative"))
            assert len(final) == 1 and final[0].finished
            assert len(streamed) == 8
            assert final[0].outputs[0].token_ids == streamed[-1].outputs[0].token_ids
            m = final[0].metrics
            assert m.arrival_time <= m.first_token_time < m.finished_time
        finally:
            await eng.shutdown()

    asyncio.run(main())


def test_output_kind_is_validated():
    with pytest.raises(ValueError, match="output_kind"):
        SamplingParams(output_kind="delta")


def test_async_engine_loads_the_model_on_its_step_thread(llama_dir, tmp_path):
    """The step thread builds the engine (one OpenMP team for all torch work); a model that
    cannot load raises from the constructor, and an engine never started shuts down."""
    import threading

    with pytest.raises(ValueError, match="no config.json"):
        AsyncLLMEngine(EngineConfig(model=str(tmp_path), device="cpu"))
    eng = AsyncLLMEngine(EngineConfig(model=llama_dir[0], dtype="float32", device="cpu",
                                      kv_cache_memory_bytes=16 << 20))
    assert eng._thread is not None and eng._thread.name == "engine-step"
    assert eng._thread is not threading.current_thread()
    asyncio.run(eng.shutdown())
    assert eng._thread is None


def test_only_the_step_thread_runs_parallel_torch(llama_dir, llama_loras, monkeypatch):
    """A helper thread that set torch's process-wide count to 1 first (as the server's
    validation threads do before the engine starts) does not slow the step thread down; the
    adapter loads run single-threaded."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from deltaserve.engine import threads
    from deltaserve.engine.adapters.pool import AdapterPool
    from deltaserve.engine.llm_engine import LLMEngine

    steps, loads = [], []
    step, acquire = LLMEngine.step, AdapterPool.acquire
    monkeypatch.setattr(LLMEngine, "step",
                        lambda self: (steps.append(torch.get_num_threads()), step(self))[1])
    monkeypatch.setattr(AdapterPool, "acquire",
                        lambda self, a: (loads.append(torch.get_num_threads()), acquire(self, a))[1])
    before = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(1, initializer=threads.single_threaded) as helper:
            helper.submit(torch.get_num_threads).result()

        async def main():
            eng = await _started_async_engine(llama_dir[0])
            try:
                params = SamplingParams(max_tokens=3, temperature=0, ignore_eos=True)
                adapter = AdapterRequest("a", llama_loras["r4-all"][0])
                [_ async for _ in eng.generate(PROMPTS[0], params, "t1", adapter)]
            finally:
                await eng.shutdown()

        asyncio.run(main())
    finally:
        torch.set_num_threads(before)
    assert steps and set(steps) == {threads.STARTUP_THREADS}
    assert loads == [1]
