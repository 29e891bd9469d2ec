"""adapters/stack_cache.py: when the stacked adapter weights are reused, appended to or rebuilt.

The pool and the stacks are stand-ins (collaborators of the unit): a stack records which
adapters it holds, so each test sees exactly what was built."""

from __future__ import annotations

from dataclasses import dataclass

from deltaserve.engine.adapters.stack_cache import StackCache


@dataclass
class _Stack:
    keys: list[str]
    appendable: bool = True

    def extended(self, other: _Stack) -> _Stack | None:
        return _Stack(self.keys + other.keys) if self.appendable else None


class _Pool:
    def __init__(self, budget: int):
        self.device_budget_bytes = budget
        self.loads: list[list[str]] = []

    def device_bytes(self, key: str) -> int:
        return 1

    def on_device(self, keys: list[str], protected: set[str]) -> list[str]:
        self.loads.append(list(keys))
        return list(keys)


@dataclass
class _FixedStack:  # no `extended`: the cache rebuilds it when adapters join
    keys: list[str]


def _cache(budget: int = 100, stack=_Stack) -> tuple[StackCache, _Pool]:
    pool = _Pool(budget)
    return StackCache(pool, lambda adapters: stack(list(adapters))), pool


def test_subset_reuses_and_joining_adapters_are_appended() -> None:
    cache, pool = _cache()
    assert cache.covering(["b", "a"], set()) == ["a", "b"]
    assert cache.covering(["a"], set()) == ["a", "b"]  # decode step of a steady batch
    assert cache.covering(["d", "a", "c", "b"], set()) == ["a", "b", "c", "d"]
    assert pool.loads == [["a", "b"], ["c", "d"]]  # only the newcomers were stacked
    assert cache.stack.keys == ["a", "b", "c", "d"]


def test_rebuilt_when_most_have_left() -> None:
    cache, pool = _cache()
    cache.covering(["a", "b", "c"], set())
    assert cache.covering(["a"], set()) == ["a"]  # 3 stacked for 1 wanted: too much padding
    assert pool.loads[-1] == ["a"] and cache.stack.keys == ["a"]


def test_rebuilt_when_the_union_exceeds_the_budget() -> None:
    cache, pool = _cache(budget=3)
    cache.covering(["a", "b"], set())
    assert cache.covering(["b", "c", "d"], set()) == ["b", "c", "d"]
    assert pool.loads[-1] == ["b", "c", "d"] and cache.stack.keys == ["b", "c", "d"]


def test_rebuilt_when_the_layouts_cannot_be_appended() -> None:
    cache, pool = _cache()
    cache.covering(["a"], set())
    cache.stack.appendable = False
    assert cache.covering(["a", "b"], set()) == ["a", "b"]
    assert pool.loads == [["a"], ["b"], ["a", "b"]]


def test_a_stack_that_cannot_grow_is_rebuilt_when_adapters_join() -> None:
    cache, pool = _cache(stack=_FixedStack)
    cache.covering(["b"], set())
    assert cache.covering(["a"], set()) == ["a"]  # a joined: rebuilt without b
    assert cache.covering(["a", "c"], set()) == ["a", "c"]
    assert cache.covering(["c"], set()) == ["a", "c"]  # a subset still reuses
    assert pool.loads == [["b"], ["a"], ["a", "c"]]
