"""Prompt logprobs over HTTP: `echo` + `logprobs` (legacy shape, the first entry null) and
vLLM's `prompt_logprobs` on completions and chat equal transformers / PEFT log_softmax at
every prompt position; `max_tokens: 0` with echo scores without generating; streamed echo
carries the same prompt logprobs."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import torch
from peft import PeftModel
from transformers import AutoTokenizer, LlamaForCausalLM

from tests.integration.server.conftest import BASE_ID, RunningServer, TinyModel, start_server

TEXT = "The quick brown fox"


@pytest.fixture(scope="module")
def server(tiny_model: TinyModel) -> Iterator[RunningServer]:
    """float32, like the transformers oracle (--dtype auto may pick bfloat16 on this CPU)."""
    running = start_server(tiny_model, max_num_seqs=16, dtype="float32")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def oracles(tiny_model: TinyModel):
    base = LlamaForCausalLM.from_pretrained(tiny_model.base, dtype=torch.float32).eval()
    lora_base = LlamaForCausalLM.from_pretrained(tiny_model.base, dtype=torch.float32)
    alpha = PeftModel.from_pretrained(lora_base, tiny_model.adapters / "alpha").eval()
    return {BASE_ID: base, "alpha": alpha}


def _ref(model, ids: list[int]) -> torch.Tensor:
    """log_softmax at positions 0..P-2 and the logprob of each next prompt token: [P-1]."""
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].float(), dim=-1)
    return logp, logp.gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1)


def _post(server: RunningServer, path: str, body: dict) -> dict:
    r = httpx.post(f"{server.base_url}{path}", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("model", [BASE_ID, "alpha"])
def test_echo_logprobs_match_oracle(server: RunningServer, tiny_model, oracles, model) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model.base)
    ids = tokenizer.encode(TEXT)
    body = {"model": model, "prompt": ids, "echo": True, "logprobs": 2, "max_tokens": 1,
            "temperature": 0}
    choice = _post(server, "/v1/completions", body)["choices"][0]
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(ids) + 1  # the prompt, then the generated token
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    logp, want = _ref(oracles[model], ids)
    got = torch.tensor(lp["token_logprobs"][1:len(ids)])
    torch.testing.assert_close(got, want, atol=3e-4, rtol=1e-4)
    for j, top in enumerate(lp["top_logprobs"][1:len(ids)]):
        best = logp[j].topk(2).values.tolist()
        assert sorted(top.values(), reverse=True)[:2] == pytest.approx(best, abs=3e-4)
    assert choice["text"].startswith(tokenizer.decode(ids))  # token ids echo as their text


def test_max_tokens_zero_scores_only(server: RunningServer, tiny_model, oracles) -> None:
    body = {"model": "alpha", "prompt": TEXT, "echo": True, "logprobs": 0, "max_tokens": 0}
    out = _post(server, "/v1/completions", body)
    choice = out["choices"][0]
    ids = AutoTokenizer.from_pretrained(tiny_model.base).encode(TEXT)
    assert choice["text"] == TEXT and choice["finish_reason"] == "length"
    assert out["usage"]["completion_tokens"] == 0
    _, want = _ref(oracles["alpha"], ids)
    torch.testing.assert_close(torch.tensor(choice["logprobs"]["token_logprobs"][1:]), want,
                               atol=3e-4, rtol=1e-4)
    err = httpx.post(f"{server.base_url}/v1/completions", timeout=30,
                     json={"model": "alpha", "prompt": TEXT, "max_tokens": 0}).json()["error"]
    assert err["param"] == "max_tokens"


def test_vllm_prompt_logprobs_on_both_endpoints(server: RunningServer, oracles) -> None:
    messages = [{"role": "user", "content": "hi there"}]
    ids = _post(server, "/tokenize", {"model": "alpha", "messages": messages})["tokens"]
    chat = _post(server, "/v1/chat/completions", {
        "model": "alpha", "messages": messages, "prompt_logprobs": 3, "max_tokens": 2})
    plp = chat["prompt_logprobs"]
    assert len(plp) == len(ids) and plp[0] is None
    logp, want = _ref(oracles["alpha"], ids)
    for j, entry in enumerate(plp[1:]):
        actual = entry[str(ids[j + 1])]
        assert actual["logprob"] == pytest.approx(want[j].item(), abs=3e-4)
        assert actual["rank"] == int((logp[j] > want[j] + 1e-6).sum()) + 1
        ranked = sorted((v for k, v in entry.items() if v["rank"] <= 3), key=lambda v: v["rank"])
        assert [v["logprob"] for v in ranked][:3] == pytest.approx(logp[j].topk(3).values.tolist(),
                                                                   abs=3e-4)
    comp = _post(server, "/v1/completions", {
        "model": BASE_ID, "prompt": [ids, ids[:3]], "prompt_logprobs": 0, "max_tokens": 1})
    _, want = _ref(oracles[BASE_ID], ids)
    got = [c["prompt_logprobs"] for c in sorted(comp["choices"], key=lambda c: c["index"])]
    assert len(got[1]) == 3
    torch.testing.assert_close(
        torch.tensor([e[str(t)]["logprob"] for e, t in zip(got[0][1:], ids[1:], strict=True)]),
        want, atol=3e-4, rtol=1e-4)


def test_streamed_echo_carries_prompt_logprobs(server: RunningServer) -> None:
    body = {"model": "alpha", "prompt": TEXT, "echo": True, "logprobs": 1, "max_tokens": 4,
            "temperature": 0}
    plain = _post(server, "/v1/completions", body)["choices"][0]
    tokens: list = []
    lps: list = []
    text = ""
    for chunk in server.client.completions.create(stream=True, **body):
        for c in chunk.choices:
            text += c.text
            if c.logprobs is not None:
                tokens += c.logprobs.tokens
                lps += c.logprobs.token_logprobs
    assert text == plain["text"]
    assert tokens == plain["logprobs"]["tokens"]
    assert lps == pytest.approx(plain["logprobs"]["token_logprobs"])
