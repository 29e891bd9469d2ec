"""A tenant's day with the SDK against the real server: upload → list → generate (plain,
stream, chat, async with gather, ad-hoc mix) → typed errors → delete.

Oracles: the uploaded adapter is a byte copy of the shared `alpha`, so greedy outputs must equal
alpha's (through the official openai client from `client.openai()`); an ad-hoc mix of two
identical members with weights summing to 1 is that member; streams must reassemble into the
non-streamed answer.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Iterator

import httpx
import openai
import pytest
from deltaserve_client import (
    Adapter,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    ChatCompletion,
    ChatCompletionChunk,
    Client,
    Completion,
    CompletionChunk,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    UnprocessableEntityError,
)

from tests.sdk.conftest import BASE_ID, AttemptCounter, RunningServer, TinyModel, sdk_client

GREEDY = {"temperature": 0.0, "max_tokens": 8}
PROMPT = "Hello"
MESSAGES = [{"role": "user", "content": "Say hi"}]
SAME_AS_ALPHA = [{"name": "alpha", "weight": 0.5}, {"name": "acme-lora", "weight": 0.5}]


@pytest.fixture(scope="module")
def acme(keyed_server: RunningServer) -> Iterator[Client]:
    with sdk_client(keyed_server, "acme") as client:
        yield client


@pytest.fixture(scope="module")
def uploaded(acme: Client, tiny_model: TinyModel) -> Adapter:
    """acme's private copy of the shared LoRA `alpha`."""
    return acme.adapters.upload("acme-lora", tiny_model.adapters / "alpha")


def text(out: Completion) -> str:
    return out.choices[0].text


def test_upload_list_get_and_models(acme: Client, uploaded: Adapter, tiny_model) -> None:
    files = [p for p in (tiny_model.adapters / "alpha").rglob("*") if p.is_file()]
    assert (uploaded.id, uploaded.owner, uploaded.kind) == ("acme-lora", "acme", "lora")
    assert re.fullmatch(r"[0-9a-f]{64}", uploaded.sha256)
    assert uploaded.bytes == sum(p.stat().st_size for p in files) and uploaded.rank == 4
    listed = {a.id: a for a in acme.adapters.list()}
    assert listed["acme-lora"] == uploaded and listed["alpha"].owner == "shared"
    assert acme.adapters.get("acme-lora") == uploaded
    models = {m.id: m for m in acme.models.list()}
    assert (models[BASE_ID].parent, models[BASE_ID].kind) == (None, None)
    assert (models["acme-lora"].parent, models["acme-lora"].kind) == (BASE_ID, "lora")
    assert set(listed) <= set(models)


def test_completion_matches_the_shared_original(acme: Client, uploaded: Adapter) -> None:
    out = acme.completions.create("acme-lora", PROMPT, **GREEDY)
    assert isinstance(out, Completion) and out.model == "acme-lora"
    assert out.usage is not None and out.usage.completion_tokens == len(out.choices[0].text) > 0
    oai = acme.openai()
    assert isinstance(oai, openai.OpenAI) and str(oai.base_url).rstrip("/").endswith("/v1")
    ref = oai.completions.create(model="alpha", prompt=PROMPT, **GREEDY)
    assert text(out) == ref.choices[0].text
    assert text(out) != text(acme.completions.create(BASE_ID, PROMPT, **GREEDY))


def test_stream_reassembles_the_completion(acme: Client, uploaded: Adapter) -> None:
    full = acme.completions.create("acme-lora", PROMPT, **GREEDY)
    with acme.completions.create(
        "acme-lora", PROMPT, stream=True, stream_options={"include_usage": True}, **GREEDY
    ) as stream:
        chunks = list(stream)
    assert all(isinstance(c, CompletionChunk) for c in chunks) and len(chunks) > 2
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text(full)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == full.choices[0].finish_reason and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage == full.usage


def test_chat_plain_and_streamed(acme: Client, uploaded: Adapter) -> None:
    chat = acme.chat.completions.create("acme-lora", MESSAGES, **GREEDY)
    assert isinstance(chat, ChatCompletion) and chat.choices[0].message.role == "assistant"
    ref = acme.openai().chat.completions.create(model="alpha", messages=MESSAGES, **GREEDY)
    assert chat.choices[0].message.content == ref.choices[0].message.content
    chunks = list(acme.chat.completions.create("acme-lora", MESSAGES, stream=True, **GREEDY))
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == chat.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == chat.choices[0].finish_reason


def test_adhoc_mix_weights_and_routing(acme: Client, uploaded: Adapter) -> None:
    alpha = text(acme.completions.create("alpha", PROMPT, **GREEDY))
    mixed = acme.completions.create(BASE_ID, PROMPT, adapters=SAME_AS_ALPHA, **GREEDY)
    routed = acme.completions.create(
        BASE_ID, PROMPT, adapters=[{"name": "alpha"}, {"name": "acme-lora"}], heads=2,
        routing=[[0.25, 0.75], [0.5, 0.5]], **GREEDY,
    )  # fmt: skip
    assert text(mixed) == text(routed) == alpha


def test_vllm_sampling_extensions_reach_the_engine(acme: Client) -> None:
    greedy = acme.completions.create(BASE_ID, PROMPT, max_tokens=12, temperature=0.0)
    top1 = acme.completions.create(
        BASE_ID, PROMPT, max_tokens=12, temperature=1.0, top_k=1, seed=7, ignore_eos=True,
        min_tokens=12,
    )  # fmt: skip
    assert top1.usage is not None and top1.usage.completion_tokens == 12
    assert text(top1).startswith(text(greedy))  # top_k=1 samples the greedy token


def test_async_client_gathers_every_kind_of_call(
    keyed_server: RunningServer, acme: Client, uploaded: Adapter
) -> None:
    async def stream_text(client: AsyncClient) -> str:
        stream = await client.completions.create("acme-lora", PROMPT, stream=True, **GREEDY)
        async with stream:
            return "".join([c.choices[0].text async for c in stream if c.choices])

    async def main() -> list:
        async with AsyncClient(keyed_server.base_url, api_key="key-acme", timeout=60) as client:
            return await asyncio.gather(
                client.completions.create("acme-lora", PROMPT, **GREEDY),
                client.completions.create(BASE_ID, PROMPT, adapters=SAME_AS_ALPHA, **GREEDY),
                client.chat.completions.create("acme-lora", MESSAGES, **GREEDY),
                stream_text(client),
                client.models.list(),
                client.adapters.get("acme-lora"),
            )

    plain, mixed, chat, streamed, models, adapter = asyncio.run(main())
    expected = text(acme.completions.create("acme-lora", PROMPT, **GREEDY))
    assert text(plain) == text(mixed) == streamed == expected
    sync_chat = acme.chat.completions.create("acme-lora", MESSAGES, **GREEDY)
    assert chat.choices[0].message.content == sync_chat.choices[0].message.content
    assert "acme-lora" in {m.id for m in models} and adapter == uploaded


def test_typed_errors_are_never_retried(
    keyed_server: RunningServer, uploaded: Adapter, tiny_model: TinyModel
) -> None:
    counter = AttemptCounter()
    hooks = httpx.Client(event_hooks={"response": [counter]})
    with sdk_client(keyed_server, "beta", http_client=hooks) as beta:
        with pytest.raises(NotFoundError) as lost:
            beta.completions.create("acme-lora", PROMPT, max_tokens=2)
        assert (lost.value.status_code, lost.value.code, lost.value.param) == (
            404, "model_not_found", "model")  # fmt: skip
        for call in (lambda: beta.adapters.get("acme-lora"),
                     lambda: beta.adapters.delete("acme-lora"),
                     lambda: beta.completions.create(BASE_ID, PROMPT, adapters=SAME_AS_ALPHA)):
            with pytest.raises(NotFoundError):
                call()  # fmt: skip
        with pytest.raises(BadRequestError) as bad:
            beta.completions.create(BASE_ID, PROMPT, temperature=-1.0)
        assert (bad.value.status_code, bad.value.param) == (400, "temperature")
        assert "temperature" in bad.value.message and bad.value.type == "invalid_request_error"
        with pytest.raises(PermissionDeniedError):
            beta.adapters.delete("alpha")
        with pytest.raises(PermissionDeniedError) as shared:
            beta.adapters.upload("beta-shared", tiny_model.adapters / "beta", shared=True)
        assert shared.value.param == "shared"
        with pytest.raises(UnprocessableEntityError) as invalid:
            beta.adapters.upload("bad name!", tiny_model.adapters / "beta")
        assert isinstance(invalid.value, BadRequestError) and invalid.value.param == "name"
    hooks.close()
    assert counter.statuses == [404, 404, 404, 404, 400, 403, 403, 422]


def test_authentication_errors(keyed_server: RunningServer) -> None:
    with sdk_client(keyed_server, None) as anonymous, pytest.raises(AuthenticationError) as none:
        anonymous.models.list()
    assert (none.value.status_code, none.value.code) == (401, "missing_api_key")
    with sdk_client(keyed_server, "nobody") as stranger, pytest.raises(AuthenticationError):
        stranger.completions.create(BASE_ID, PROMPT, max_tokens=2)


def test_conflict_replace_and_server_side_register(
    acme: Client, uploaded: Adapter, keyed_server: RunningServer, tiny_model: TinyModel
) -> None:
    with pytest.raises(ConflictError) as taken:
        acme.adapters.upload("acme-lora", tiny_model.adapters / "beta")
    assert taken.value.status_code == 409
    again = acme.adapters.upload("acme-lora", tiny_model.adapters / "alpha", replace=True)
    assert again.sha256 == uploaded.sha256
    source = keyed_server.sources / "acme-src"  # type: ignore[attr-defined]
    shutil.copytree(tiny_model.adapters / "beta", source)
    registered = acme.adapters.register("acme-src", str(source))
    assert (registered.owner, registered.source, registered.rank) == ("acme", "path", 8)
    assert acme.completions.create("acme-src", PROMPT, **GREEDY).choices[0].text == text(
        acme.completions.create("beta", PROMPT, **GREEDY))  # fmt: skip
    assert acme.adapters.delete("acme-src").deleted


def test_delete(acme: Client, tiny_model: TinyModel) -> None:
    acme.adapters.upload("acme-tmp", tiny_model.adapters / "beta")
    assert acme.completions.create("acme-tmp", PROMPT, max_tokens=2).choices
    gone = acme.adapters.delete("acme-tmp")
    assert (gone.id, gone.deleted) == ("acme-tmp", True)
    with pytest.raises(NotFoundError):
        acme.adapters.get("acme-tmp")
    with pytest.raises(NotFoundError):
        acme.completions.create("acme-tmp", PROMPT, max_tokens=2)
    assert "acme-tmp" not in {m.id for m in acme.models.list()}
