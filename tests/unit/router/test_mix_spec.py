"""MixSpec parsing: registered configs, ad-hoc `adapters`, caps and clear errors."""

from __future__ import annotations

import pytest

from deltaserve.router.mix import MixLimits, MixSpec, MixSpecError, parse_adhoc, parse_registered

LIMITS = MixLimits(max_members=3, max_heads=4)


def test_registered_routing_is_used_as_given_and_defaults_to_uniform() -> None:
    cfg = {"kind": "mix", "inventory": ["a", "b"], "heads": 2, "routing": [[0.6, 0.4], [0, 1]]}
    spec = parse_registered(cfg, LIMITS)
    assert spec == MixSpec(("a", "b"), ((0.6, 0.4), (0.0, 1.0)))
    assert parse_registered({"inventory": ["a", "b"]}, LIMITS).routing == ((0.5, 0.5),)


def test_adhoc_weights_heads_and_routing() -> None:
    assert parse_adhoc([{"name": "a", "weight": 2}, {"name": "b", "weight": 1}], None, None,
                       LIMITS).routing == ((2.0, 1.0),)  # fmt: skip
    assert parse_adhoc([{"name": "a"}, {"name": "b"}], 2, None, LIMITS).routing == (
        (0.5, 0.5), (0.5, 0.5))  # fmt: skip
    spec = parse_adhoc([{"name": "a"}, {"name": "b"}], None, [[1, 0], [0, 1]], LIMITS)
    assert spec.heads == 2 and spec.routing[1] == (0.0, 1.0)


def test_cache_key_depends_on_member_content_and_routing() -> None:
    spec = MixSpec(("a", "b"), ((0.5, 0.5),))
    other = MixSpec(("a", "b"), ((0.6, 0.4),))
    assert spec.cache_key(["s1", "s2"]) == spec.cache_key(["s1", "s2"])
    assert spec.cache_key(["s1", "s2"]) != spec.cache_key(["s1", "s3"])
    assert spec.cache_key(["s1", "s2"]) != other.cache_key(["s1", "s2"])


@pytest.mark.parametrize("adapters, heads, routing, match", [
    ([], None, None, "non-empty"),
    ([{"name": n} for n in "abcd"], None, None, "cap of 3"),
    ([{"name": "a"}, {"name": "a"}], None, None, "twice"),
    ([{"name": "../x"}], None, None, "not a valid adapter name"),
    ([{"name": "a", "weight": 1}, {"name": "b"}], None, None, "every adapter or for none"),
    ([{"name": "a", "weight": float("nan")}], None, None, "finite"),
    ([{"name": "a"}], 5, None, "heads"),
    ([{"name": "a"}, {"name": "b"}], None, [[1, 0], [1]], "heads × members"),
    ([{"name": "a"}, {"name": "b"}], 3, [[1, 0]], "rows but heads=3"),
    ([{"name": "a", "weight": 1}], None, [[1]], "not both"),
    ([{"name": "a"}], None, [[1]] * 5, "heads"),
])  # fmt: skip
def test_adhoc_errors_are_clear(adapters, heads, routing, match) -> None:
    with pytest.raises(MixSpecError, match=match):
        parse_adhoc(adapters, heads, routing, LIMITS)


@pytest.mark.parametrize("cfg, match", [
    ({"inventory": "a"}, "list"),
    ({"inventory": ["a"], "heads": True}, "positive integer"),
    ({"inventory": ["a", "b"], "heads": 2, "routing": [[1, 0]]}, "one row per head"),
    ({"inventory": ["a", "b"], "routing": [["x", 0]]}, "finite"),
])  # fmt: skip
def test_registered_errors_are_clear(cfg, match) -> None:
    with pytest.raises(MixSpecError, match=match):
        parse_registered(cfg, LIMITS)
