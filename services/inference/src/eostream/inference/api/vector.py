"""/results/{scene_id}/vector: a result map as polygons (one MultiPolygon per class), as
GeoJSON (EPSG:4326) or GeoParquet (the map's CRS); see :mod:`eostream.inference.vector`."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from eostream.inference import vector
from eostream.inference.api.deps import Results, Served, Settings, Store
from eostream.inference.api.results import ModelName, Version, _one
from eostream.inference.errors import ResultNotFoundError
from eostream.shared.errors import ObjectNotFoundError
from eostream.shared.http_errors import error_responses

router = APIRouter(prefix="/results", tags=["results"])


class VectorProperties(BaseModel):
    class_: str = Field(alias="class", description="the class name")
    value: int = Field(description="the class value in the COG")
    colour: str = Field(description="#RRGGBB, the COG's colour map entry")
    area_km2: float = Field(description="area of the class's polygons")
    pixels: int = Field(description="pixels of the class in the map")
    scene_id: str
    model_name: str
    model_version: str
    run_id: str | None = Field(description="the MLflow run that trained the model")


class VectorFeature(BaseModel):
    type: Literal["Feature"]
    id: str
    geometry: dict[str, Any] = Field(description="a GeoJSON MultiPolygon (EPSG:4326)")
    properties: VectorProperties


class VectorCollection(BaseModel):
    """One feature per class present in the map (nodata and uncertain pixels excluded)."""

    type: Literal["FeatureCollection"]
    features: list[VectorFeature]


def _filename(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(parts))


@router.get(
    "/{scene_id}/vector",
    summary="The map as polygons, one MultiPolygon per class (GeoJSON or GeoParquet)",
    response_model=VectorCollection,
    response_class=Response,
    responses={
        200: {
            "content": {
                vector.GEOJSON: {"schema": {"$ref": "#/components/schemas/VectorCollection"}},
                vector.PARQUET: {},
            }
        },
        **error_responses(400, 404, 413, 422),
    },
)
def get_vector(
    scene_id: str,
    results: Results,
    store: Store,
    settings: Settings,
    served: Served,
    model_version: Version = None,
    model_name: ModelName = None,
    f: Annotated[
        Literal["geojson", "parquet"],
        Query(description="geojson: RFC 7946, EPSG:4326; parquet: GeoParquet in the map's CRS"),
    ] = "geojson",
    simplify: Annotated[
        float, Query(ge=0, le=1000, description="simplification tolerance in metres (0: none)")
    ] = 0,
) -> Response:
    record = _one(results, scene_id, model_version, model_name, served)
    try:
        cog = store.get_bytes(f"{record.prefix}/classification.tif")
    except ObjectNotFoundError:
        raise ResultNotFoundError(f"{record.prefix}/classification.tif is missing") from None
    classes = tuple(record.stats.get("classes", {}))
    properties = {
        "scene_id": record.scene_id,
        "model_name": record.model_name,
        "model_version": record.model_version,
        "run_id": record.run_id,
    }
    vm = vector.vectorise(
        cog,
        classes,
        properties,
        max_polygons=settings.vector_max_polygons,
        simplify_m=simplify,
    )
    name = _filename(record.scene_id, record.model_name, f"v{record.model_version}")
    if f == "parquet":
        body, media, ext = vector.to_geoparquet(vm), vector.PARQUET, "parquet"
    else:
        body, media, ext = vector.to_geojson(vm), vector.GEOJSON, "geojson"
    return Response(
        body,
        media_type=media,
        headers={"Content-Disposition": f'inline; filename="{name}.{ext}"'},
    )
