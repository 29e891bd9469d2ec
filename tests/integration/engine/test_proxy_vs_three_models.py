"""proxy adapters served by the engine equal argmax/log_softmax(s_base + α(s_expert − s_anti))
from three separate transformers models, inside mixed batches with base, LoRA and sparse-delta
rows; the small models' KV is freed by completion, abort and preemption."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deltaserve.adapter_store.compression import compress
from deltaserve.engine.adapters.base import AdapterError, AdapterRequest
from deltaserve.engine.sampling_params import SamplingParams
from tests.integration.engine.conftest import engine_for, hf_logprobs
from tests.integration.engine.proxy_helpers import make_proxy, proxy_logprobs, small_models
from tests.integration.engine.test_sparse_delta_vs_dense import make_finetune, merged_model
from tests.tiny import make_model

PROMPTS = [[5, 17, 99, 3, 250, 41, 7], [120, 4, 66], list(range(30, 58)), [200, 1, 2, 3, 9]]


def _params(alpha=None):
    return SamplingParams(max_tokens=6, temperature=0, ignore_eos=True, logprobs=2,
                          proxy_alpha=alpha)


@pytest.fixture(scope="module")
def proxies(llama_dir, tmp_path_factory):
    model_dir, base = llama_dir
    root = tmp_path_factory.mktemp("proxy")
    sm = small_models(root / "models")
    out = {
        "px-full": (make_proxy(root, "px-full", sm["anti"][0], sm["expert"][0]),
                    sm["expert"][1], sm["anti"][1]),
        "px-lora": (make_proxy(root, "px-lora", sm["anti"][0], sm["lora"][0], alpha=2.0),
                    sm["lora"][1], sm["anti"][1]),
    }
    make_finetune(base, root / "ft", seed=1)
    compress(Path(model_dir), root / "ft", root / "delta", "dare", 0.3, seed=3, progress=False)
    out["delta"] = (root / "delta", merged_model(base, root / "delta"))
    return out


def _req(name, proxies):
    return AdapterRequest(name=name, path=str(proxies[name][0]), kind="proxy")


def _check_proxy(out, prompt, base, expert, anti, alpha, atol=3e-4):
    gen = out.outputs[0].token_ids
    ref = proxy_logprobs(base, expert, anti, prompt, gen, alpha)
    assert gen == ref.argmax(-1).tolist()
    got = torch.tensor([lp.logprob for lp in out.outputs[0].logprobs])
    want = ref.gather(1, torch.tensor(gen).unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(got, want, atol=atol, rtol=1e-4)


def _check_plain(out, prompt, oracle, atol=3e-4):
    gen = out.outputs[0].token_ids
    ref = hf_logprobs(oracle, prompt, gen)
    assert gen == ref.argmax(-1).tolist()
    got = torch.tensor([lp.logprob for lp in out.outputs[0].logprobs])
    torch.testing.assert_close(got, ref.gather(1, torch.tensor(gen).unsqueeze(1)).squeeze(1),
                               atol=atol, rtol=1e-4)


def _all_free(eng) -> bool:
    return all(sm.blocks.num_free == sm.blocks.num_blocks and not sm.tables
               for sm in eng.small_models.live())


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_mixed_batch_matches_three_models(llama_dir, llama_loras, proxies, alpha):
    """Both proxies (full expert, LoRA expert sharing the anti-expert), base, LoRA and
    sparse-delta rows decode together; every row equals its own oracle."""
    model_dir, base = llama_dir
    lora = AdapterRequest(name="r4-all", path=llama_loras["r4-all"][0])
    delta = AdapterRequest(name="delta", path=str(proxies["delta"][0]), kind="sparse_delta")
    plan = [("px-full", None), (None, base), ("px-lora", None), (lora, llama_loras["r4-all"][1]),
            (delta, proxies["delta"][1]), ("px-full", None), ("px-lora", None)]
    eng = engine_for(model_dir, max_lora_rank=64)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(plan))]
    adapters = [_req(a, proxies) if isinstance(a, str) else a for a, _ in plan]
    outs = eng.generate(prompts, _params(alpha), adapters=adapters)
    assert eng.last_batch_adapters == 4 and eng.last_batch_size == len(plan)
    assert len(eng.small_models.live()) == 2  # anti shared by both proxies (and the LoRA expert)
    for (a, oracle), prompt, out in zip(plan, prompts, outs, strict=True):
        if isinstance(a, str):
            _check_proxy(out, prompt, base, proxies[a][1], proxies[a][2], alpha)
        else:
            _check_plain(out, prompt, oracle)
    assert _all_free(eng)


def test_adapter_alpha_default_and_request_override(llama_dir, proxies):
    """px-lora's config says alpha 2.0; a request without proxy_alpha uses it."""
    model_dir, base = llama_dir
    eng = engine_for(model_dir)
    out = eng.generate([PROMPTS[0]], _params(None), adapters=[_req("px-lora", proxies)])[0]
    _check_proxy(out, PROMPTS[0], base, proxies["px-lora"][1], proxies["px-lora"][2], 2.0)
    out = eng.generate([PROMPTS[1]], _params(None), adapters=[_req("px-full", proxies)])[0]
    _check_proxy(out, PROMPTS[1], base, proxies["px-full"][1], proxies["px-full"][2], 1.0)


def test_abort_and_preemption_free_small_model_kv(llama_dir, proxies):
    model_dir, base = llama_dir
    # 8 base blocks and 8 blocks per small model (two roles per sequence): decodes preempt.
    eng = engine_for(model_dir, kv_cache_memory_bytes=8 * 8192, max_model_len=48,
                     proxy_memory_bytes=1 << 20)
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True, logprobs=0)
    req = _req("px-full", proxies)
    for i in range(5):
        eng.add_request(f"r{i}", PROMPTS[2][:20], params, req)
    eng.step()
    assert [sm.blocks.num_blocks for sm in eng.small_models.live()] == [8, 8]
    assert not _all_free(eng)
    eng.abort("r0")
    finals = {}
    while eng.has_unfinished():
        for o in eng.step():
            if o.finished:
                finals[o.request_id] = o
    assert eng.scheduler.num_preemptions > 0
    assert _all_free(eng)
    for rid in ("r1", "r4"):
        _check_proxy(finals[rid], PROMPTS[2][:20], base, proxies["px-full"][1],
                     proxies["px-full"][2], 1.0)


def test_vocab_and_tokenizer_mismatch_refused(llama_dir, proxies, tmp_path):
    model_dir, _ = llama_dir
    src = proxies["px-full"][0]
    make_model(str(tmp_path / "big_vocab"), "llama", vocab_size=300, hidden_size=32,
               intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
               num_key_value_heads=1)
    bad = make_proxy(tmp_path, "bad", src / "anti", tmp_path / "big_vocab")
    eng = engine_for(model_dir)
    with pytest.raises(AdapterError, match="vocab_size 300"):
        eng.add_request("x", PROMPTS[0], _params(), AdapterRequest("bad", str(bad), "proxy"))
    tok = make_proxy(tmp_path, "tok", src / "anti", src / "expert")
    tj = tok / "expert" / "tokenizer.json"
    tj.write_text(tj.read_text().replace('"<pad>"', '"<PAD>"'))
    with pytest.raises(AdapterError, match="different tokenizer"):
        eng.add_request("y", PROMPTS[0], _params(), AdapterRequest("tok", str(tok), "proxy"))
