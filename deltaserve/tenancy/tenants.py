"""Per-tenant quotas and weights: the optional `"tenants"` object of the API-key file.

    {"keys": [...], "tenants": {"acme": {"requests_per_minute": 600, "tokens_per_minute": 200000,
     "max_concurrent_requests": 32, "max_adapters": 100, "max_adapter_bytes": 2000000000,
     "weight": 2}}}

Every field is optional; an absent field means unlimited (weight: 1).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class TenantQuota(BaseModel):
    """One tenant's limits (None = unlimited) and its fair-share weight."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests_per_minute: int | None = Field(None, ge=0)
    """Requests admitted per sliding minute, across all replicas."""
    tokens_per_minute: int | None = Field(None, ge=0)
    """Tokens per sliding minute: prompt + max_tokens reserved at admission, reconciled to
    prompt + generated tokens when the request finishes."""
    max_concurrent_requests: int | None = Field(None, ge=0)
    """Requests in flight at once, across all replicas."""
    max_adapters: int | None = Field(None, ge=0)
    """Adapters the tenant may own (shared ones do not count)."""
    max_adapter_bytes: int | None = Field(None, ge=0)
    """Total bytes of the adapters the tenant owns."""
    weight: float = Field(1.0, gt=0)
    """Share of the engine under contention (virtual token counter scheduling)."""

    @property
    def rate_limited(self) -> bool:
        """Whether any per-request limit applies (then responses carry x-ratelimit headers)."""
        return any(
            v is not None
            for v in (self.requests_per_minute, self.tokens_per_minute, self.max_concurrent_requests)
        )


UNLIMITED = TenantQuota()


def parse_tenants(data: Any, source: str) -> dict[str, TenantQuota]:
    """The `"tenants"` object of a key file; ValueError names the bad entry."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{source}: 'tenants' must be an object of tenant → quota")
    out: dict[str, TenantQuota] = {}
    for name, entry in data.items():
        try:
            out[str(name)] = TenantQuota.model_validate(entry)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'entry'}: {e['msg']}" for e in exc.errors()
            )
            raise ValueError(f"{source}: tenants[{name!r}]: {problems}") from None
    return out
