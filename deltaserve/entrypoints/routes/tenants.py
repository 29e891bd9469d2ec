"""Admin-only tenant routes: GET /v1/tenants/{tenant}/usage."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from deltaserve.entrypoints.errors import NotFoundError, PermissionDeniedError
from deltaserve.entrypoints.state import PrincipalDep, StateDep
from deltaserve.tenancy.quotas import usage_body

router = APIRouter(prefix="/v1", tags=["tenants"])


@router.get("/tenants/{tenant}/usage")
async def tenant_usage(tenant: str, state: StateDep, principal: PrincipalDep) -> dict[str, Any]:
    """A tenant's limits and current usage (shared counters when Redis is up)."""
    if principal.role != "admin":
        raise PermissionDeniedError("Only admins may read tenant usage.", code="permission_denied")
    if tenant not in state.auth.known_tenants():
        raise NotFoundError(f"The tenant `{tenant}` is not in the API-key file.",
                            code="tenant_not_found")  # fmt: skip
    counts = await state.quotas.counts(tenant)
    body = usage_body(tenant, state.auth.quota(tenant), counts, state.quotas.backend)
    owned = [] if state.store is None else [
        v.manifest for v in state.store.registry.versions() if v.manifest.owner == tenant
    ]  # fmt: skip
    body["adapters"] = len(owned)
    body["adapter_bytes"] = sum(m.bytes for m in owned)
    return body
