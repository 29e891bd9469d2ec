"""The adapter store's configuration (one object, read by the store and its tiers)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from deltaserve.adapter_store.validation import Limits


@dataclass
class StoreConfig:
    """Where a replica keeps adapters and what it accepts."""

    data_dir: Path
    base_model_id: str
    source_roots: list[Path] = field(default_factory=list)
    hub_cache: Path | None = None
    """The Hugging Face cache `source` hub ids resolve in; None: hub ids are refused."""
    max_adapter_bytes: int = 1 << 30
    max_total_adapter_bytes: int = 16 << 30
    limits: Limits = field(default_factory=Limits)
    unregister_timeout_s: float = 30.0
    max_local_content_bytes: int | None = None
    """Disk budget of the local content directory (LRU over unleased, re-fetchable content)."""
    ephemeral: bool = False
    """data_dir is a temporary directory of this process: removed on close."""
