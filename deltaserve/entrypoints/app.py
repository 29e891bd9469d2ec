"""The FastAPI app factory and its lifespan (engine start, drain, engine stop)."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI

from deltaserve.engine.protocol import EngineClient
from deltaserve.engine.threads import single_threaded
from deltaserve.entrypoints.adapters import AdapterResolver, DirectoryAdapterResolver, StoreResolver
from deltaserve.entrypoints.engine_factory import build_engine, with_model_dir
from deltaserve.entrypoints.errors import install_error_handlers
from deltaserve.entrypoints.middleware import BodySizeLimitMiddleware, HttpMetricsMiddleware
from deltaserve.entrypoints.mixing import build_mixer, forget_member_content
from deltaserve.entrypoints.quota_http import RateLimitHeadersMiddleware
from deltaserve.entrypoints.routes import admin, health, openai_api, tenants, tokenize
from deltaserve.entrypoints.settings import Settings
from deltaserve.entrypoints.state import ServerState
from deltaserve.entrypoints.store_factory import build_store
from deltaserve.tenancy.auth import DEFAULT_TENANT, ApiKeyAuth

logger = logging.getLogger(__name__)

DRAIN_POLL_S = 0.05
CUT_GRACE_S = 3.0
"""After the drain deadline aborts requests, how long their responses get to finish."""
"""A dropped adapter still pinned by a finishing engine request is dropped again this late."""
UPLOAD_OVERHEAD_BYTES = 1 << 20
"""Multipart framing allowed on top of --max-adapter-bytes."""


def create_app(
    settings: Settings,
    engine: EngineClient | None = None,
    resolver: AdapterResolver | None = None,
) -> FastAPI:
    """A ready-to-serve app. Without `engine`, the lifespan builds one from `settings`."""
    settings = with_model_dir(settings)
    state = ServerState(
        settings=settings,
        resolver=resolver or DirectoryAdapterResolver(None),
        auth=ApiKeyAuth.from_file(settings.api_keys),
        engine=engine,
    )
    if resolver is None:
        state.store = build_store(settings, state.metrics, lambda key: _drop_adapter(state, key))
        state.resolver = StoreResolver(state.store, DEFAULT_TENANT)
        state.store.owner_limits = lambda owner: _adapter_limits(state, owner)
        state.mixer = build_mixer(state)
    app = FastAPI(title="deltaserve", version="0.1.0", lifespan=_lifespan)
    app.state.server = state
    install_error_handlers(app)
    app.include_router(openai_api.router)
    app.include_router(admin.router)
    app.include_router(health.router)
    app.include_router(tenants.router)
    app.include_router(tokenize.router)
    upload_limit = max(settings.max_body_bytes, settings.max_adapter_bytes + UPLOAD_OVERHEAD_BYTES)
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        streamed={"/v1/adapters": upload_limit},
    )
    app.add_middleware(RateLimitHeadersMiddleware)
    # Outermost, so that the body-size refusals (413) are counted too.
    app.add_middleware(HttpMetricsMiddleware, record=state.metrics.record_http)
    return app


def install_reload_signal(app: FastAPI) -> None:
    """Reload --api-keys (keys, quotas, weights) on SIGHUP. Call from the main thread."""
    state: ServerState = app.state.server

    def on_hup(signum: int, frame: object) -> None:
        if state.loop is not None:
            state.loop.call_soon_threadsafe(_reload, state)
        else:
            _reload(state)

    signal.signal(signal.SIGHUP, on_hup)


def _reload(state: ServerState) -> None:
    if state.reload_keys():
        logger.info("reloaded %s", state.settings.api_keys)


def _adapter_limits(state: ServerState, owner: str) -> tuple[int | None, int | None]:
    quota = state.auth.quota(owner)
    return quota.max_adapters, quota.max_adapter_bytes


def _drop_adapter(state: ServerState, key: str) -> None:
    """Tell the engine to forget a retired adapter (at once, or when its last request ends).

    Mixes materialised from that content are dropped first (their cache key names it).
    """
    forget_member_content(state, key)
    if state.engine is not None:
        state.engine.drop_adapter(key)


def start_draining(app: FastAPI) -> None:
    """Stop admitting requests (503); in-flight ones may finish until --drain-timeout-s.

    Safe to call from a signal handler: the deadline is scheduled onto the app's loop.
    """
    state: ServerState = app.state.server
    if not state.draining:
        logger.info("draining: %d request(s) in flight", state.in_flight)
    state.draining = True
    if state.loop is not None and state.drain_deadline is None:
        state.loop.call_soon_threadsafe(_start_deadline, state)


def _start_deadline(state: ServerState) -> asyncio.Future[None]:
    if state.drain_deadline is None:
        state.drain_deadline = asyncio.ensure_future(_cut_after_deadline(state))
    return state.drain_deadline


async def _cut_after_deadline(state: ServerState) -> None:
    """After the drain timeout, abort whatever still runs (clients get a 503 error event)."""
    if not await wait_for_in_flight(state, state.settings.drain_timeout_s):
        logger.warning("drain timeout: aborting %d request(s) in flight", state.in_flight)
        for run in list(state.runs):
            run.shut_down()


async def wait_for_in_flight(state: ServerState, timeout_s: float) -> bool:
    """Wait until no generation request is in flight; False if `timeout_s` passed first."""
    deadline = time.monotonic() + timeout_s
    while state.in_flight > 0:
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(DRAIN_POLL_S)
    return True


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ServerState = app.state.server
    state.loop = asyncio.get_running_loop()
    # asyncio.to_thread work (adapter validation, staging, mixing) runs torch single-threaded:
    # only the step thread may run parallel torch ops (deltaserve/engine/threads.py).
    state.loop.set_default_executor(ThreadPoolExecutor(thread_name_prefix="deltaserve-worker",
                                                       initializer=single_threaded))
    if state.store is not None:
        await state.store.start(state.settings.adapter_dir)
    if state.engine is None:
        state.engine = build_engine(state.settings)
    if hasattr(state.engine, "set_adapter_load_observer"):
        state.engine.set_adapter_load_observer(state.metrics.observe_adapter_load)
    await state.engine.start()
    state.push_tenant_weights()
    state.ready = True
    logger.info("serving %s (context %d tokens)", state.base_model_id, state.engine.max_model_len)
    try:
        yield
    finally:
        start_draining(app)
        state.ready = False
        await _start_deadline(state)
        await wait_for_in_flight(state, CUT_GRACE_S)  # let cut requests tell their clients
        await state.engine.shutdown()
        logger.info("engine stopped")
        if state.store is not None:
            await state.store.close()
        await state.quotas.close()
