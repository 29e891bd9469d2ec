"""The Redis backend: manifests, name index and content blobs shared by every replica.

Keys (all under `deltaserve:`):

- `adapter:manifest:<owner>:<name>` — manifest JSON, no TTL (owner `@shared` for shared);
- `adapter:index` — set of those manifest keys (the name index);
- `blob:<sha256>` — packed adapter content, TTL refreshed on every fetch (GETEX), so with
  `maxmemory-policy volatile-lru` Redis evicts only blobs, never the registry;
- `lock:<sha256>` — SET NX PX: one replica fetches a blob from origin, the others wait;
- `adapter:tombstones` — hash name → sha256 of deleted --adapter-dir adapters (tombstones.py);
- `epoch` — a random id set once per Redis dataset; a changed epoch after a reconnect means
  Redis lost its data, and each replica re-seeds what it holds (SET NX: the first one wins).

Changes are published on the `deltaserve:adapter-events` channel; every replica applies them
at once (well under a second). One supervisor task subscribes, pings every `ping_interval_s`
and, when Redis fails, marks the backend unhealthy (registrations 503, /ready 503, serving from
local tiers continues), retries, then re-subscribes and resynchronises by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from deltaserve.adapter_store.backend import BackendListener
from deltaserve.adapter_store.errors import StoreUnavailableError
from deltaserve.adapter_store.manifest import SHARED, AdapterManifest

logger = logging.getLogger(__name__)

PREFIX = "deltaserve"
INDEX_KEY = f"{PREFIX}:adapter:index"
EPOCH_KEY = f"{PREFIX}:epoch"
CHANNEL = f"{PREFIX}:adapter-events"
TOMBSTONES_KEY = f"{PREFIX}:adapter:tombstones"
LOCK_MS = 30_000
_ERRORS = (RedisError, OSError, asyncio.TimeoutError)


def manifest_key(owner: str, name: str) -> str:
    return f"{PREFIX}:adapter:manifest:{'@shared' if owner == SHARED else owner}:{name}"


def blob_key(sha: str) -> str:
    return f"{PREFIX}:blob:{sha}"


class RedisBackend:
    """StoreBackend over one Redis (redis-py asyncio)."""

    shared = True

    def __init__(
        self, url: str, blob_ttl_s: int = 7 * 24 * 3600,
        ping_interval_s: float = 0.5, retry_interval_s: float = 0.5,
    ):  # fmt: skip
        self.url = url
        self.blob_ttl_s = blob_ttl_s
        self.ping_interval_s = ping_interval_s
        self.retry_interval_s = retry_interval_s
        self.replica_id = uuid.uuid4().hex
        self._redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=1.0, socket_timeout=10.0, retry=Retry(NoBackoff(), 0)
        )
        self._listener: BackendListener | None = None
        self._healthy = False
        self._outage: str | None = "not connected yet"
        self._epoch: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._resident: dict[str, int] = {}

    # ---- health ---------------------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def outage(self) -> str | None:
        return None if self._healthy else self._outage

    def _mark_down(self, exc: BaseException) -> None:
        if self._healthy or self._outage == "not connected yet":
            logger.warning("Redis %s unreachable: %s", self.url, exc or type(exc).__name__)
        self._healthy = False
        self._outage = f"Redis unreachable: {type(exc).__name__}"

    def _require(self) -> None:
        if not self._healthy:
            raise StoreUnavailableError(f"The shared adapter store is unavailable ({self._outage}).")

    # ---- lifecycle ------------------------------------------------------------------------
    async def start(self, listener: BackendListener) -> None:
        """Connect and sync once (an outage at start is tolerated), then supervise."""
        self._listener = listener
        pubsub = None
        try:
            pubsub = await self._connect()
        except _ERRORS as exc:
            self._mark_down(exc)
        self._task = asyncio.ensure_future(self._supervise(pubsub))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        with contextlib.suppress(*_ERRORS):
            await self._redis.aclose()

    async def _supervise(self, pubsub: Any) -> None:
        while True:
            try:
                if pubsub is None:
                    pubsub = await self._connect()
                await self._serve(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis errors, and anything unexpected: retry
                self._mark_down(exc)
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
                pubsub = None
                await asyncio.sleep(self.retry_interval_s)

    async def _connect(self) -> Any:
        """Subscribe first (no event can fall between), then check the epoch and resync."""
        await asyncio.wait_for(self._redis.ping(), 2.0)
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(CHANNEL)
        await self._check_epoch()
        await self._resync()
        self._healthy, self._outage = True, None
        logger.info("connected to Redis %s (replica %s)", self.url, self.replica_id[:8])
        return pubsub

    async def _serve(self, pubsub: Any) -> None:
        """Apply events as they come; ping between them to notice an outage promptly."""
        last_ping = time.monotonic()
        while True:
            message = await pubsub.get_message(timeout=self.ping_interval_s)
            if message is not None and message.get("type") == "message":
                self._handle(message["data"])
            if time.monotonic() - last_ping >= self.ping_interval_s:
                await asyncio.wait_for(self._redis.ping(), 2.0)
                last_ping = time.monotonic()

    def _handle(self, data: bytes) -> None:
        try:
            event = json.loads(data)
            if event.get("replica") == self.replica_id or self._listener is None:
                return
            if event["op"] == "put":
                self._listener.on_put(AdapterManifest.from_dict(event["manifest"]))
            elif event["op"] == "delete":
                self._listener.on_delete(event["owner"], event["name"], event.get("sha256"))
        except Exception:  # a bad event must not stop the subscriber
            logger.exception("ignoring a malformed adapter event")

    async def _check_epoch(self) -> None:
        await self._redis.set(EPOCH_KEY, uuid.uuid4().hex, nx=True)
        epoch = (await self._redis.get(EPOCH_KEY) or b"").decode()
        if self._epoch is not None and epoch != self._epoch:
            logger.warning("Redis lost its adapter registry (new epoch): re-seeding it")
            await self._reseed()
        self._epoch = epoch

    async def _reseed(self) -> None:
        assert self._listener is not None
        for manifest, read_blob in self._listener.snapshot():
            blob = await asyncio.to_thread(read_blob)
            mkey = manifest_key(*manifest.key)
            async with self._redis.pipeline(transaction=True) as p:
                p.set(blob_key(manifest.sha256), blob, ex=self.blob_ttl_s, nx=True)
                p.set(mkey, manifest.to_json(), nx=True)
                p.sadd(INDEX_KEY, mkey)
                await p.execute()

    async def _resync(self) -> None:
        keys = sorted(await self._redis.smembers(INDEX_KEY))
        values = await self._redis.mget(keys) if keys else []
        manifests = [AdapterManifest.from_json(v) for v in values if v]
        tombstones = {k.decode() for k in await self._redis.hkeys(TOMBSTONES_KEY)}
        if self._listener is not None:
            self._listener.on_resync(manifests)
            self._listener.on_tombstones(tombstones)

    # ---- writes ---------------------------------------------------------------------------
    async def put(self, manifest: AdapterManifest, blob: bytes) -> None:
        self._require()
        mkey = manifest_key(*manifest.key)
        event = {"op": "put", "manifest": manifest.to_dict(), "replica": self.replica_id}
        try:
            async with self._redis.pipeline(transaction=True) as p:
                p.set(blob_key(manifest.sha256), blob, ex=self.blob_ttl_s)
                p.set(mkey, manifest.to_json())
                p.sadd(INDEX_KEY, mkey)
                if manifest.shared:
                    p.hdel(TOMBSTONES_KEY, manifest.name)
                await p.execute()
            await self._redis.publish(CHANNEL, json.dumps(event))
        except _ERRORS as exc:
            raise StoreUnavailableError(f"Redis write failed: {type(exc).__name__}") from exc
        self._resident[manifest.sha256] = len(blob)

    async def delete(self, manifest: AdapterManifest) -> None:
        self._require()
        mkey = manifest_key(*manifest.key)
        event = {"op": "delete", "owner": manifest.owner, "name": manifest.name,
                 "sha256": manifest.sha256, "replica": self.replica_id}  # fmt: skip
        try:
            async with self._redis.pipeline(transaction=True) as p:
                p.delete(mkey)
                p.srem(INDEX_KEY, mkey)
                if manifest.shared and manifest.source == "adapter-dir":
                    p.hset(TOMBSTONES_KEY, manifest.name, manifest.sha256)
                await p.execute()
            await self._redis.publish(CHANNEL, json.dumps(event))
        except _ERRORS as exc:
            raise StoreUnavailableError(f"Redis write failed: {type(exc).__name__}") from exc

    # ---- blobs ----------------------------------------------------------------------------
    async def get_blob(self, sha256: str) -> bytes | None:
        if not self._healthy:
            return None
        try:
            blob = await self._redis.getex(blob_key(sha256), ex=self.blob_ttl_s)
        except _ERRORS as exc:
            logger.warning("Redis blob fetch failed: %s", exc)
            return None
        if blob is not None:
            self._resident[sha256] = len(blob)
        return blob

    async def put_blob(self, sha256: str, blob: bytes) -> None:
        with contextlib.suppress(*_ERRORS):
            if self._healthy:
                await self._redis.set(blob_key(sha256), blob, ex=self.blob_ttl_s, nx=True)
                self._resident[sha256] = len(blob)

    @contextlib.asynccontextmanager
    async def fetch_lock(self, sha256: str) -> AsyncIterator[bool]:
        """True for the one replica that fetches from origin (or for everyone without Redis)."""
        key, token = f"{PREFIX}:lock:{sha256}", uuid.uuid4().hex
        try:
            mine = bool(await self._redis.set(key, token, nx=True, px=LOCK_MS))
        except _ERRORS:
            mine, token = True, ""
        try:
            yield mine
        finally:
            if mine and token:
                with contextlib.suppress(*_ERRORS):
                    if await self._redis.get(key) == token.encode():
                        await self._redis.delete(key)

    def resident(self) -> tuple[int, int]:
        return (len(self._resident), sum(self._resident.values()))
