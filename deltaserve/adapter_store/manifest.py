"""The manifest of one registered adapter: identity, ownership, shape and provenance.

A manifest is plain data with a JSON round trip; it is what the registry indexes, what Redis
stores under `deltaserve:adapter:manifest:<owner>:<name>` and what the admin API shows.
`sha256` is the digest of the adapter's packed content (see content.py): it is the engine's
`uid`, so a replaced adapter never mixes with its predecessor, and the key of its blob.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

SHARED = ""
"""The owner of shared adapters (visible to every tenant)."""


@dataclass(frozen=True)
class AdapterManifest:
    """Everything the store knows about one registered adapter version."""

    name: str
    kind: str
    base_model: str
    sha256: str
    """Digest of the packed content: the engine uid and the blob key."""
    bytes: int
    """Total size of the adapter's files."""
    owner: str = SHARED
    """Owning tenant; SHARED ("") for adapters every tenant may use."""
    rank: int | None = None
    """Largest LoRA rank (lora kind)."""
    target_modules: list[str] = field(default_factory=list)
    """Modules the LoRA adapts (lora kind), sorted."""
    created: float = field(default_factory=time.time)
    """Unix seconds of the registration."""
    source: str = "upload"
    """Where it came from: "upload", "adapter-dir", or "path:<server-side path>"."""

    @property
    def key(self) -> tuple[str, str]:
        """(owner, name): the registry key."""
        return (self.owner, self.name)

    @property
    def shared(self) -> bool:
        return self.owner == SHARED

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterManifest:
        """Inverse of to_dict; unknown keys (from newer versions) are ignored."""
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        values["target_modules"] = list(values.get("target_modules") or [])
        return cls(**values)

    @classmethod
    def from_json(cls, text: str | bytes) -> AdapterManifest:
        return cls.from_dict(json.loads(text))

    def public(self, base_model_id: str | None = None) -> dict[str, Any]:
        """The admin API's view: an OpenAI-style object, source paths not exposed."""
        source = "path" if self.source.startswith("path:") else self.source
        return {
            "id": self.name,
            "object": "adapter",
            "kind": self.kind,
            "parent": base_model_id or self.base_model,
            "base_model": self.base_model,
            "owner": "shared" if self.shared else self.owner,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "rank": self.rank,
            "target_modules": list(self.target_modules),
            "created": int(self.created),
            "source": source,
        }
