"""Building the adapter store (and its backend) from the server settings.

The store validates adapters against the base model's shapes, read from its config.json; when
that config cannot be read (tests with a scripted engine), shape checks are skipped and the
engine's own loader stays the only shape check.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

from deltaserve.adapter_store.backend import InProcessBackend, StoreBackend
from deltaserve.adapter_store.errors import InvalidAdapterError
from deltaserve.adapter_store.hub_cache import default_cache_dir
from deltaserve.adapter_store.paths import is_within
from deltaserve.adapter_store.store import AdapterStore, TierObserver
from deltaserve.adapter_store.store_config import StoreConfig
from deltaserve.adapter_store.validation import BaseShapes, Limits, tokenizer_vocab_sha256
from deltaserve.engine.config import ModelConfig
from deltaserve.entrypoints.metrics import ServerMetrics
from deltaserve.entrypoints.settings import Settings

logger = logging.getLogger(__name__)


def base_shapes(model_dir: str) -> BaseShapes | None:
    """The base model's adapter-targetable shapes, or None if its config is unreadable."""
    try:
        return BaseShapes.from_model_config(ModelConfig.from_dir(model_dir))
    except (OSError, ValueError, KeyError) as exc:
        logger.warning("adapter shapes will not be checked against the base model: %s", exc)
        return None


def _tokenizer_sha(model_dir: str) -> str | None:
    try:
        return tokenizer_vocab_sha256(Path(model_dir))
    except (OSError, InvalidAdapterError) as exc:
        logger.warning("proxy tokenizers will not be checked against the base model: %s", exc)
        return None


def hub_adapter_cache(settings: Settings) -> Path | None:
    """The hub cache adapter `source`s may name hub ids in: only where the operator allows it,
    with --allow-hub-adapters or by listing the cache (or a directory above it) as a source root."""
    cache = settings.hub_cache or default_cache_dir()
    if settings.allow_hub_adapters or any(is_within(cache, r) for r in settings.adapter_source_root):
        return cache
    return None


def build_backend(settings: Settings) -> StoreBackend:
    """Redis with --redis-url, else the embedded in-process backend."""
    if not settings.redis_url:
        return InProcessBackend()
    from deltaserve.adapter_store.redis_backend import RedisBackend

    return RedisBackend(settings.redis_url, blob_ttl_s=settings.redis_blob_ttl_s)


def build_store(
    settings: Settings, metrics: ServerMetrics, drop_from_engine: Callable[[str], None]
) -> AdapterStore:
    """The store for one app; its data dir defaults to a fresh temporary directory."""
    data_dir = settings.data_dir or Path(tempfile.mkdtemp(prefix="deltaserve-store-"))
    config = StoreConfig(
        data_dir=Path(data_dir),
        base_model_id=settings.base_model_id,
        source_roots=[Path(p) for p in settings.adapter_source_root],
        hub_cache=hub_adapter_cache(settings),
        max_adapter_bytes=settings.max_adapter_bytes,
        max_total_adapter_bytes=settings.max_total_adapter_bytes,
        limits=Limits(max_rank=settings.max_lora_rank, base_model_ids=(
            settings.base_model_id, Path(settings.model).resolve().name),
            base_tokenizer_sha256=_tokenizer_sha(settings.model)),
        unregister_timeout_s=settings.adapter_unregister_timeout_s,
        max_local_content_bytes=settings.max_local_content_bytes,
        ephemeral=settings.data_dir is None,
    )
    observer = TierObserver(lookup=metrics.record_adapter_lookup, load=metrics.observe_adapter_load)
    store = AdapterStore(
        config,
        backend=build_backend(settings),
        shapes=base_shapes(settings.model),
        observer=observer,
        drop_from_engine=drop_from_engine,
    )
    metrics.set_store_stats(store.tier_stats)
    logger.info("adapter store in %s", data_dir)
    return store
