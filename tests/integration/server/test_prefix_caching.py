"""Prefix caching and chunked prefill through the HTTP API: the official openai client, a real
uvicorn server, the tiny model and its LoRAs; what the cache did shows in usage and /metrics."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.server.conftest import BASE_ID, RunningServer, TinyModel, start_server
from tests.integration.server.test_engine_behaviour import metric_values

SYSTEM = [(i * 29 + 3) % 200 + 30 for i in range(96)]  # token ids: every server sees the same


def _ask(server: RunningServer, model: str, turn: list[int], **kw):
    return server.client.completions.create(model=model, prompt=SYSTEM + turn, max_tokens=8,
                                            temperature=0, extra_body={"ignore_eos": True}, **kw)


def _hits(server: RunningServer, kind: str) -> float:
    return metric_values(server)[("deltaserve_prefix_cache_hits_total", (("kind", kind),))]


@pytest.fixture(scope="module")
def servers(tiny_model: TinyModel):
    """Defaults with a small step budget (prompts span several chunks) and a plain server."""
    on = start_server(tiny_model, dtype="float32", max_num_seqs=8, max_num_batched_tokens=40)
    off = start_server(tiny_model, dtype="float32", max_num_seqs=8, enable_prefix_caching=False,
                       enable_chunked_prefill=False)
    yield on, off
    on.stop()
    off.stop()


def test_a_shared_system_prompt_is_served_from_the_cache(servers):
    on, off = servers
    for model, kind in ((BASE_ID, "base"), ("alpha", "lora"), ("beta", "lora")):
        before = _hits(on, kind)
        first = _ask(on, model, [5, 6, 7])
        second = _ask(on, model, [9, 8])
        assert first.usage.prompt_tokens_details.cached_tokens == 0
        assert second.usage.prompt_tokens_details.cached_tokens == 96  # 6 blocks of 16
        assert _hits(on, kind) - before == 96
        plain = _ask(off, model, [9, 8])
        assert second.choices[0].text == plain.choices[0].text  # the same tokens, cache or not
        assert plain.usage.prompt_tokens_details.cached_tokens == 0
    queries = metric_values(on)[("deltaserve_prefix_cache_queries_total", (("kind", "base"),))]
    assert queries >= 2 * len(SYSTEM)
    assert metric_values(off)[("deltaserve_prefix_cache_hits_total", (("kind", "base"),))] == 0


def test_streams_and_echo_scoring_with_chunks(servers):
    """A streamed prompt 2.5x the step budget, and prompt logprobs after a hit, equal the
    plain server's."""
    on, off = servers
    chunks = [c.choices[0].text for c in _ask(on, "gamma", [1, 2], stream=True) if c.choices]
    assert "".join(chunks) == _ask(off, "gamma", [1, 2]).choices[0].text
    body = {"model": BASE_ID, "prompt": SYSTEM + [4, 4], "max_tokens": 0, "echo": True,
            "logprobs": 1}
    got = httpx.post(f"{on.base_url}/v1/completions", json=body, timeout=60).json()
    want = httpx.post(f"{off.base_url}/v1/completions", json=body, timeout=60).json()
    g, w = got["choices"][0]["logprobs"], want["choices"][0]["logprobs"]
    assert g["tokens"] == w["tokens"] and g["token_logprobs"][0] is None
    assert g["token_logprobs"][1:] == pytest.approx(w["token_logprobs"][1:], abs=1e-4)


def test_the_flags_reach_the_engine(servers):
    on, off = servers
    assert on.app.state.server.engine.engine.scheduler.config.max_num_batched_tokens == 40
    plain = off.app.state.server.engine.engine
    assert not plain.block_allocator.enable_caching
    assert not plain.scheduler.config.enable_chunked_prefill
