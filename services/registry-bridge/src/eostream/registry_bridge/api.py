"""REST for operators: list a model's versions, promote one, roll back, read the audit log.
Same code as the CLI.

Every write route takes a credential (``X-API-Key`` or ``Authorization: Bearer``, see
:mod:`.auth`) whose role is ``promoter``; who is recorded is the credential's name. Reading the
version list is public; reading the audit log takes any valid credential (viewer or promoter).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query
from pydantic import BaseModel, Field, JsonValue

from eostream.registry_bridge import tags
from eostream.registry_bridge.auth import (
    Principal,
    authenticate,
    presented_key,
    require_promoter,
)
from eostream.registry_bridge.bridge import Bridge
from eostream.registry_bridge.errors import (
    NotAllowedError,
    NotAuthenticatedError,
    PromotionError,
    RegistryUnavailableError,
)

log = logging.getLogger(__name__)

_BY_IGNORED = "ignored: who promotes is the credential's name (deprecated, will be refused)"
_DEPRECATED: dict[str, JsonValue] = {"deprecated": True}  # OpenAPI only: no runtime warning


class PromoteRequest(BaseModel):
    version: str = Field(min_length=1)
    reason: str = Field(min_length=1, description="why")
    force: bool = Field(default=False, description="promote even if the gate failed (override)")
    by: str | None = Field(default=None, description=_BY_IGNORED, json_schema_extra=_DEPRECATED)


class RollbackRequest(BaseModel):
    reason: str = Field(min_length=1)
    by: str | None = Field(default=None, description=_BY_IGNORED, json_schema_extra=_DEPRECATED)


#: the one place where the bridge's errors become HTTP answers
_STATUS: dict[type[Exception], tuple[int, str]] = {
    NotAuthenticatedError: (401, "unauthenticated"),
    NotAllowedError: (403, "forbidden"),
    PromotionError: (409, "cannot_promote"),
    RegistryUnavailableError: (503, "registry_unavailable"),
}


def _error(exc: Exception) -> HTTPException:
    status, code = next(
        (v for t, v in _STATUS.items() if isinstance(exc, t)), (503, "registry_unavailable")
    )
    headers = {"WWW-Authenticate": 'Bearer realm="registry-bridge"'} if status == 401 else None
    return HTTPException(status, {"code": code, "description": str(exc)}, headers=headers)


def _principal_dependency(bridge: Bridge) -> Callable[..., Principal]:
    credentials = bridge.settings.api_keys

    def current_principal(
        x_api_key: Annotated[str | None, Header()] = None,
        authorization: Annotated[str | None, Header()] = None,
    ) -> Principal:
        try:
            return authenticate(credentials, presented_key(x_api_key, authorization))
        except NotAuthenticatedError as exc:
            raise _error(exc) from None

    return current_principal


def _promoter(principal: Principal, what: str) -> None:
    try:
        require_promoter(principal, what)
    except NotAllowedError as exc:
        log.warning("refused: %s", exc)
        raise _error(exc) from None


def _ignored_by(by: str | None, principal: Principal) -> None:
    if by is not None and by != principal.name:
        log.warning(
            "request body names by=%r; ignored, %s is recorded (the credential)", by, principal.name
        )


def describe_versions(bridge: Bridge, name: str) -> list[dict[str, Any]]:
    champion = bridge.registry.alias_version(name, tags.CHAMPION)
    challenger = bridge.registry.alias_version(name, tags.CHALLENGER)
    rows = []
    for mv in sorted(bridge.registry.versions(name), key=lambda v: int(v.version)):
        t = dict(mv.tags or {})
        version = str(mv.version)
        rows.append(
            {
                "version": version,
                "aliases": [
                    a
                    for a, v in ((tags.CHAMPION, champion), (tags.CHALLENGER, challenger))
                    if v == version
                ],
                "gate": t.get(tags.GATE),
                "accuracy": t.get(tags.GATE_ACCURACY),
                "stage": t.get(tags.STAGE),
                "shipped": t.get(tags.SHIPPED) == "true",
                "promoted_by": t.get(tags.PROMOTED_BY),
                "reasons": t.get(tags.GATE_REASONS),
            }
        )
    return rows


def models_router(bridge: Bridge) -> APIRouter:
    router = APIRouter(prefix="/models", tags=["models"])
    authenticated = Depends(_principal_dependency(bridge))  # a local alias cannot annotate

    @router.get("/{name}", summary="A model's versions with gate verdicts and aliases")
    async def list_versions(name: str) -> list[dict[str, Any]]:
        try:
            return await asyncio.to_thread(describe_versions, bridge, name)
        except RegistryUnavailableError as exc:
            raise _error(exc) from None

    @router.post("/{name}/promote", summary="Make a version champion (recorded with who and why)")
    async def promote(
        name: str, body: PromoteRequest, caller: Principal = authenticated
    ) -> dict[str, Any]:
        _promoter(caller, "promote" if not body.force else "force a promotion")
        _ignored_by(body.by, caller)
        try:
            event = await bridge.promote(
                name, body.version, by=caller.name, reason=body.reason, force=body.force, via="rest"
            )
        except (PromotionError, RegistryUnavailableError) as exc:
            raise _error(exc) from None
        return event.model_dump(mode="json")

    @router.post("/{name}/rollback", summary="Make the previous champion live again")
    async def rollback(
        name: str, body: RollbackRequest, caller: Principal = authenticated
    ) -> dict[str, Any]:
        _promoter(caller, "roll back")
        _ignored_by(body.by, caller)
        try:
            event = await bridge.rollback(name, by=caller.name, reason=body.reason, via="rest")
        except (PromotionError, RegistryUnavailableError) as exc:
            raise _error(exc) from None
        return event.model_dump(mode="json")

    @router.get("/{name}/audit", summary="Promotions, overrides, rollbacks and undone alias moves")
    async def audit(
        name: str,
        limit: Annotated[int, Query(ge=1, le=10_000, description="the newest N")] = 1000,
        caller: Principal = authenticated,
    ) -> list[dict[str, Any]]:
        try:
            entries = await asyncio.to_thread(bridge.audit.entries, name)
        except Exception as exc:
            log.warning("audit log of %s unreadable: %s", name, exc)
            raise HTTPException(
                503,
                {
                    "code": "audit_unavailable",
                    "description": f"the audit log cannot be read now ({exc}); try again",
                },
            ) from None
        return [e.model_dump(mode="json") for e in entries[-limit:]]

    return router
