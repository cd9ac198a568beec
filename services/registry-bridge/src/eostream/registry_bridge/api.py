"""REST for operators: list a model's versions, promote one, roll back, read the audit log.
Same code as the CLI.

Every write route takes a credential (``X-API-Key`` or ``Authorization: Bearer``, see
:mod:`.auth`) whose role is ``promoter``; who is recorded is the credential's name. Reading the
version list is public; reading the audit log takes any valid credential (viewer or promoter).
Every error answers ``{"code", "description"}`` (:data:`ERRORS`, installed on the app with
:func:`eostream.shared.http_errors.install`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from eostream.registry_bridge.audit import AuditEntry, trusted_gate
from eostream.registry_bridge.auth import (
    CHALLENGE,
    Principal,
    authenticate,
    presented_key,
    require_promoter,
)
from eostream.registry_bridge.bridge import Bridge
from eostream.registry_bridge.errors import (
    AuditUnavailableError,
    NotAllowedError,
    NotAuthenticatedError,
    PromotionError,
    RegistryUnavailableError,
)
from eostream.registry_bridge.port import ModelRegistry
from eostream.registry_bridge.registry import MODEL_NAME_PATTERN, VERSION_PATTERN
from eostream.shared import tags
from eostream.shared.events import ModelPromoted
from eostream.shared.http_errors import ErrorMapping, error_body, error_responses

log = logging.getLogger(__name__)

_BY_IGNORED = "ignored: who promotes is the credential's name (deprecated, will be refused)"
_DEPRECATED: dict[str, JsonValue] = {"deprecated": True}  # OpenAPI only: no runtime warning

#: the one place where the bridge's errors become HTTP answers (status, code)
ERRORS: ErrorMapping = (
    (NotAuthenticatedError, 401, "unauthenticated"),
    (NotAllowedError, 403, "forbidden"),
    (PromotionError, 409, "cannot_promote"),
    (RegistryUnavailableError, 503, "registry_unavailable"),
    (AuditUnavailableError, 503, "audit_unavailable"),
)
_CHALLENGE = {"WWW-Authenticate": CHALLENGE}
#: the longest ``reason`` kept (tags, audit entries, events); a longer one answers 422
REASON_MAX_LENGTH = 2000


#: A model name in a path: checked before anything reaches MLflow (422 ``invalid_request``).
ModelName = Annotated[
    str,
    Path(
        pattern=MODEL_NAME_PATTERN,
        max_length=256,
        description="the registered model: letters, digits and _ . - (at most 256)",
    ),
]


class PromoteRequest(BaseModel):
    version: str = Field(pattern=VERSION_PATTERN, description="a version number: 1, 2, 3, ...")
    reason: str = Field(min_length=1, max_length=REASON_MAX_LENGTH, description="why")
    force: bool = Field(default=False, description="promote even if the gate failed (override)")
    by: str | None = Field(
        default=None, max_length=256, description=_BY_IGNORED, json_schema_extra=_DEPRECATED
    )


class RollbackRequest(BaseModel):
    reason: str = Field(min_length=1, max_length=REASON_MAX_LENGTH, description="why")
    by: str | None = Field(
        default=None, max_length=256, description=_BY_IGNORED, json_schema_extra=_DEPRECATED
    )


class VersionRow(BaseModel):
    """One version of a model, as the registry's tags describe it."""

    model_config = ConfigDict(frozen=True)

    version: str
    aliases: list[str] = Field(description="champion and/or challenger")
    gate: str | None = Field(
        description="the gate's verdict as the bridge's audit log records it: passed, failed, "
        "refused; unverified: the eostream.gate tag claims a verdict the log does not hold (a "
        "tag set outside the bridge; such a version is no champion); null: not gated yet"
    )
    gate_tag: str | None = Field(
        default=None,
        description="the eostream.gate tag in MLflow, where it differs from gate (else null)",
    )
    accuracy: str | None = Field(description="held-out accuracy the gate measured")
    stage: str | None = Field(description="Staging, Production, Archived")
    shipped: bool
    promoted_by: str | None
    reasons: str | None = Field(description="the gate's reasons, a JSON list")


def _principal_dependency(bridge: Bridge) -> Callable[..., Principal]:
    credentials = bridge.settings.api_keys

    def current_principal(
        x_api_key: Annotated[str | None, Header()] = None,
        authorization: Annotated[str | None, Header()] = None,
    ) -> Principal:
        try:
            return authenticate(credentials, presented_key(x_api_key, authorization))
        except NotAuthenticatedError as exc:  # the challenge header needs an HTTPException
            raise HTTPException(
                401, error_body("unauthenticated", str(exc)), headers=_CHALLENGE
            ) from None

    return current_principal


def _promoter(principal: Principal, what: str) -> None:
    try:
        require_promoter(principal, what)
    except NotAllowedError as exc:
        log.warning("refused: %s", exc)
        raise


def _ignored_by(by: str | None, principal: Principal) -> None:
    if by is not None and by != principal.name:
        log.warning(
            "request body names by=%r; ignored, %s is recorded (the credential)", by, principal.name
        )


def describe_versions(
    registry: ModelRegistry, name: str, audit: Callable[[], Sequence[AuditEntry]]
) -> list[VersionRow]:
    """Blocking: every version of ``name``, oldest first, with the gate's verdicts as the audit
    log (``audit()``: the model's entries) records them, not as the tags say
    (:func:`trusted_gate`). The log is read after the versions, so a version gated between the
    two reads shows its verdict, not "unverified"."""
    champion = registry.alias_version(name, tags.CHAMPION)
    challenger = registry.alias_version(name, tags.CHALLENGER)
    versions = registry.versions(name)
    entries = audit()
    rows = []
    for mv in sorted(versions, key=lambda v: int(v.version)):
        t = mv.tags
        gate = trusted_gate(t.get(tags.GATE), entries, mv.version, mv.created_ms)
        rows.append(
            VersionRow(
                version=mv.version,
                aliases=[
                    a
                    for a, v in ((tags.CHAMPION, champion), (tags.CHALLENGER, challenger))
                    if v == mv.version
                ],
                gate=gate,
                gate_tag=t.get(tags.GATE) if t.get(tags.GATE) != gate else None,
                accuracy=t.get(tags.GATE_ACCURACY),
                stage=t.get(tags.STAGE),
                shipped=t.get(tags.SHIPPED) == "true",
                promoted_by=t.get(tags.PROMOTED_BY),
                reasons=t.get(tags.GATE_REASONS),
            )
        )
    return rows


def models_router(bridge: Bridge) -> APIRouter:
    router = APIRouter(prefix="/models", tags=["models"])
    authenticated = Depends(_principal_dependency(bridge))  # a local alias cannot annotate

    @router.get(
        "/{name}",
        summary="A model's versions with gate verdicts and aliases",
        responses=error_responses(422, 503),
    )
    async def list_versions(name: ModelName) -> list[VersionRow]:
        def entries() -> list[AuditEntry]:
            try:
                return bridge.audit.entries(name)
            except Exception as exc:  # the store down, or refusing: the verdicts are there
                log.warning("audit log of %s unreadable: %s", name, exc)
                raise AuditUnavailableError(
                    f"the gate's verdicts (the audit log) cannot be read now ({exc}); try again"
                ) from None

        return await asyncio.to_thread(describe_versions, bridge.registry, name, entries)

    @router.post(
        "/{name}/promote",
        summary="Make a version champion (recorded with who and why)",
        responses=error_responses(400, 401, 403, 409, 413, 422, 503),
    )
    async def promote(
        name: ModelName, body: PromoteRequest, caller: Principal = authenticated
    ) -> ModelPromoted:
        _promoter(caller, "promote" if not body.force else "force a promotion")
        _ignored_by(body.by, caller)
        return await bridge.promote(
            name, body.version, by=caller.name, reason=body.reason, force=body.force, via="rest"
        )

    @router.post(
        "/{name}/rollback",
        summary="Make the previous champion live again",
        responses=error_responses(400, 401, 403, 409, 413, 422, 503),
    )
    async def rollback(
        name: ModelName, body: RollbackRequest, caller: Principal = authenticated
    ) -> ModelPromoted:
        _promoter(caller, "roll back")
        _ignored_by(body.by, caller)
        return await bridge.rollback(name, by=caller.name, reason=body.reason, via="rest")

    @router.get(
        "/{name}/audit",
        summary="Promotions, overrides, rollbacks, undone alias moves and the gate's verdicts",
        responses=error_responses(401, 422, 503),
    )
    async def audit(
        name: ModelName,
        limit: Annotated[int, Query(ge=1, le=10_000, description="the newest N")] = 1000,
        caller: Principal = authenticated,
    ) -> list[AuditEntry]:
        try:
            entries = await asyncio.to_thread(bridge.audit.entries, name)
        except Exception as exc:
            log.warning("audit log of %s unreadable: %s", name, exc)
            raise AuditUnavailableError(
                f"the audit log cannot be read now ({exc}); try again"
            ) from None
        return entries[-limit:]

    return router
