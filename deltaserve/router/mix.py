"""What a mix is: its inventory and routing (`MixSpec`), parsed from a registered `mix`
adapter's deltaserve_adapter.json or from a request's ad-hoc `adapters` field, and checked.

Registered mixes use their routing as given (absent: uniform, MHR-μ). An ad-hoc mix is
`adapters: [{"name", "weight"}]` (weights as given; all omitted: uniform) with one head,
unless `heads` (the weights are repeated for every head) or a per-head `routing` (heads ×
members, columns in the order of `adapters`) is given. Member and head counts are capped.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


class MixError(ValueError):
    """A mix cannot be served; `param` names the offending request field (if any)."""

    code = "invalid_mix"

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param


class MixSpecError(MixError):
    """The mix's own definition is invalid (shape, caps, values)."""


class MixMemberError(MixError):
    """A member cannot be used: missing (`missing`), not a LoRA, or incompatible."""

    code = "mix_member_unusable"

    def __init__(self, message: str, *, missing: str | None = None, param: str | None = None):
        super().__init__(message, param=param)
        self.missing = missing
        if missing is not None:
            self.code = "mix_member_missing"


@dataclass(frozen=True)
class MixLimits:
    """Caps on what one mix may ask for (settings: --max-mix-members, --max-mix-heads)."""

    max_members: int = 8
    max_heads: int = 64


@dataclass(frozen=True)
class MixSpec:
    """An inventory of J LoRA names and routing weights [h][J] (used as given)."""

    inventory: tuple[str, ...]
    routing: tuple[tuple[float, ...], ...]

    @property
    def heads(self) -> int:
        return len(self.routing)

    def cache_key(self, member_uids: Sequence[str]) -> str:
        """sha256 over the members' content ids (in inventory order) and the routing."""
        payload = json.dumps({"members": list(member_uids), "routing": self.routing})
        return hashlib.sha256(payload.encode()).hexdigest()


def _check_name(name: object, param: str) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= 128 or set(name) - NAME_CHARS:
        raise MixSpecError(f"`{param}`: {name!r} is not a valid adapter name.", param=param)
    if name in (".", ".."):
        raise MixSpecError(f"`{param}`: {name!r} is not a valid adapter name.", param=param)
    return name


def _weight(value: object, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise MixSpecError(f"`{param}`: weights must be finite numbers, got {value!r}.", param=param)
    return float(value)


def check_spec(
    inventory: Sequence[str], routing: Sequence[Sequence[object]], limits: MixLimits, param: str
) -> MixSpec:
    """Names, caps, routing shape heads × members and finite weights; returns the spec."""
    names = tuple(_check_name(n, param) for n in inventory)
    if not names:
        raise MixSpecError(f"`{param}`: a mix needs at least one member.", param=param)
    if len(names) > limits.max_members:
        raise MixSpecError(
            f"`{param}`: {len(names)} members exceed this server's cap of {limits.max_members}.",
            param=param,
        )
    if len(set(names)) != len(names):
        raise MixSpecError(f"`{param}`: a member is listed twice.", param=param)
    heads = len(routing)
    if not 1 <= heads <= limits.max_heads:
        raise MixSpecError(
            f"`heads`: {heads} is outside 1..{limits.max_heads} (this server's cap).", param="heads"
        )
    rows = []
    for row in routing:
        if not isinstance(row, list | tuple) or len(row) != len(names):
            raise MixSpecError(
                f"`routing` must be heads × members ({heads} × {len(names)}).", param="routing"
            )
        rows.append(tuple(_weight(w, "routing") for w in row))
    return MixSpec(names, tuple(rows))


def uniform(members: int, heads: int) -> list[list[float]]:
    """MHR-μ: every head averages the inventory."""
    return [[1.0 / members] * members for _ in range(heads)]


def parse_registered(cfg: dict[str, Any], limits: MixLimits) -> MixSpec:
    """A registered mix's deltaserve_adapter.json (`inventory`, `heads`, `routing`)."""
    inventory = cfg.get("inventory")
    heads = cfg.get("heads", 1)
    if not isinstance(inventory, list):
        raise MixSpecError("mix: `inventory` must be a list of adapter names.")
    if isinstance(heads, bool) or not isinstance(heads, int):
        raise MixSpecError("mix: `heads` must be a positive integer.", param="heads")
    routing = cfg.get("routing")
    if routing is None:
        routing = uniform(max(len(inventory), 1), heads)
    if not isinstance(routing, list) or len(routing) != heads:
        raise MixSpecError(f"mix: `routing` must have one row per head ({heads}).")
    return check_spec(inventory, routing, limits, "inventory")


def parse_adhoc(
    adapters: Sequence[dict[str, Any]],
    heads: int | None,
    routing: Sequence[Sequence[float]] | None,
    limits: MixLimits,
) -> MixSpec:
    """A request's `adapters` [{"name", "weight"?}] with optional `heads` / `routing`."""
    if not isinstance(adapters, list | tuple) or not adapters:
        raise MixSpecError("`adapters` must be a non-empty list.", param="adapters")
    names = [a.get("name") if isinstance(a, dict) else None for a in adapters]
    given = [a.get("weight") if isinstance(a, dict) else None for a in adapters]
    if routing is not None:
        if any(w is not None for w in given):
            raise MixSpecError("Give `weight`s or a `routing`, not both.", param="routing")
        if heads is not None and heads != len(routing):
            raise MixSpecError(f"`routing` has {len(routing)} rows but heads={heads}.", param="routing")
        rows: Sequence[Sequence[object]] = routing
    else:
        if any(w is None for w in given) and not all(w is None for w in given):
            raise MixSpecError("Give a `weight` for every adapter or for none.", param="adapters")
        weights = [1.0 / len(names)] * len(names) if given[0] is None else list(given)
        n_heads = 1 if heads is None else heads
        if n_heads > limits.max_heads or n_heads < 1:
            raise MixSpecError(f"`heads` must be in 1..{limits.max_heads}.", param="heads")
        rows = [weights] * n_heads
    return check_spec(names, rows, limits, "adapters")  # type: ignore[arg-type]
