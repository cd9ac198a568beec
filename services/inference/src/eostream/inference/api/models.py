"""/models: the deployed model and the deployment history."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from eostream.inference.api.deps import Deployment, Results

router = APIRouter(prefix="/models", tags=["models"])


@router.get("", summary="The deployed model and the deployment history (newest first)")
def get_models(
    deployment: Deployment, results: Results, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> dict[str, Any]:
    return {"deployed": deployment.describe() or None, "history": results.deployments(limit)}
