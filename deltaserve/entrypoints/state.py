"""Per-app server state and the FastAPI dependencies that hand it to routes."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Annotated, Protocol

from fastapi import Depends, Header, Request

from deltaserve.adapter_store.store import AdapterStore
from deltaserve.engine.adapters.base import AdapterRequest
from deltaserve.engine.protocol import EngineClient, EngineStats
from deltaserve.entrypoints.adapters import (
    AdapterLease,
    AdapterNotFoundError,
    AdapterResolver,
    acquire_adapter,
)
from deltaserve.entrypoints.errors import ModelNotFoundError, ServiceUnavailableError
from deltaserve.entrypoints.fingerprint import system_fingerprint
from deltaserve.entrypoints.metrics import ServerMetrics
from deltaserve.entrypoints.settings import Settings
from deltaserve.router.router import MixRouter
from deltaserve.tenancy.auth import ApiKeyAuth, Principal
from deltaserve.tenancy.quotas import QuotaService

logger = logging.getLogger(__name__)


class ActiveRun(Protocol):
    """A generation request in flight, as the drain sees it."""

    def shut_down(self) -> None:
        """Abort it now; its client is told that the server shut down."""
        ...


@dataclass
class ServerState:
    """Everything the routes share; one per app (stored in `app.state.server`)."""

    settings: Settings
    resolver: AdapterResolver
    auth: ApiKeyAuth
    engine: EngineClient | None = None
    store: AdapterStore | None = None
    """The adapter store behind `resolver` (None when a plain resolver was given)."""
    mixer: MixRouter | None = None
    """Materialises registered and ad-hoc mixes (needs the store)."""
    ready: bool = False
    """The engine is started and serving."""
    draining: bool = False
    """Shutting down: new generation requests get 503, in-flight ones finish."""
    runs: set[ActiveRun] = field(default_factory=set)
    """Generation requests being served right now."""
    loop: asyncio.AbstractEventLoop | None = None
    """The event loop serving the app (set at startup; signal handlers schedule onto it)."""
    drain_deadline: asyncio.Future[None] | None = None
    """Started with the drain: cuts what is still running after --drain-timeout-s."""
    started_at: int = field(default_factory=lambda: int(time.time()))
    """Unix seconds when the app was created (the base model's `created`)."""
    token_text: dict[int, str] = field(default_factory=dict)
    """Cache of single-token decodes (logprobs)."""
    metrics: ServerMetrics = field(init=False)
    quotas: QuotaService = field(init=False)
    """Per-tenant quota counters (shared through Redis with --redis-url)."""
    _fingerprint: str | None = None

    def __post_init__(self) -> None:
        self.metrics = ServerMetrics(self.engine_stats)
        self.quotas = QuotaService(
            lambda tenant: self.auth.quota(tenant),
            self.settings.redis_url,
            on_fallback=self.metrics.set_quota_fallback,
        )
        self.metrics.set_health(self.health)

    def reload_keys(self) -> bool:
        """Re-read --api-keys (SIGHUP): keys, quotas and weights; a bad file keeps the old one."""
        if self.settings.api_keys is None:
            return False
        try:
            auth = ApiKeyAuth.from_file(self.settings.api_keys)
        except (OSError, ValueError) as exc:
            logger.error("keeping the current API keys: reloading %s failed: %s",
                         self.settings.api_keys, exc)  # fmt: skip
            return False
        self.auth = auth
        self.push_tenant_weights()
        return True

    def push_tenant_weights(self) -> None:
        """Hand the key file's tenant weights to the engine's fair queue (plain data)."""
        setter = getattr(self.engine, "set_tenant_weights", None)
        if setter is not None:
            setter(self.auth.weights())

    def health(self) -> tuple[bool, bool | None]:
        """(ready to serve, Redis reachable — None without a Redis backend), for the metrics."""
        store_ok = self.store is None or self.store.healthy
        ready = self.ready and not self.draining and store_ok
        return ready, (store_ok if self.settings.redis_url else None)

    @property
    def in_flight(self) -> int:
        return len(self.runs)

    @property
    def base_model_id(self) -> str:
        return self.settings.base_model_id

    def engine_stats(self) -> EngineStats | None:
        """The engine's snapshot, or None before it exists."""
        return self.engine.stats() if self.engine is not None else None

    def serving_engine(self) -> EngineClient:
        """The engine, if new requests may be admitted now; else 503."""
        if self.draining:
            raise ServiceUnavailableError(
                "The server is shutting down and not accepting new requests.", code="draining"
            )
        if not self.ready or self.engine is None:
            raise ServiceUnavailableError("The model is not loaded yet.", code="not_ready")
        return self.engine

    def resolve_model(self, model: str, principal: Principal) -> AdapterRequest | None:
        """None for the base model, the adapter for an adapter name; else 404."""
        if model == self.base_model_id:
            return None
        try:
            return self.resolver.resolve(model, tenant=principal.tenant)
        except AdapterNotFoundError:
            raise ModelNotFoundError(model) from None

    async def acquire_model(self, model: str, principal: Principal) -> AdapterLease | None:
        """A lease on the adapter `model` names (None for the base model); else 404.

        Call it last before generating: the caller must release the lease in `finally`.
        """
        if model == self.base_model_id:
            return None
        try:
            return await acquire_adapter(self.resolver, model, principal.tenant)
        except AdapterNotFoundError:
            raise ModelNotFoundError(model) from None

    @property
    def system_fingerprint(self) -> str:
        """Names the backend configuration (version, base weights, dtype); see fingerprint.py."""
        if self._fingerprint is None:
            engine = getattr(self.engine, "engine", None)  # the native engine knows its dtype
            dtype = getattr(engine, "dtype", None)
            name = str(dtype).removeprefix("torch.") if dtype is not None else self.settings.dtype
            self._fingerprint = system_fingerprint(str(self.settings.model), name)
        return self._fingerprint

    @property
    def base_quantization(self) -> str | None:
        """How the native engine loaded the base (none | int8 | int4 | gptq | awq); else the
        --quantization asked for."""
        model = getattr(getattr(self.engine, "engine", None), "model", None)
        return getattr(model, "quantization", None) or self.settings.quantization

    def token_str(self, token_id: int) -> str:
        """The text of one token (as OpenAI's logprobs show it)."""
        text = self.token_text.get(token_id)
        if text is None:
            assert self.engine is not None
            text = self.engine.tokenizer.decode([token_id])
            if len(self.token_text) < 1 << 20:
                self.token_text[token_id] = text
        return text


# The dependencies are coroutines: FastAPI runs a plain `def` dependency in its thread pool,
# two thread hand-offs per request for a dictionary lookup and a SHA-256.
async def get_state(request: Request) -> ServerState:
    return request.app.state.server


StateDep = Annotated[ServerState, Depends(get_state)]


async def get_principal(
    request: Request, state: StateDep, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    """The authenticated caller (401 without a valid key when keys are configured).

    The tenant is left in the request's state: the HTTP metrics label the response with it,
    and responses get its rate-limit headers.
    """
    principal = state.auth.authenticate(authorization)
    request.state.tenant = principal.tenant
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]
