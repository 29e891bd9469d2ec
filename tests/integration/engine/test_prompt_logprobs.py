"""Prompt logprobs (vLLM's prompt_logprobs; OpenAI's echo + logprobs) equal the oracles'
log_softmax at every prompt position, for every adapter kind in one mixed batch (proxy rows:
the three-model combination), alongside rows that only generate, and for long prompts."""

from __future__ import annotations

import torch

from deltaserve.engine.adapters.base import AdapterRequest
from deltaserve.engine.sampling_params import SamplingParams
from tests.integration.engine.conftest import engine_for
from tests.integration.engine.test_proxy_vs_three_models import proxies  # noqa: F401 (fixture)

PROMPTS = [[5, 17, 99, 3, 250, 41, 7], [120, 4, 66], list(range(30, 58)), [200, 1, 2, 3, 9]]


def _oracle(models, prompt: list[int], alpha: float = 1.0) -> torch.Tensor:
    """log_softmax at prompt positions 0..P-2: [P-1, V]; models = (base,) or proxy triple."""
    ids = torch.tensor([prompt])
    with torch.no_grad():
        s = [m(ids).logits[0].float()[:-1] for m in models]
    combined = s[0] if len(s) == 1 else s[0] + alpha * (s[1] - s[2])
    return torch.log_softmax(combined, dim=-1)


def _check(out, prompt, ref: torch.Tensor, k: int, atol=3e-4):
    scores = out.prompt_logprobs
    assert scores is not None and len(scores) == len(prompt) and scores[0] is None
    got = torch.tensor([s.logprob for s in scores[1:]])
    want = ref.gather(1, torch.tensor(prompt[1:]).unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(got, want, atol=atol, rtol=1e-4)
    for j, s in enumerate(scores[1:]):
        assert s.token_id == prompt[j + 1]
        assert [t for t, _ in s.top] == ref[j].topk(k).indices.tolist()
        assert s.rank == int((ref[j] > ref[j, prompt[j + 1]] + 1e-5).sum()) + 1 or \
            abs(ref[j].sort(descending=True).values[s.rank - 1] - want[j]) < 1e-4


def test_every_kind_in_one_mixed_batch(llama_dir, llama_loras, proxies):  # noqa: F811
    model_dir, base = llama_dir
    lora = AdapterRequest(name="r4-all", path=llama_loras["r4-all"][0])
    delta = AdapterRequest(name="delta", path=str(proxies["delta"][0]), kind="sparse_delta")

    def px(name):
        return AdapterRequest(name=name, path=str(proxies[name][0]), kind="proxy")

    long_prompt = [(i * 37) % 250 for i in range(240)]
    plan = [  # (adapter, oracle models, alpha, prompt, scored?)
        (None, (base,), 1.0, PROMPTS[0], True),
        (lora, (llama_loras["r4-all"][1],), 1.0, PROMPTS[1], True),
        (delta, (proxies["delta"][1],), 1.0, PROMPTS[2], True),
        (px("px-full"), (base, proxies["px-full"][1], proxies["px-full"][2]), 1.0, PROMPTS[3],
         True),
        (px("px-lora"), (base, proxies["px-lora"][1], proxies["px-lora"][2]), 2.0, PROMPTS[0],
         True),
        (lora, None, 1.0, PROMPTS[2], False),  # generation only, same step
        (None, (base,), 1.0, long_prompt, True),
    ]
    eng = engine_for(model_dir, max_lora_rank=64)
    params = [SamplingParams(max_tokens=3, temperature=0, ignore_eos=True,
                             prompt_logprobs=2 if scored else None, n=2 if i == 0 else 1)
              for i, (*_, scored) in enumerate(plan)]
    outs = eng.generate([p for *_, p, _ in plan], params, adapters=[a for a, *_ in plan])
    assert eng.last_batch_adapters == 4 and eng.last_batch_size == len(plan) + 1  # n=2
    for (_, models, alpha, prompt, scored), out in zip(plan, outs, strict=True):
        if not scored:
            assert out.prompt_logprobs is None
            continue
        _check(out, prompt, _oracle(models, prompt, alpha), 2)
        assert all(len(o.token_ids) == 3 for o in out.outputs)


def test_max_tokens_zero_scores_without_generating(llama_dir):
    model_dir, base = llama_dir
    eng = engine_for(model_dir, max_model_len=64)
    prompt = [(i * 11) % 250 for i in range(64)]  # fills the whole context
    out = eng.generate([prompt], SamplingParams(max_tokens=0, prompt_logprobs=0))[0]
    assert out.finished and out.outputs[0].token_ids == [] and out.outputs[0].finish_reason == "length"
    _check(out, prompt, _oracle((base,), prompt), 0)
    assert eng.block_allocator.num_free == eng.block_allocator.num_blocks


def test_one_token_prompt(llama_dir):
    model_dir, _ = llama_dir
    out = engine_for(model_dir).generate([[42]], SamplingParams(max_tokens=1, prompt_logprobs=1))[0]
    assert out.prompt_logprobs == [None]
