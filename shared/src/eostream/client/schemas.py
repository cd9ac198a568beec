"""Typed answers of the REST APIs the client uses. Each model names the fields a caller reads and
keeps the rest (``extra="allow"``), so a server that adds a field does not break an older client.
They mirror the servers' own response models (inference ``api/schemas.py``, ``api/ogc.py``; the
registry-bridge's ``api.py``), which a client cannot import without the services."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)


class ResultLinks(_Open):
    self: str
    item: str
    cog: str
    quicklook: str
    statistics: str
    vector: str | None = None


class ResultSummary(_Open):
    """One classified scene: which model made the map, the class shares and where the files are."""

    id: str
    scene_id: str
    model_name: str
    model_version: str
    run_id: str | None = None
    model_precision: str | None = None
    datetime: str | None = None
    bbox: list[float] | None = None
    created: str
    class_shares: dict[str, float]
    uncertain_share: float | None = None
    mean_confidence: float | None = None
    links: ResultLinks

    def top_classes(self, n: int = 3) -> list[tuple[str, float]]:
        """The ``n`` largest class shares, largest first."""
        return sorted(self.class_shares.items(), key=lambda kv: -kv[1])[:n]


class ResultPage(_Open):
    results: list[ResultSummary]
    total: int
    limit: int
    offset: int


class ClassShare(_Open):
    pixels: int
    area_km2: float
    share: float


class Statistics(_Open):
    """Per-class pixels, area (km2) and share of one result."""

    pixels: int
    valid_pixels: int
    masked_pixels: int
    classes: dict[str, ClassShare]
    mean_confidence: float | None = None


class DeployedModel(_Open):
    name: str
    version: str
    alias: str | None = None
    run_id: str | None = None
    artifact_uri: str
    mlm_item_href: str | None = None
    provider: str
    bands: list[str]
    classes: list[str]
    processing_level: str


class DeploymentRecord(_Open):
    name: str
    version: str
    status: str
    detail: str | None = None
    time: str


class Models(_Open):
    """Inference's deployed model (null before the first) and its deployment history."""

    deployed: DeployedModel | None
    history: list[DeploymentRecord]


class ProcessSummary(_Open):
    id: str
    title: str
    version: str


class ProcessList(_Open):
    processes: list[ProcessSummary]


class Job(_Open):
    """An OGC API - Processes job's statusInfo."""

    process_id: str = Field(alias="processID")
    job_id: str = Field(alias="jobID")
    status: str = Field(description="accepted, running, successful, failed or dismissed")
    message: str
    progress: int
    created: str
    finished: str | None = None
    model: dict[str, Any] | None = None

    @property
    def done(self) -> bool:
        return self.status in ("successful", "failed", "dismissed")


class ModelVersion(_Open):
    """One version of a registered model as the registry-bridge describes it."""

    version: str
    aliases: list[str]
    gate: str | None
    accuracy: str | None
    stage: str | None = None
    shipped: bool
    promoted_by: str | None = None
    reasons: str | None = None
