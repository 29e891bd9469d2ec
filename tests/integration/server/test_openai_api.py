"""The OpenAI API over the real engine and a tiny model, driven by the official `openai` client."""

from __future__ import annotations

import openai
import pytest

from tests.integration.server.conftest import ADAPTERS, BASE_ID, RunningServer

GREEDY = {"temperature": 0.0}
IGNORE_EOS = {"ignore_eos": True}


def complete(server: RunningServer, **kwargs: object):
    return server.client.completions.create(**kwargs)


def stream_texts(stream) -> tuple[dict[int, str], dict[int, str | None], object]:
    """Concatenated text and last finish_reason per choice index, and the usage chunk."""
    texts: dict[int, str] = {}
    finish: dict[int, str | None] = {}
    usage = None
    for chunk in stream:
        if chunk.usage is not None:
            assert chunk.choices == []
            usage = chunk.usage
        for c in chunk.choices:
            piece = c.text if hasattr(c, "text") else (c.delta.content or "")
            texts[c.index] = texts.get(c.index, "") + piece
            if c.finish_reason is not None:
                finish[c.index] = c.finish_reason
    return texts, finish, usage


def test_models_list(server: RunningServer) -> None:
    models = {m.id: m for m in server.client.models.list().data}
    assert set(models) == {BASE_ID, *ADAPTERS}
    for name in ADAPTERS:
        extra = models[name].model_extra
        assert extra["parent"] == BASE_ID and extra["kind"] == "lora"
        assert models[name].owned_by == "deltaserve"


def test_adapters_change_outputs_and_greedy_is_deterministic(server: RunningServer) -> None:
    texts = {}
    for model in (BASE_ID, *ADAPTERS):
        first = complete(
            server, model=model, prompt="Hello", max_tokens=12, extra_body=IGNORE_EOS, **GREEDY
        )
        again = complete(
            server, model=model, prompt="Hello", max_tokens=12, extra_body=IGNORE_EOS, **GREEDY
        )
        assert first.choices[0].text == again.choices[0].text
        assert first.usage.completion_tokens == 12 and first.choices[0].finish_reason == "length"
        texts[model] = first.choices[0].text
    assert len(set(texts.values())) == len(texts), texts


@pytest.mark.parametrize("model", [BASE_ID, "beta"])
def test_completion_stream_equals_plain(server: RunningServer, model: str) -> None:
    args = dict(
        model=model,
        prompt=["The cat", "A dog"],
        n=2,
        max_tokens=16,
        extra_body=IGNORE_EOS,
        **GREEDY,
    )
    plain = complete(server, **args)
    texts, finish, usage = stream_texts(
        complete(server, stream=True, stream_options={"include_usage": True}, **args)
    )
    assert texts == {c.index: c.text for c in plain.choices}
    assert finish == {c.index: c.finish_reason for c in plain.choices}
    assert usage.completion_tokens == plain.usage.completion_tokens == 4 * 16
    assert usage.prompt_tokens == plain.usage.prompt_tokens


def test_chat_stream_equals_plain(server: RunningServer) -> None:
    args = dict(
        model="gamma",
        messages=[
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "Hi there"},
        ],
        max_tokens=20,
        extra_body=IGNORE_EOS,
        **GREEDY,
    )
    plain = server.client.chat.completions.create(**args)
    assert plain.choices[0].message.role == "assistant"
    texts, finish, usage = stream_texts(
        server.client.chat.completions.create(
            stream=True, stream_options={"include_usage": True}, **args
        )
    )
    assert texts == {0: plain.choices[0].message.content}
    assert finish == {0: "length"} and usage.total_tokens == plain.usage.total_tokens


def test_stop_string_truncates_in_both_modes(server: RunningServer) -> None:
    base = complete(
        server, model="alpha", prompt="Once", max_tokens=40, extra_body=IGNORE_EOS, **GREEDY
    )
    text = base.choices[0].text
    stop = text[10:12]
    expected = text[: text.index(stop)]
    stopped = complete(
        server,
        model="alpha",
        prompt="Once",
        max_tokens=40,
        stop=[stop, "\u2603"],
        extra_body=IGNORE_EOS,
        **GREEDY,
    )
    assert stopped.choices[0].text == expected and stopped.choices[0].finish_reason == "stop"
    texts, finish, _ = stream_texts(
        complete(
            server,
            model="alpha",
            prompt="Once",
            max_tokens=40,
            stop=[stop, "\u2603"],
            extra_body=IGNORE_EOS,
            stream=True,
            **GREEDY,
        )
    )
    assert texts == {0: expected} and finish == {0: "stop"}


def test_n_and_seeded_sampling(server: RunningServer) -> None:
    args = dict(
        model="beta", prompt="Seeds", max_tokens=12, temperature=1.0, n=3, extra_body=IGNORE_EOS
    )
    first = complete(server, seed=1234, **args)
    again = complete(server, seed=1234, **args)
    other = complete(server, seed=99, **args)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.text for c in first.choices] == [c.text for c in again.choices]
    assert [c.text for c in first.choices] != [c.text for c in other.choices]
    assert len({c.text for c in first.choices}) > 1  # samples of one request differ
    assert first.usage.completion_tokens == 36


def test_completion_logprobs_and_echo(server: RunningServer) -> None:
    r = complete(
        server,
        model=BASE_ID,
        prompt="Log",
        max_tokens=6,
        logprobs=3,
        extra_body=IGNORE_EOS,
        **GREEDY,
    )
    lp = r.choices[0].logprobs
    assert (
        len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    )
    assert "".join(lp.tokens) == r.choices[0].text
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert logprob <= 0 and 3 <= len(top) <= 4
        assert max(top.values()) == pytest.approx(logprob, abs=1e-4)  # greedy picks the best
        assert top[token] == pytest.approx(logprob, abs=1e-4)
    echoed = complete(
        server,
        model=BASE_ID,
        prompt="Log",
        max_tokens=6,
        echo=True,
        extra_body=IGNORE_EOS,
        **GREEDY,
    )
    assert echoed.choices[0].text == "Log" + r.choices[0].text


def test_chat_logprobs(server: RunningServer) -> None:
    r = server.client.chat.completions.create(
        model="alpha",
        messages=[{"role": "user", "content": "x"}],
        max_tokens=5,
        logprobs=True,
        top_logprobs=2,
        extra_body=IGNORE_EOS,
        **GREEDY,
    )
    content = r.choices[0].logprobs.content
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert len(t.top_logprobs) == 2 and t.bytes == list(t.token.encode())
        assert t.top_logprobs[0].logprob == pytest.approx(t.logprob, abs=1e-4)


def test_token_id_prompts(server: RunningServer) -> None:
    tokenizer = server.app.state.server.engine.tokenizer
    ids = tokenizer.encode("Hello")
    by_text = complete(
        server, model=BASE_ID, prompt="Hello", max_tokens=8, extra_body=IGNORE_EOS, **GREEDY
    )
    by_ids = complete(
        server, model=BASE_ID, prompt=[ids, ids[1:]], max_tokens=8, extra_body=IGNORE_EOS, **GREEDY
    )
    assert by_ids.choices[0].text == by_text.choices[0].text  # same ids, no extra BOS
    assert by_ids.usage.prompt_tokens == 2 * len(ids) - 1


def test_errors_are_typed_client_exceptions(server: RunningServer) -> None:
    with pytest.raises(openai.NotFoundError) as nf:
        complete(server, model="no-such-adapter", prompt="x")
    assert nf.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as too_long:
        complete(server, model=BASE_ID, prompt="x" * 1000, max_tokens=100)
    assert "maximum context length is 1024 tokens" in too_long.value.message
    with pytest.raises(openai.BadRequestError) as bad_field:
        server.client.chat.completions.create(
            model="alpha", messages=[{"role": "user", "content": "x"}], temperature=-2
        )
    assert bad_field.value.param == "temperature"
    with pytest.raises(openai.NotFoundError):
        server.client.chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "x"}], stream=True
        )
    server.wait_idle()
