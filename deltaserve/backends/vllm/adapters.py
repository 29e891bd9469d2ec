"""Which adapters vLLM can run, and their integer ids (plain Python: vllm is not imported).

vLLM names a LoRA by a positive integer (`LoRARequest.lora_int_id`) and caches its weights under
it, so one id must always mean one content: ids are handed out per `AdapterRequest.key` (the
store's content sha256, or `mix-<key>` for a materialised mix) and never reused. A dropped
adapter whose requests are still running is removed from vLLM when the last one ends.
"""

from __future__ import annotations

import itertools
import json
import threading
from dataclasses import dataclass
from pathlib import Path

from deltaserve.engine.adapters.base import AdapterError, AdapterRequest

VLLM_KINDS = ("lora",)
"""Kinds vLLM runs as they are (a `mix` reaches the engine already materialised as a lora)."""


NAME_SEP = "@"
"""Adapter names never contain it (`[A-Za-z0-9._-]`): `<name>@<id>` splits unambiguously."""


@dataclass(frozen=True)
class LoRASlot:
    """What a LoRARequest needs: vLLM's id, a unique name, the PEFT directory.

    vLLM compares LoRARequests by name (sets of active adapters), so two contents under one
    name (two tenants' `mine`, a replaced adapter) must not share one: the name is
    `<adapter name>@<id>`; `adapter_name` recovers the API name for the gateway gauge.
    """

    int_id: int
    name: str
    path: str


def adapter_name(lora_name: str) -> str:
    """The API name behind a LoRASlot name."""
    return lora_name.rpartition(NAME_SEP)[0] or lora_name


def check_kind(adapter: AdapterRequest) -> None:
    """AdapterError (HTTP 400) for kinds only the native engine serves."""
    if adapter.kind not in VLLM_KINDS:
        raise AdapterError(
            f"`{adapter.name}` is a {adapter.kind} adapter, which this server's engine (vLLM) "
            "cannot run: it serves the base model, lora and mix adapters only. Serve "
            f"{adapter.kind} adapters with `deltaserve serve --engine native`."
        )


def check_lora_config(path: Path, max_rank: int) -> None:
    """AdapterError for a PEFT config vLLM would refuse at load time (rank over the cap)."""
    try:
        cfg = json.loads((path / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise AdapterError(f"unreadable adapter_config.json: {exc}") from None
    rank = int(cfg.get("r", 0) or 0)
    ranks = [rank, *[int(r) for r in (cfg.get("rank_pattern") or {}).values()]]
    if max(ranks) > max_rank:
        raise AdapterError(f"its rank {max(ranks)} is above this server's --max-lora-rank {max_rank}")


class LoRAIds:
    """Thread-safe key → id table with per-id request counts and deferred removal."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = itertools.count(1)
        self._ids: dict[str, int] = {}
        self._users: dict[int, int] = {}
        self._dropped: set[int] = set()

    def slot(self, adapter: AdapterRequest) -> tuple[LoRASlot, bool]:
        """The adapter's slot, and whether its id is new (vLLM has not seen it yet)."""
        with self._lock:
            int_id = self._ids.get(adapter.key)
            new = int_id is None
            if int_id is None:
                int_id = self._ids[adapter.key] = next(self._next)
        return LoRASlot(int_id, f"{adapter.name}{NAME_SEP}{int_id}", adapter.path), new

    def forget_new(self, adapter: AdapterRequest, int_id: int) -> None:
        """Undo `slot` for an id whose load failed (the next request retries with a new id)."""
        with self._lock:
            if self._ids.get(adapter.key) == int_id:
                del self._ids[adapter.key]

    def hold(self, int_id: int) -> None:
        with self._lock:
            self._users[int_id] = self._users.get(int_id, 0) + 1

    def release(self, int_id: int) -> bool:
        """A request using `int_id` ended; True when the id should now be removed from vLLM."""
        with self._lock:
            left = self._users.get(int_id, 1) - 1
            if left > 0:
                self._users[int_id] = left
                return False
            self._users.pop(int_id, None)
            if int_id in self._dropped:
                self._dropped.discard(int_id)
                return True
            return False

    def drop(self, key: str) -> int | None:
        """Forget `key`; its id if it can be removed from vLLM now (else at the last release)."""
        with self._lock:
            int_id = self._ids.pop(key, None)
            if int_id is None:
                return None
            if self._users.get(int_id):
                self._dropped.add(int_id)
                return None
            return int_id

    def known(self) -> int:
        """Adapters with an id (loaded into vLLM or about to be)."""
        with self._lock:
            return len(self._ids)
