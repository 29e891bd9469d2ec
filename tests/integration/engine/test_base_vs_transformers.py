"""The base model's logits match transformers for Llama, Mistral and Qwen2 (fp32)."""

from __future__ import annotations

import pytest
import torch

from deltaserve.engine.sampling_params import SamplingParams
from tests.integration.engine.conftest import engine_for, hf_logprobs
from tests.tiny import make_model

VARIANTS = {
    "llama-gqa": ("llama", {}),
    "llama-tied": ("llama", {"tie_word_embeddings": True}),
    "llama-mha-bias": ("llama", {"num_key_value_heads": 4, "attention_bias": True}),
    "llama3-rope": ("llama", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0,
                                               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                               "original_max_position_embeddings": 64},
                              "rope_theta": 500000.0}),
    "mistral": ("mistral", {}),
    "mistral-window": ("mistral", {"sliding_window": 8}),
    "qwen2": ("qwen2", {}),
    "qwen2-tied-mqa": ("qwen2", {"tie_word_embeddings": True, "num_key_value_heads": 1}),
}

PROMPTS = [[5, 17, 99, 3, 250, 41, 7], [120, 4], list(range(30, 70))]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_prefill_logits_match_transformers(tmp_path, variant):
    arch, overrides = VARIANTS[variant]
    hf = make_model(str(tmp_path), arch, **overrides)
    eng = engine_for(str(tmp_path))
    prompt = PROMPTS[2]
    # Every position's logits through our forward (one prefill, logits for all rows).
    ours = _prefill_all_logits(eng, prompt)
    with torch.no_grad():
        ref = hf(torch.tensor([prompt])).logits[0].float()
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("variant", ["llama-gqa", "mistral-window", "qwen2"])
def test_decode_logprobs_match_transformers(tmp_path, variant):
    """Greedy generation through prefill + paged decode steps, several prompts batched."""
    arch, overrides = VARIANTS[variant]
    hf = make_model(str(tmp_path), arch, **overrides)
    eng = engine_for(str(tmp_path), block_size=4)  # several blocks per sequence
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, logprobs=5)
    outs = eng.generate(PROMPTS, params)
    for prompt, out in zip(PROMPTS, outs, strict=True):
        gen = out.outputs[0].token_ids
        ref = hf_logprobs(hf, prompt, gen)
        assert gen == ref.argmax(-1).tolist()
        for pos, lp in enumerate(out.outputs[0].logprobs):
            top_lp, top_ids = ref[pos].topk(5)
            assert [t for t, _ in lp.top] == top_ids.tolist()
            torch.testing.assert_close(torch.tensor([v for _, v in lp.top]), top_lp,
                                       atol=2e-4, rtol=1e-4)
            assert lp.logprob == pytest.approx(ref[pos, gen[pos]].item(), abs=2e-4)


def test_bfloat16_close_to_transformers(tmp_path):
    hf = make_model(str(tmp_path), "llama", dtype=torch.bfloat16)
    eng = engine_for(str(tmp_path), dtype="bfloat16")
    ours = _prefill_all_logits(eng, PROMPTS[2])
    with torch.no_grad():
        ref = hf(torch.tensor([PROMPTS[2]])).logits[0].float()
    # bf16 keeps ~3 significant digits; compare the distributions, not bits.
    assert (ours.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9
    assert torch.nn.functional.cosine_similarity(ours, ref, dim=-1).min() > 0.99


def test_sharded_checkpoint_loads(tmp_path):
    hf = make_model(str(tmp_path / "full"), "llama")
    hf.save_pretrained(str(tmp_path / "sharded"), max_shard_size="40KB")
    from tests.tiny import make_tokenizer

    make_tokenizer(str(tmp_path / "sharded"))
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    a = _prefill_all_logits(engine_for(str(tmp_path / "full")), PROMPTS[0])
    b = _prefill_all_logits(engine_for(str(tmp_path / "sharded")), PROMPTS[0])
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def _prefill_all_logits(eng, prompt: list[int]) -> torch.Tensor:
    """Run one prefill of `prompt` through the engine's runner and return logits at every row."""
    from deltaserve.engine.request import Request, Sequence
    from deltaserve.engine.scheduler import ScheduledSeq, SchedulerOutput

    req = Request("probe", prompt, SamplingParams(max_tokens=1), 1)
    seq = Sequence(0, req, 0, seed=0)
    seq.block_table = eng.block_allocator.allocate(eng.block_allocator.blocks_for(len(prompt)))
    sched = SchedulerOutput([ScheduledSeq(seq, len(prompt))])
    inputs = eng.runner.prepare(sched)
    logits = eng.model(inputs.input_ids, inputs.positions, eng.kv_cache.layers, inputs.attn,
                       torch.arange(len(prompt), device=eng.device))
    eng.block_allocator.free(seq.block_table)
    return logits.cpu()
