"""Bearer API keys -> tenant, compared in constant time."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from radstream.errors import Unauthorized

_bearer = HTTPBearer(auto_error=False, description="API key of the tenant: Authorization: Bearer <key>")


class KeyRing:
    """The configured keys; ``tenant_for`` compares against every key so timing reveals nothing."""

    def __init__(self, key_to_tenant: dict[str, str]) -> None:
        self._keys = [(k.encode(), t) for k, t in key_to_tenant.items()]

    def tenant_for(self, presented: str) -> str | None:
        candidate = presented.encode()
        found: str | None = None
        for key, tenant in self._keys:
            if hmac.compare_digest(key, candidate):
                found = tenant
        return found


def require_tenant(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("missing Authorization: Bearer <api key> header")
    keyring: KeyRing = request.state.services.keyring
    tenant = keyring.tenant_for(credentials.credentials)
    if tenant is None:
        raise Unauthorized("unknown API key")
    return tenant


Tenant = Annotated[str, Depends(require_tenant)]
