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

from deltaserve.server.errors import AuthenticationError

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

    def __init__(self, digests: dict[str, Principal] | None = None):
        self._digests = digests
        """sha256 hex → principal; None = authentication disabled."""

    @property
    def enabled(self) -> bool:
        return self._digests is not None

    @classmethod
    def from_file(cls, path: Path | None) -> ApiKeyAuth:
        """Load `{"keys": [{"key" | "key_sha256", "tenant", "role"}]}`; None → open server."""
        if path is None:
            return cls(None)
        data = json.loads(Path(path).read_text())
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
        logger.info("loaded %d API keys from %s", len(digests), path)
        return cls(digests)

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
