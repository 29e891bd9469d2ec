"""Units without HTTP: stream deltas, prompts and chat templates, the adapter resolver."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from deltaserve.engine.outputs import CompletionOutput
from deltaserve.engine.sampling_params import SamplingParams
from deltaserve.entrypoints.adapters import AdapterNotFoundError, DirectoryAdapterResolver
from deltaserve.entrypoints.errors import BadRequestError
from deltaserve.entrypoints.openai.deltas import DeltaTracker, holdback_chars
from deltaserve.entrypoints.openai.generation import merge_async_iterators
from deltaserve.entrypoints.openai.prompts import chat_prompt, completion_prompts
from tests.integration.server.tiny_model import build_tokenizer
from tests.unit.entrypoints.conftest import make_lora_dir
from tests.unit.entrypoints.fake_engine import shared_tokenizer


def out(text: str, n_tokens: int, finish: str | None = None) -> CompletionOutput:
    return CompletionOutput(0, text, list(range(n_tokens)), None, finish)


def test_delta_holds_back_possible_stop_string_prefix() -> None:
    tracker = DeltaTracker(holdback=holdback_chars(SamplingParams(stop=["END", "x"])))
    assert tracker.holdback == 2
    held = tracker.take(out("ab", 2))  # tokens arrived, their text is held back
    assert held.text == "" and held.token_ids == [0, 1]
    assert tracker.take(out("ab", 2)) is None  # nothing new at all
    assert tracker.take(out("abcE", 4)).text == "ab"
    d = tracker.take(out("abcEN", 5))
    assert d.text == "c" and d.token_ids == [4]
    final = tracker.take(out("abcEN", 6, "stop"))  # the stop string completed and was cut
    assert final.text == "EN" and final.finish_reason == "stop"
    assert tracker.take(out("abcEN", 6, "stop")) is None


def test_delta_per_token_even_when_text_is_empty() -> None:
    """Tokens decoding to nothing (specials, partial UTF-8) still stream one delta each."""
    tracker = DeltaTracker()
    deltas = [tracker.take(out("", n)) for n in (1, 2, 3)]
    assert [(d.text, d.token_ids) for d in deltas] == [("", [0]), ("", [1]), ("", [2])]
    last = tracker.take(out("x", 4, "length"))
    assert last.text == "x" and last.token_ids == [3] and last.finish_reason == "length"


def test_delta_waits_for_incomplete_utf8() -> None:
    tracker = DeltaTracker()
    assert tracker.take(out("a\ufffd", 2)).text == "a"
    assert tracker.take(out("a\ufffd\ufffd", 3)).text == ""  # a token, but still no character
    assert tracker.take(out("aé", 4)).text == "é"
    assert holdback_chars(SamplingParams(stop=["abc"], include_stop_str_in_output=True)) == 0


def test_completion_prompt_forms() -> None:
    tok = shared_tokenizer()
    (one,) = completion_prompts(tok, "ab")
    assert one.token_ids == tok.encode("ab") and one.text == "ab"
    assert [p.token_ids for p in completion_prompts(tok, [4, 5])] == [[4, 5]]
    assert [p.token_ids for p in completion_prompts(tok, [[4], [5, 6]])] == [[4], [5, 6]]
    assert [p.text for p in completion_prompts(tok, ["a", "b"])] == ["a", "b"]
    with pytest.raises(BadRequestError):
        completion_prompts(tok, [[]])


def test_chat_prompt_uses_default_template_when_tokenizer_has_none() -> None:
    tok = build_tokenizer(chat_template=None)
    prompt = chat_prompt(
        tok, [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    )
    assert tok.decode(prompt.token_ids) == "<s><|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\n"
    assert prompt.token_ids.count(tok.bos_token_id) == 1  # the template's BOS, not a second one


def test_resolver(tmp_path: Path) -> None:
    root = tmp_path / "adapters"
    make_lora_dir(root / "a-1")
    (root / "not-an-adapter").mkdir()
    (root / "mixed").mkdir()
    (root / "mixed" / "deltaserve_adapter.json").write_text('{"kind": "mix", "inventory": ["a-1"]}')
    resolver = DirectoryAdapterResolver(root)
    assert [(a.name, a.kind) for a in resolver.list()] == [("a-1", "lora"), ("mixed", "mix")]
    req = resolver.resolve("a-1")
    assert (req.name, req.kind, Path(req.path)) == ("a-1", "lora", (root / "a-1").resolve())
    assert req.uid and req.uid == resolver.resolve("a-1").uid
    (root / "a-1" / "adapter_model.safetensors").write_bytes(b"new weights")
    assert resolver.resolve("a-1").uid != req.uid  # replaced content → new identity
    for bad in ("not-an-adapter", "..", "../adapters/a-1", "missing"):
        with pytest.raises(AdapterNotFoundError):
            resolver.resolve(bad)
    assert DirectoryAdapterResolver(None).list() == []


def test_merge_interleaves_and_closes_everything_on_early_exit() -> None:
    closed: list[int] = []

    async def numbers(i: int, count: int, delay: float):
        try:
            for k in range(count):
                await asyncio.sleep(delay)
                yield k
        finally:
            closed.append(i)

    async def main() -> None:
        items = [
            x async for x in merge_async_iterators(numbers(0, 3, 0.001), numbers(1, 2, 0.0015))
        ]
        assert sorted(items) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
        assert sorted(closed) == [0, 1]
        closed.clear()
        merged = merge_async_iterators(numbers(0, 100, 0.001), numbers(1, 100, 0.001))
        await anext(merged)
        await merged.aclose()  # the consumer goes away: every source is closed
        assert sorted(closed) == [0, 1]

    asyncio.run(main())
