"""Adapter identity as the engine sees it: a name, a kind and where its weights live."""

from __future__ import annotations

from dataclasses import dataclass


class AdapterError(ValueError):
    """An adapter cannot be loaded or used (bad config, bad tensors, unsupported feature)."""


@dataclass(frozen=True)
class AdapterRequest:
    """Which adapter a request runs with.

    `uid` identifies the exact weights: two registrations under the same name with different
    content get different uids, so a replaced adapter never mixes with its predecessor.
    """

    name: str
    path: str
    kind: str = "lora"
    uid: str = ""

    @property
    def key(self) -> str:
        return self.uid or f"{self.name}@{self.path}"
