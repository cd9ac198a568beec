"""/models: the deployed model and the deployment history."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from eostream.inference.api.deps import Deployment, Results
from eostream.inference.api.schemas import Models
from eostream.shared.http_errors import error_responses

router = APIRouter(prefix="/models", tags=["models"])


@router.get(
    "",
    summary="The deployed model and the deployment history (newest first)",
    response_model=Models,
    responses=error_responses(422),
)
def get_models(
    deployment: Deployment, results: Results, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> dict[str, Any]:
    return {"deployed": deployment.describe() or None, "history": results.deployments(limit)}
