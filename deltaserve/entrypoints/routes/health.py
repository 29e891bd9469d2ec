"""Operational routes: liveness, readiness and Prometheus metrics (no authentication)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from deltaserve.entrypoints.errors import ServiceUnavailableError, error_response
from deltaserve.entrypoints.metrics import CONTENT_TYPE
from deltaserve.entrypoints.state import StateDep

router = APIRouter(tags=["ops"])


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is alive and answering."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(state: StateDep) -> Response:
    """200 once the engine is started; 503 before that, while draining and during a Redis outage."""
    if state.draining:
        return error_response(ServiceUnavailableError("The server is draining.", code="draining"))
    if not state.ready:
        return error_response(
            ServiceUnavailableError("The model is not loaded yet.", code="not_ready")
        )
    store = state.store
    if store is not None and not store.healthy:
        return error_response(
            ServiceUnavailableError(
                f"The shared adapter store is unreachable: {store.backend.outage}.",
                code="redis_unavailable",
            )
        )
    return JSONResponse({"status": "ready"})


@router.get("/metrics")
async def metrics(state: StateDep) -> Response:
    """Prometheus text exposition of this server's metrics."""
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)
