"""SamplingParams: normalisation and validation of every field."""

from __future__ import annotations

import pytest

from deltaserve.engine.sampling_params import MAX_LOGPROBS, SamplingParams


def test_defaults_and_normalisation():
    p = SamplingParams(stop="END", top_k=0, stop_token_ids=None)
    assert p.stop == ["END"] and p.top_k == -1 and p.stop_token_ids == []
    assert not p.greedy and SamplingParams(temperature=0.0).greedy


@pytest.mark.parametrize("kwargs", [
    {"n": 1, "max_tokens": 1},
    {"max_tokens": None, "min_tokens": 50},
    {"min_tokens": 16, "max_tokens": 16},
    {"temperature": 0.0},
    {"top_p": 1.0},
    {"top_p": 1e-6},
    {"top_k": 1},
    {"logprobs": 0},
    {"logprobs": MAX_LOGPROBS},
    {"seed": 0},
    {"seed": 2**64 - 1},
    {"seed": -1},
])
def test_valid_edges(kwargs):
    SamplingParams(**kwargs).validate()


@pytest.mark.parametrize("kwargs, match", [
    ({"n": 0}, "n must be"),
    ({"n": -3}, "n must be"),
    ({"n": 1.5}, "n must be"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"min_tokens": -1}, "min_tokens"),
    ({"min_tokens": 5, "max_tokens": 4}, "must not exceed"),
    ({"temperature": -0.01}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.01}, "top_p"),
    ({"top_p": float("nan")}, "top_p"),
    ({"top_k": -2}, "top_k"),
    ({"logprobs": -1}, "logprobs"),
    ({"logprobs": MAX_LOGPROBS + 1}, "logprobs"),
    ({"stop": ["ok", ""]}, "stop strings"),
    ({"seed": 2**64}, "seed"),
])
def test_invalid_values_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("field, value", [
    ("n", 0), ("temperature", -1.0), ("top_p", 2.0), ("top_k", -5), ("logprobs", 99),
])
def test_validate_checks_mutated_params(field, value):
    p = SamplingParams()
    setattr(p, field, value)
    with pytest.raises(ValueError):
        p.validate()
