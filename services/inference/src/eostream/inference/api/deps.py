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


Settings = Annotated[InferenceSettings, Depends(get_settings)]
Results = Annotated[ResultsStore, Depends(get_results)]
PipelineDep = Annotated[Pipeline, Depends(get_pipeline)]
Deployment = Annotated[ModelDeployment, Depends(get_deployment)]
Store = Annotated[ObjectStore, Depends(get_store)]


def require_api_key(
    settings: Settings,
    x_api_key: Annotated[str | None, Header()] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> None:
    given = x_api_key
    if given is None and authorization and authorization.lower().startswith("bearer "):
        given = authorization[7:].strip()
    expected = settings.api_key.get_secret_value()
    if not given or not secrets.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(
            401,
            "a valid API key is required (header X-API-Key or Authorization: Bearer)",
            headers={"WWW-Authenticate": "Bearer"},
        )


ApiKey = Depends(require_api_key)
