"""Dependencies of the routers, as ``Annotated`` aliases."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request

from eostream.inference.deployment import ModelDeployment
from eostream.inference.pipeline import Pipeline
from eostream.inference.results import ResultsStore
from eostream.inference.service import InferenceService
from eostream.inference.settings import InferenceSettings
from eostream.shared.storage import ObjectStore


def get_service(request: Request) -> InferenceService:
    service: InferenceService = request.app.state.service
    return service


Service = Annotated[InferenceService, Depends(get_service)]


def get_settings(service: Service) -> InferenceSettings:
    return service.settings


def get_results(service: Service) -> ResultsStore:
    return service.results


def get_pipeline(service: Service) -> Pipeline:
    return service.pipeline


def get_deployment(service: Service) -> ModelDeployment:
    return service.deployment


def get_store(service: Service) -> ObjectStore:
    return service.store


def get_served(service: Service) -> tuple[str, str] | None:
    """(name, version) of the model this replica serves now; None before the first."""
    model = service.deployment.current
    return (model.info.name, model.info.version) if model is not None else None


Settings = Annotated[InferenceSettings, Depends(get_settings)]
Results = Annotated[ResultsStore, Depends(get_results)]
PipelineDep = Annotated[Pipeline, Depends(get_pipeline)]
Deployment = Annotated[ModelDeployment, Depends(get_deployment)]
Store = Annotated[ObjectStore, Depends(get_store)]
#: the served model, whose result is a scene's map when a request names no version
Served = Annotated[tuple[str, str] | None, Depends(get_served)]


UNAUTHORIZED = "a valid API key is required (header X-API-Key or Authorization: Bearer)"


def key_is_valid(x_api_key: str | None, authorization: str | None, expected: str) -> bool:
    """Whether the request's X-API-Key or Bearer token is the API key (constant time)."""
    given = x_api_key
    if given is None and authorization and authorization.lower().startswith("bearer "):
        given = authorization[7:].strip()
    return bool(given) and secrets.compare_digest(str(given).encode(), expected.encode())


def require_api_key(
    settings: Settings,
    x_api_key: Annotated[str | None, Header()] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> None:
    if not key_is_valid(x_api_key, authorization, settings.api_key.get_secret_value()):
        raise HTTPException(401, UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})


ApiKey = Depends(require_api_key)
