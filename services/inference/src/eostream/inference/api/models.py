"""/models: the deployed model and the deployment history."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from eostream.inference.api.deps import Results, Service

router = APIRouter(prefix="/models", tags=["models"])


@router.get("", summary="The deployed model and the deployment history (newest first)")
def get_models(
    service: Service, results: Results, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> dict[str, Any]:
    return {"deployed": service.describe() or None, "history": results.deployments(limit)}
