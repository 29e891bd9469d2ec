"""Every served base-model family (Llama, Mistral, Qwen2, Qwen3 also with YaRN, Gemma 2,
Gemma 3, Phi-3, Mixtral) with every adapter kind, served in float32 in mixed batches with base
rows: greedy tokens and logprobs equal transformers (+ PEFT; for sparse deltas the densified
merge; for proxies three HF models)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from deltaserve.engine.adapters.base import AdapterError, AdapterRequest
from deltaserve.engine.sampling_params import SamplingParams
from tests.integration.engine.conftest import engine_for, hf_logprobs
from tests.integration.engine.family_helpers import FAMILIES, build_family
from tests.integration.engine.proxy_helpers import proxy_logprobs
from tests.tiny import CONFIGS, make_lora, make_model

# The longest prompt outgrows Gemma's window of 4 (sliding and global layers differ).
PROMPTS = [[5, 17, 99, 3, 250, 41, 7], [120, 4, 66], list(range(30, 52))]
GREEDY = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True, logprobs=2)
KINDS = {"lora": ["r2", "r4a", "r8"], "sparse_delta": ["delta"], "mix": ["mix"],
         "proxy": ["px-full", "px-lora"]}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    return request.param, build_family(request.param, tmp_path_factory.mktemp(request.param))


def _reference(fam, name, prompt, gen):
    if name is None:
        return hf_logprobs(fam.base, prompt, gen)
    oracle = fam.adapters[name].oracle
    if isinstance(oracle, tuple):  # proxy: (expert, anti-expert), alpha 1
        return proxy_logprobs(fam.base, oracle[0], oracle[1], prompt, gen, 1.0)
    return hf_logprobs(oracle, prompt, gen)


def _serve_and_check(fam, names, atol=3e-4):
    """One generate call: base rows and `names` interleaved over the prompts."""
    rows = [None] + [n for name in names for n in (name, None)]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(rows))]
    reqs = [fam.adapters[n].request if n else None for n in rows]
    eng = engine_for(str(fam.base_dir), max_lora_rank=16)
    outs = eng.generate(prompts, GREEDY, adapters=reqs)
    for name, prompt, out in zip(rows, prompts, outs, strict=True):
        gen = out.outputs[0].token_ids
        ref = _reference(fam, name, prompt, gen)
        assert gen == ref.argmax(-1).tolist(), name
        got = torch.tensor([lp.logprob for lp in out.outputs[0].logprobs])
        want = ref.gather(1, torch.tensor(gen).unsqueeze(1)).squeeze(1)
        torch.testing.assert_close(got, want, atol=atol, rtol=1e-4,
                                   msg=lambda m, name=name: f"{name}: {m}")
    return eng


@pytest.mark.parametrize("kind", list(KINDS))
def test_kind_matches_transformers(family, kind):
    """Each adapter kind next to base rows."""
    _, fam = family
    _serve_and_check(fam, KINDS[kind])


def test_every_kind_in_one_batch(family):
    """LoRAs of ranks 2/4/8, a sparse delta, a mix and two proxies share the steps."""
    _, fam = family
    eng = _serve_and_check(fam, [n for names in KINDS.values() for n in names])
    assert eng.last_batch_adapters >= 2


def test_fused_module_lora_refused_on_unfused_base(llama_dir, tmp_path):
    """A LoRA on Phi-3's fused qkv_proj over a base that has no such module: a clear
    AdapterError naming it (not a silent mis-mapping)."""
    model_dir, _ = llama_dir
    torch.manual_seed(0)
    phi3 = AutoModelForCausalLM.from_config(CONFIGS["phi3"]()).eval()  # same widths
    make_lora(phi3, str(tmp_path / "fused"), r=2, targets=("qkv_proj",))
    eng = engine_for(model_dir, max_lora_rank=16)
    with pytest.raises(AdapterError, match="no module qkv_proj"):
        eng.generate([PROMPTS[0]], GREEDY, adapters=[AdapterRequest("f", str(tmp_path / "fused"))])


def test_expert_lora_refused_on_mixtral(tmp_path):
    """LoRA on Mixtral's experts (PEFT saves it as target_parameters over the 3-D expert
    weights): a clear AdapterError naming them, not a silently ignored adapter."""
    make_model(str(tmp_path / "base"), "mixtral")
    base = AutoModelForCausalLM.from_pretrained(str(tmp_path / "base")).eval()
    make_lora(base, str(tmp_path / "experts"), r=2, targets=("q_proj",),
              target_parameters=["experts.gate_up_proj", "experts.down_proj"])
    eng = engine_for(str(tmp_path / "base"), max_lora_rank=16)
    with pytest.raises(AdapterError, match="target_parameters.*experts"):
        eng.generate([PROMPTS[0]], GREEDY,
                     adapters=[AdapterRequest("x", str(tmp_path / "experts"))])
