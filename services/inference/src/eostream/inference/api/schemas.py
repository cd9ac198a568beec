"""The response bodies of the REST API, so the OpenAPI document describes every one.

Bodies this service composes (result summaries, model history, the STAC landing page and
collections, OGC process descriptions) are validated against these models; their fields are
declared in the order the JSON has always had, so the bytes are unchanged. Bodies stored as they
were made (result STAC items, item collections of them, statistics) are answered as stored
(:func:`as_stored`) and only documented here: ``extra="allow"`` models naming the fields clients
read.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import Response
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

_DOCUMENT = TypeAdapter(dict[str, Any])


def as_stored(document: dict[str, Any]) -> Response:
    """A JSON document answered as it is, in the bytes FastAPI writes for an untyped dict
    (pydantic's JSON), while the route's ``response_model`` documents it."""
    return Response(_DOCUMENT.dump_json(document), media_type="application/json")


class _Open(BaseModel):
    """A JSON object that may carry more members than the ones named."""

    model_config = ConfigDict(extra="allow")


class Link(_Open):
    """A link (STAC, OGC API); search links may add ``method``, ``merge`` and ``body``."""

    rel: str
    href: str
    type: str


# -- /results, /classify ---------------------------------------------------------------------
class ResultLinks(BaseModel):
    self: str = Field(description="this summary")
    item: str = Field(description="the result STAC item")
    cog: str = Field(description="the classification COG (uint8, nodata 255)")
    quicklook: str = Field(description="a PNG of the classes")
    statistics: str = Field(description="per-class pixels, area and share")
    vector: str = Field(description="the map as polygons per class (GeoJSON, GeoParquet)")


class ResultSummary(BaseModel):
    """One classified scene: which model, when, where, and how much of each class."""

    id: str = Field(description="the result item id: scene__model__vversion")
    scene_id: str
    model_name: str
    model_version: str
    run_id: str | None
    model_precision: str | None = Field(
        default=None, description="the model file that ran: fp32, or int8 (its quantised file)"
    )
    datetime: str | None = Field(description="the scene's acquisition time, RFC 3339")
    bbox: list[float] | None = Field(description="minx, miny, maxx, maxy (WGS84)")
    created: str = Field(description="when the result was written, RFC 3339")
    class_shares: dict[str, float] = Field(description="share of the valid pixels per class")
    uncertain_share: float | None = Field(description="share of the valid pixels left uncertain")
    mean_confidence: float | None
    out_of_domain: list[str] | None = Field(
        description="the signals that flag the scene as unlike the training data"
    )
    level_mismatch: str | None = Field(description="how an L2A/L1C mismatch was handled")
    links: ResultLinks


class ClassifyResult(ResultSummary):
    """A summary of the result, and whether it was found done rather than computed now."""

    skipped: bool = Field(description="true: the scene was already classified by this model")


class ResultPage(BaseModel):
    results: list[ResultSummary]
    total: int = Field(description="results matching the query, over all pages")
    limit: int
    offset: int


class ClassShare(_Open):
    pixels: int
    area_km2: float
    share: float


class Statistics(_Open):
    """Per-class pixels, area (km2) and share of the valid (unmasked) pixels."""

    pixels: int
    valid_pixels: int
    masked_pixels: int
    pixel_area_km2: float
    classes: dict[str, ClassShare]
    uncertain: dict[str, Any] | None = Field(
        default=None, description="the uncertain label (254): value, pixels, area, share, below"
    )
    mean_confidence: float | None = None
    out_of_domain: dict[str, Any] | None = None


# -- STAC --------------------------------------------------------------------------------------
class StacItem(_Open):
    """A result STAC item (STAC 1.x, with the classification and eostream properties)."""

    type: str = Field(description='"Feature"')
    stac_version: str
    id: str
    geometry: dict[str, Any] | None
    bbox: list[float] | None = None
    properties: dict[str, Any]
    links: list[dict[str, Any]]
    assets: dict[str, dict[str, Any]]
    collection: str | None = None


class ItemCollection(_Open):
    """A page of result items (GeoJSON FeatureCollection); a ``next`` link when more match."""

    type: str = Field(description='"FeatureCollection"')
    features: list[StacItem]
    links: list[Link]
    numberMatched: int
    numberReturned: int


class Landing(BaseModel):
    type: str = Field(description='"Catalog"')
    stac_version: str
    id: str
    title: str
    description: str
    conformsTo: list[str]
    links: list[Link]


class Conformance(BaseModel):
    conformsTo: list[str]


class SpatialExtent(BaseModel):
    bbox: list[list[int | float]]


class TemporalExtent(BaseModel):
    interval: list[list[str | None]]


class Extent(BaseModel):
    spatial: SpatialExtent
    temporal: TemporalExtent


class Collection(BaseModel):
    type: str = Field(description='"Collection"')
    stac_version: str
    id: str
    description: str
    license: str
    extent: Extent
    links: list[Link]


class Collections(BaseModel):
    collections: list[Collection]
    links: list[Link]


# -- /models -------------------------------------------------------------------------------
class DeployedModel(BaseModel):
    """The live model."""

    name: str
    version: str
    alias: str | None
    run_id: str | None
    sha256: str
    artifact_uri: str
    mlm_item_href: str | None
    provider: str = Field(description="the onnxruntime execution provider")
    precision: Literal["fp32", "int8"] = Field(
        default="fp32", description="the file that runs: fp32, or the MLM item's int8 (CPU)"
    )
    bands: list[str]
    classes: list[str]
    processing_level: str
    swaps: int = Field(description="models made live since the service started")


class DeploymentRecord(BaseModel):
    """One attempt to make a model live."""

    id: int
    name: str
    version: str
    alias: str | None
    run_id: str | None
    sha256: str | None
    artifact_uri: str | None
    mlm_item_href: str | None
    provider: str | None
    status: str = Field(description="live or failed")
    detail: str | None = Field(description="why it failed")
    time: str


class Models(BaseModel):
    deployed: DeployedModel | None = Field(description="null before the first deployment")
    history: list[DeploymentRecord] = Field(description="newest first")


# -- /processes (OGC API - Processes) ------------------------------------------------------
class ProcessSummary(BaseModel):
    id: str
    title: str
    version: str
    jobControlOptions: list[str]
    links: list[Link]


class ProcessList(BaseModel):
    processes: list[ProcessSummary]
    links: list[Link]


class InputDescription(BaseModel):
    title: str
    schema_: dict[str, Any] = Field(alias="schema")
    minOccurs: int
    maxOccurs: int


class OutputDescription(BaseModel):
    title: str
    schema_: dict[str, Any] = Field(alias="schema")


class ProcessDescription(BaseModel):
    id: str
    title: str
    version: str
    jobControlOptions: list[str]
    outputTransmission: list[str]
    inputs: dict[str, InputDescription]
    outputs: dict[str, OutputDescription]
    links: list[Link]


class ExecuteResult(BaseModel):
    result: ClassifyResult
