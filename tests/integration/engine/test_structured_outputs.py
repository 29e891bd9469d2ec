"""Structured outputs in the engine: a random tiny model constrained by xgrammar always emits
output that parses and validates, while unconstrained rows sharing the same steps are exactly
what they are without the constrained rows (the bitmask touches constrained rows only)."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from deltaserve.engine.adapters.base import AdapterRequest
from deltaserve.engine.grammar import GrammarError, GrammarSpec
from deltaserve.engine.sampling_params import SamplingParams
from tests.integration.engine.conftest import engine_for
from tests.integration.engine.test_proxy_vs_three_models import proxies  # noqa: F401 (fixture)
from tests.integration.server.tiny_model import build_all

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 99},
        "tag": {"enum": ["red", "green"]},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "age", "tag", "ok"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base, adapters = build_all(tmp_path_factory.mktemp("structured"), {"alpha": 4})
    return str(base), str(adapters / "alpha")


def _free(seed: int, n: int = 1) -> SamplingParams:
    return SamplingParams(max_tokens=12, temperature=1.0, seed=seed, n=n, ignore_eos=True)


def test_constrained_rows_validate_and_free_rows_are_unchanged(tiny):
    base, lora_dir = tiny
    eng = engine_for(base, max_lora_rank=16)
    lora = AdapterRequest(name="alpha", path=lora_dir)
    schema = eng.grammars.compile(GrammarSpec("json_schema", json.dumps(SCHEMA)))
    regex = eng.grammars.compile(GrammarSpec("regex", r"[a-c]{2,4}-[0-9]{3}"))
    free_prompts = [[0, 40, 41, 42], [0, 50, 51]]
    free_params = [_free(7), SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)]
    free_adapters = [None, lora]
    alone = engine_for(base, max_lora_rank=16).generate(free_prompts, free_params,
                                                        adapters=free_adapters)
    constrained = [
        SamplingParams(max_tokens=80, temperature=1.0, seed=s, n=3, grammar=schema)
        for s in range(3)
    ] + [SamplingParams(max_tokens=20, temperature=1.2, seed=9, grammar=regex)]
    prompts = [[0, 60 + i] for i in range(len(constrained))] + free_prompts
    adapters = [None, lora, None, lora] + free_adapters
    outs = eng.generate(prompts, constrained + free_params, adapters=adapters)
    for out in outs[:3]:
        for o in out.outputs:
            # strict=False: xgrammar's JSON strings admit raw control characters
            jsonschema.validate(json.loads(o.text, strict=False), SCHEMA)
            assert o.finish_reason == "stop"
    texts = {o.text for out in outs[:3] for o in out.outputs}
    assert len(texts) > 1  # really sampled, not one forced string
    assert re.fullmatch(r"[a-c]{2,4}-[0-9]{3}", outs[3].outputs[0].text)
    for got, want in zip(outs[4:], alone, strict=True):
        assert got.outputs[0].token_ids == want.outputs[0].token_ids


def test_choice_grammar_and_json_object(tiny):
    base, _ = tiny
    eng = engine_for(base)
    choice = eng.grammars.compile(GrammarSpec("choice", json.dumps(["yes", "no", "maybe"])))
    ebnf = eng.grammars.compile(GrammarSpec("grammar", 'root ::= "(" [0-9]+ ")"'))
    anyjson = eng.grammars.compile(GrammarSpec("json_object"))
    outs = eng.generate(
        [[0, 70], [0, 71], [0, 72]],
        [SamplingParams(max_tokens=10, temperature=1.0, seed=1, n=4, grammar=choice),
         SamplingParams(max_tokens=10, temperature=1.0, seed=2, grammar=ebnf),
         SamplingParams(max_tokens=300, temperature=0.7, seed=3, grammar=anyjson)],
    )
    assert all(o.text in ("yes", "no", "maybe") for o in outs[0].outputs)
    assert outs[1].outputs[0].text.startswith("(")
    if outs[2].outputs[0].finish_reason == "stop":
        assert isinstance(json.loads(outs[2].outputs[0].text, strict=False), dict)


def test_cache_and_errors(tiny):
    base, _ = tiny
    eng = engine_for(base)
    a = eng.grammars.compile(GrammarSpec("regex", "[0-9]+"))
    assert eng.grammars.compile(GrammarSpec("regex", "[0-9]+")) is a
    with pytest.raises(GrammarError):
        eng.grammars.compile(GrammarSpec("regex", "(unclosed"))
    with pytest.raises(GrammarError):
        eng.grammars.compile(GrammarSpec("grammar", "root ::= undefined_rule"))


def test_proxy_and_sparse_delta_rows_follow_grammars(llama_dir, proxies):  # noqa: F811
    """Constrained proxy rows are masked after the proxy combination; delta rows too."""
    model_dir, _ = llama_dir
    eng = engine_for(model_dir)
    regex = eng.grammars.compile(GrammarSpec("regex", r"[k-p]{3}[0-9]"))
    adapters = [AdapterRequest(name="px-full", path=str(proxies["px-full"][0]), kind="proxy"),
                AdapterRequest(name="px-lora", path=str(proxies["px-lora"][0]), kind="proxy"),
                AdapterRequest(name="delta", path=str(proxies["delta"][0]), kind="sparse_delta")]
    params = SamplingParams(max_tokens=10, temperature=1.0, seed=5, n=2, grammar=regex)
    outs = eng.generate([[257, 40 + i] for i in range(3)], params, adapters=adapters)
    for out in outs:
        assert all(re.fullmatch(r"[k-p]{3}[0-9]", o.text) for o in out.outputs), out.outputs
