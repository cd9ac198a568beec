"""Who calls the REST API: an API key (``X-API-Key`` or ``Authorization: Bearer``, as inference's
writing endpoints take it) names a principal and its role. Pure functions; the routes in
:mod:`.api` turn the errors into 401 and 403."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from eostream.registry_bridge.errors import NotAllowedError, NotAuthenticatedError
from eostream.registry_bridge.settings import Credential, Role

#: ``WWW-Authenticate`` of a 401: what to present
CHALLENGE = 'Bearer realm="registry-bridge"'


@dataclass(frozen=True)
class Principal:
    name: str  # recorded as promoted_by / rolled_back_by and in the audit log
    role: Role

    @property
    def may_promote(self) -> bool:
        return self.role == "promoter"


def presented_key(x_api_key: str | None, authorization: str | None) -> str | None:
    """The key a request carries: ``X-API-Key``, else ``Authorization: Bearer <key>``."""
    if x_api_key:
        return x_api_key.strip() or None
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return None


def authenticate(credentials: Mapping[str, Credential], given: str | None) -> Principal:
    """The principal whose key is ``given``; NotAuthenticatedError when there is none."""
    if not credentials:
        raise NotAuthenticatedError(
            "this bridge has no credentials configured, so its write routes are closed; set "
            'BRIDGE_API_KEYS (JSON: {"<name>": {"key": "...", "role": "promoter"}})'
        )
    if not given:
        raise NotAuthenticatedError(
            "a credential is required: send the API key as header X-API-Key or "
            "Authorization: Bearer <key>"
        )
    found: Principal | None = None
    for name, credential in credentials.items():  # every key compared: no early exit
        if hmac.compare_digest(given.encode(), credential.key.get_secret_value().encode()):
            found = Principal(name, credential.role)
    if found is None:
        raise NotAuthenticatedError("the API key is not valid; ask an operator for one")
    return found


def require_promoter(principal: Principal, what: str) -> None:
    if not principal.may_promote:
        raise NotAllowedError(
            f"{principal.name} has role {principal.role!r}, which may not {what}; a credential "
            "with role 'promoter' is needed"
        )
