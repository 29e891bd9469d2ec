"""API-key authentication (`--api-keys FILE`): who is calling, as a tenant and a role.

Without a key file the server is single-tenant and open: every caller is the default admin.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from deltaserve.tenancy.errors import AuthenticationError
from deltaserve.tenancy.tenants import UNLIMITED, TenantQuota, parse_tenants

logger = logging.getLogger(__name__)

DEFAULT_TENANT = "default"


@dataclass(frozen=True)
class Principal:
    """The authenticated caller."""

    tenant: str
    role: Literal["user", "admin"]


OPEN_PRINCIPAL = Principal(tenant=DEFAULT_TENANT, role="admin")


class ApiKeyAuth:
    """Checks bearer keys against a key file; keys are held only as SHA-256 digests."""

    def __init__(
        self,
        digests: dict[str, Principal] | None = None,
        tenants: dict[str, TenantQuota] | None = None,
    ):
        self._digests = digests
        """sha256 hex → principal; None = authentication disabled."""
        self.tenants: dict[str, TenantQuota] = tenants or {}
        """Quotas and weights of the key file's `"tenants"` object."""

    def quota(self, tenant: str) -> TenantQuota:
        """`tenant`'s quotas (unlimited when the key file names none)."""
        return self.tenants.get(tenant, UNLIMITED)

    def known_tenants(self) -> set[str]:
        """Tenants the key file names (the only values tenant metric labels take)."""
        keyed = {p.tenant for p in (self._digests or {}).values()}
        return keyed | set(self.tenants) | {DEFAULT_TENANT}

    def weights(self) -> dict[str, float]:
        return {t: q.weight for t, q in self.tenants.items()}

    @property
    def enabled(self) -> bool:
        return self._digests is not None

    @classmethod
    def from_file(cls, path: Path | None) -> ApiKeyAuth:
        """Load `{"keys": [{"key" | "key_sha256", "tenant", "role"}], "tenants": {...}}`.

        None → open server. Raises ValueError (or OSError) for a bad file.
        """
        if path is None:
            return cls(None)
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object with 'keys'")
        digests: dict[str, Principal] = {}
        for i, entry in enumerate(data.get("keys", [])):
            if "key" in entry:
                digest = hashlib.sha256(str(entry["key"]).encode()).hexdigest()
            elif "key_sha256" in entry:
                digest = str(entry["key_sha256"]).lower()
            else:
                raise ValueError(f"{path}: keys[{i}] has neither 'key' nor 'key_sha256'")
            role = entry.get("role", "user")
            if role not in ("user", "admin"):
                raise ValueError(f"{path}: keys[{i}] has invalid role {role!r}")
            if not entry.get("tenant"):
                raise ValueError(f"{path}: keys[{i}] has no 'tenant'")
            digests[digest] = Principal(tenant=str(entry["tenant"]), role=role)
        tenants = parse_tenants(data.get("tenants"), str(path))
        logger.info("loaded %d API keys, %d tenant quotas from %s", len(digests), len(tenants), path)
        return cls(digests, tenants)

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller behind an `Authorization` header value; raises AuthenticationError."""
        if self._digests is None:
            return OPEN_PRINCIPAL
        if not authorization:
            raise AuthenticationError(
                "Missing API key: send 'Authorization: Bearer <key>'.", code="missing_api_key"
            )
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise AuthenticationError("Malformed Authorization header: expected 'Bearer <key>'.")
        digest = hashlib.sha256(key.strip().encode()).hexdigest()
        for known, principal in self._digests.items():
            if hmac.compare_digest(known, digest):
                return principal
        raise AuthenticationError("Invalid API key.")
