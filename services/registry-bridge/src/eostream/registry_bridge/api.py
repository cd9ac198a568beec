"""REST for operators: list a model's versions, promote one, roll back. Same code as the CLI."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from eostream.registry_bridge import tags
from eostream.registry_bridge.bridge import Bridge
from eostream.registry_bridge.errors import PromotionError, RegistryUnavailableError


class PromoteRequest(BaseModel):
    version: str = Field(min_length=1)
    by: str = Field(min_length=1, description="who asks")
    reason: str = Field(min_length=1, description="why")
    force: bool = Field(default=False, description="promote even if the gate failed")


class RollbackRequest(BaseModel):
    by: str = Field(min_length=1)
    reason: str = Field(min_length=1)


def _error(exc: Exception) -> HTTPException:
    if isinstance(exc, PromotionError):
        return HTTPException(409, {"code": "cannot_promote", "description": str(exc)})
    return HTTPException(503, {"code": "registry_unavailable", "description": str(exc)})


def describe_versions(bridge: Bridge, name: str) -> list[dict[str, Any]]:
    champion = bridge.registry.alias_version(name, tags.CHAMPION)
    challenger = bridge.registry.alias_version(name, tags.CHALLENGER)
    rows = []
    for mv in sorted(bridge.registry.versions(name), key=lambda v: int(v.version)):
        t = dict(mv.tags or {})
        version = str(mv.version)
        rows.append({
            "version": version,
            "aliases": [a for a, v in ((tags.CHAMPION, champion), (tags.CHALLENGER, challenger))
                        if v == version],
            "gate": t.get(tags.GATE),
            "accuracy": t.get(tags.GATE_ACCURACY),
            "stage": t.get(tags.STAGE),
            "shipped": t.get(tags.SHIPPED) == "true",
            "promoted_by": t.get(tags.PROMOTED_BY),
            "reasons": t.get(tags.GATE_REASONS),
        })
    return rows


def models_router(bridge: Bridge) -> APIRouter:
    router = APIRouter(prefix="/models", tags=["models"])

    @router.get("/{name}", summary="A model's versions with gate verdicts and aliases")
    async def list_versions(name: str) -> list[dict[str, Any]]:
        import asyncio

        try:
            return await asyncio.to_thread(describe_versions, bridge, name)
        except RegistryUnavailableError as exc:
            raise _error(exc) from None

    @router.post("/{name}/promote", summary="Make a version champion (recorded with who and why)")
    async def promote(name: str, body: PromoteRequest) -> dict[str, Any]:
        try:
            event = await bridge.promote(name, body.version, by=body.by, reason=body.reason,
                                         force=body.force)
        except (PromotionError, RegistryUnavailableError) as exc:
            raise _error(exc) from None
        return event.model_dump(mode="json")

    @router.post("/{name}/rollback", summary="Make the previous champion live again")
    async def rollback(name: str, body: RollbackRequest) -> dict[str, Any]:
        try:
            event = await bridge.rollback(name, by=body.by, reason=body.reason)
        except (PromotionError, RegistryUnavailableError) as exc:
            raise _error(exc) from None
        return event.model_dump(mode="json")

    return router
