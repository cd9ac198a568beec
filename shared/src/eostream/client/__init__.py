"""``eostream.client``: a typed Python client for eostream's REST APIs and training requests.

- :class:`InferenceClient`: results (search, CQL2 STAC search, statistics, quicklook and COG),
  the deployed model, OGC API - Processes (run a chosen model on a scene as a job).
- :class:`BridgeClient`: a model's versions, gate verdicts and aliases; promote, roll back.
- :class:`TrainingClient`: ask the trainer for a model over the bus, with the MLflow run link.

Every failed call raises :class:`ApiError` with the server's ``code`` and ``description``.
"""

from eostream.client.bridge import BridgeClient
from eostream.client.errors import ApiError
from eostream.client.inference import InferenceClient
from eostream.client.schemas import (
    Job,
    Models,
    ModelVersion,
    ProcessList,
    ResultPage,
    ResultSummary,
    Statistics,
)
from eostream.client.training import Submission, TrainingClient, TrainingTimeout

__all__ = [
    "ApiError",
    "BridgeClient",
    "InferenceClient",
    "Job",
    "ModelVersion",
    "Models",
    "ProcessList",
    "ResultPage",
    "ResultSummary",
    "Statistics",
    "Submission",
    "TrainingClient",
    "TrainingTimeout",
]
