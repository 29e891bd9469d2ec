"""Quotas at the HTTP boundary: admitting a generation request, and the headers on responses.

A generation request reserves prompt + max_tokens (times n) of its tenant's token quota when
it is admitted; `GenerationRun` reconciles the reservation to the tokens really used when it
closes. Every response to a tenant with quotas carries OpenAI's x-ratelimit-* headers (a 429
also `Retry-After`): routes leave them in the request's scope state; for other responses the
middleware reads the tenant's current counts.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deltaserve.engine.adapters.base import AdapterRequest
from deltaserve.engine.sampling_params import SamplingParams
from deltaserve.entrypoints.adapters import AdapterLease
from deltaserve.entrypoints.openai.generation import GenerationRun
from deltaserve.entrypoints.openai.prompts import PromptInput
from deltaserve.entrypoints.state import ServerState
from deltaserve.tenancy.quotas import QuotaExceededError, Reservation

logger = logging.getLogger(__name__)

HEADERS_KEY = "ratelimit_headers"
TENANT_KEY = "tenant"


def reserved_tokens(prompts: list[PromptInput], params: list[SamplingParams], max_len: int) -> int:
    """Prompt tokens + the most that may be generated (max_tokens, else what fits) × n."""
    total = 0
    for prompt, sp in zip(prompts, params, strict=True):
        n = len(prompt.token_ids)
        cap = sp.max_tokens if sp.max_tokens is not None else max(0, max_len - n)
        total += n + cap * sp.n
    return total


async def admit(
    state: ServerState, tenant: str, raw: Request, prompts: list[PromptInput],
    params: list[SamplingParams],
) -> Reservation | None:  # fmt: skip
    """Count the request against `tenant`'s quota (None: unlimited); 429 when over it."""
    assert state.engine is not None
    tokens = reserved_tokens(prompts, params, state.engine.max_model_len)
    try:
        reservation = await state.quotas.admit(tenant, tokens)
    except QuotaExceededError as exc:
        raw.state.ratelimit_headers = exc.headers
        state.metrics.tenants.record_rejection(tenant, exc.limit)
        raise
    if reservation is not None:
        raw.state.ratelimit_headers = reservation.headers
    return reservation


async def open_run(
    state: ServerState, tenant: str, raw: Request, request_id: str,
    prompts: list[PromptInput], params: list[SamplingParams], adapter: AdapterRequest | None,
    acquire: Callable[[], Awaitable[AdapterLease | None]],
) -> GenerationRun:  # fmt: skip
    """Admit against the quota, lease the adapter (`acquire`), and start the run."""
    reservation = await admit(state, tenant, raw, prompts, params)
    try:
        lease = await acquire()
    except BaseException:
        if reservation is not None:
            await state.quotas.finish(reservation, 0)
        raise
    return GenerationRun(state, request_id, prompts, params, adapter, lease=lease,
                         tenant=tenant, reservation=reservation)  # fmt: skip


class RateLimitHeadersMiddleware:
    """Adds the tenant's x-ratelimit-* (and a 429's Retry-After) to every HTTP response."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = await _headers_for(scope)
                if extra:
                    present = {k.lower() for k, _ in message.get("headers", [])}
                    added = [(k.encode(), v.encode()) for k, v in extra.items()
                             if k.encode() not in present]  # fmt: skip
                    message = {**message, "headers": [*message.get("headers", []), *added]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _headers_for(scope: Scope) -> dict[str, str]:
    scope_state = scope.get("state") or {}
    headers = scope_state.get(HEADERS_KEY)
    if headers is not None:
        return headers
    tenant = scope_state.get(TENANT_KEY)
    app = scope.get("app")
    if tenant is None or app is None:
        return {}
    try:
        return await app.state.server.quotas.headers(tenant)
    except Exception:  # headers are informative: never fail a response over them
        logger.exception("could not compute rate-limit headers")
        return {}
