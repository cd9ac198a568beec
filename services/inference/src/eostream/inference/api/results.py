"""/results: search classified scenes, and get one scene's COG, quicklook and statistics."""

from __future__ import annotations

import json
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Path, Query, Request, Response

from eostream.inference import area_query, writer
from eostream.inference.api.deps import Results, Served, Settings, Store
from eostream.inference.api.params import parse_bbox, parse_datetime
from eostream.inference.api.ranges import ranged_object
from eostream.inference.api.schemas import (
    ResultPage,
    ResultSummary,
    StacItem,
    Statistics,
    as_stored,
)
from eostream.inference.api.stac import served_item
from eostream.inference.errors import BadInputError, ResultNotFoundError
from eostream.inference.results import ResultQuery, ResultRecord, class_names
from eostream.shared.errors import ObjectNotFoundError
from eostream.shared.http_errors import error_responses

router = APIRouter(prefix="/results", tags=["results"])


def summary(record: ResultRecord, base: str) -> dict[str, Any]:
    scene = f"{base}results/{quote(record.scene_id, safe='')}"
    # the model's name as well as its version: versions are numbered per registered model
    version = "?" + urlencode(
        {"model_version": record.model_version, "model_name": record.model_name}
    )
    return {
        "id": record.id,
        "scene_id": record.scene_id,
        "model_name": record.model_name,
        "model_version": record.model_version,
        "run_id": record.run_id,
        "model_precision": record.item.get("properties", {}).get("eostream:model_precision"),
        "datetime": record.datetime.isoformat() if record.datetime else None,
        "bbox": list(record.bbox) if record.bbox else None,
        "created": record.created.isoformat(),
        "class_shares": {k: v["share"] for k, v in record.stats.get("classes", {}).items()},
        "uncertain_share": record.stats.get("uncertain", {}).get("share"),
        "mean_confidence": record.stats.get("mean_confidence"),
        "out_of_domain": record.stats.get("out_of_domain", {}).get("flagged_by"),
        "level_mismatch": record.item.get("properties", {}).get("eostream:level_mismatch"),
        "links": {
            "self": scene + version,
            "item": f"{scene}/item{version}",
            "cog": f"{scene}/cog{version}",
            "quicklook": f"{scene}/quicklook{version}",
            "statistics": f"{scene}/statistics{version}",
            "vector": f"{scene}/vector{version}",
        },
    }


@router.get(
    "",
    summary="Search results by scene, bbox, time, class share and model version",
    response_model=ResultPage,
    responses=error_responses(400, 422),
)
def search_results(
    request: Request,
    results: Results,
    scene_id: Annotated[str | None, Query(max_length=256)] = None,
    bbox: Annotated[str | None, Query(description="minx,miny,maxx,maxy (WGS84)")] = None,
    datetime: Annotated[str | None, Query(description="RFC 3339 instant or interval a/b")] = None,
    class_name: Annotated[str | None, Query(alias="class", max_length=100)] = None,
    min_share: Annotated[float | None, Query(ge=0, le=1)] = None,
    model_name: Annotated[str | None, Query(max_length=200)] = None,
    model_version: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> dict[str, Any]:
    if min_share is not None and class_name is None:
        raise BadInputError("min_share needs class (for example ?class=Forest&min_share=0.2)")
    if class_name is not None:  # a misspelt class matched nothing and answered 200
        known = class_names(results)
        if known and class_name not in known:
            raise BadInputError(
                f"unknown class {class_name!r}; the results' classes: {', '.join(known)}"
            )
    start, end = parse_datetime(datetime)
    query = ResultQuery(
        scene_id=scene_id,
        bbox=parse_bbox(bbox),
        start=start,
        end=end,
        class_name=class_name,
        min_share=min_share,
        model_name=model_name,
        model_version=model_version,
        limit=limit,
        offset=offset,
    )
    records, total = results.search(query)
    base = str(request.base_url)
    return {
        "results": [summary(r, base) for r in records],
        "total": total,
        "limit": limit,
        "offset": offset,
    }


def _one(
    results: Results,
    scene_id: str,
    model_version: str | None,
    model_name: str | None = None,
    served: tuple[str, str] | None = None,
) -> ResultRecord:
    """The result of a scene by ``model_name``'s ``model_version``. With no version: the result
    of the ``served`` model (the map inference serves now) when it made one and the request
    names no other model, else the newest that matches (``ResultsStore.get``: latest created,
    ties to the smallest item id), so a what-if run of an old model (an OGC job naming it) does
    not become the scene's map."""
    prefer = area_query.preferred(served, model_version, model_name)
    record = results.get(scene_id, prefer[1], prefer[0]) if prefer else None
    record = record or results.get(scene_id, model_version, model_name)
    if record is None:
        which = " ".join(
            part
            for part in (
                f"model {model_name!r}" if model_name else "",
                f"version {model_version}" if model_version else "",
            )
            if part
        )
        raise ResultNotFoundError(
            f"scene {scene_id!r} has not been classified" + (f" by {which}" if which else "")
        )
    return record


Version = Annotated[
    str | None,
    Query(
        max_length=100,
        description="The model version. Versions are numbered per registered model: without "
        "model_name, the scene's newest result of any model with this version",
    ),
]
ModelName = Annotated[
    str | None,
    Query(max_length=200, description="The registered model's name (default: any model)"),
]


LOOKUP = error_responses(404, 422)


@router.get(
    "/{scene_id}",
    summary="A scene's map: the served model's result, else the latest (or one model and "
    "version's)",
    response_model=ResultSummary,
    responses=LOOKUP,
)
def get_result(
    request: Request,
    scene_id: str,
    results: Results,
    served: Served,
    model_version: Version = None,
    model_name: ModelName = None,
) -> dict[str, Any]:
    record = _one(results, scene_id, model_version, model_name, served)
    return summary(record, str(request.base_url))


@router.get(
    "/{scene_id}/item", summary="The result STAC item", response_model=StacItem, responses=LOOKUP
)
def get_item(
    request: Request,
    scene_id: str,
    results: Results,
    settings: Settings,
    served: Served,
    model_version: Version = None,
    model_name: ModelName = None,
) -> Response:
    """The result item as the STAC API serves it: asset hrefs of this service (the object
    store's kept as each asset's alternate), links to its STAC collection and root."""
    record = _one(results, scene_id, model_version, model_name, served)
    return Response(
        json.dumps(served_item(request, settings, record)).encode(),
        media_type="application/geo+json",
    )


@router.get(
    "/{scene_id}/statistics",
    summary="Per-class pixels, area (km2) and share",
    response_model=Statistics,
    responses=LOOKUP,
)
def get_statistics(
    scene_id: str,
    results: Results,
    served: Served,
    model_version: Version = None,
    model_name: ModelName = None,
) -> Response:
    return as_stored(_one(results, scene_id, model_version, model_name, served).stats)


COG = "image/tiff; application=geotiff; profile=cloud-optimized"
#: the product files served by /results/{scene}/files/{model}/{version}/{name}, and their
#: media types
FILES = {
    "classification.tif": COG,
    "probabilities.tif": COG,
    "quicklook.png": "image/png",
    "statistics.json": "application/json",
    "item.json": "application/geo+json",
}
AUX = "classification.tif.aux.xml"  # made from the item's legend: category names for GDAL
RANGED = {
    206: {"description": "Partial content (a Range request)", "content": {COG: {}}},
    **error_responses(404, 416, 422),
}


def _file(request: Request, store: Store, record: ResultRecord, name: str) -> Response:
    if name == AUX:
        classes = record.item["assets"]["classification"].get("classification:classes", [])
        return Response(writer.pam_xml(classes), media_type="application/xml")
    if name not in FILES:
        raise ResultNotFoundError(
            f"no file {name!r} in a result: one of {', '.join([*FILES, AUX])}"
        )
    try:
        return ranged_object(request, store, f"{record.prefix}/{name}", FILES[name])
    except ObjectNotFoundError:
        raise ResultNotFoundError(f"{name} is missing from the object store") from None


FILE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {COG: {}, "image/png": {}}},
    **RANGED,
}
FILE_SUMMARY = "One product file of a result (HTTP Range requests; the COG's .aux.xml: categories)"


@router.get(
    "/{scene_id}/files/{model_name}/{model_version}/{name}",
    summary=FILE_SUMMARY,
    response_class=Response,
    responses=FILE_RESPONSES,
)
@router.head(
    "/{scene_id}/files/{model_name}/{model_version}/{name}",
    operation_id="head_model_file",
    summary=FILE_SUMMARY,
    response_class=Response,
    responses=FILE_RESPONSES,
)
def get_model_file(
    request: Request,
    scene_id: str,
    model_name: Annotated[str, Path(max_length=200)],
    model_version: Annotated[str, Path(max_length=100)],
    name: str,
    results: Results,
    store: Store,
) -> Response:
    """The asset hrefs of result items (``stacitem.file_url``): one model's own file."""
    return _file(request, store, _one(results, scene_id, model_version, model_name), name)


OLD_FILE = (
    "The older asset hrefs, kept for items published with them: the scene's newest result of "
    "this version (latest created, ties to the smallest item id) unless model_name is given"
)


@router.get(
    "/{scene_id}/files/{model_version}/{name}",
    summary=FILE_SUMMARY + " (by version only)",
    description=OLD_FILE,
    deprecated=True,
    response_class=Response,
    responses=FILE_RESPONSES,
)
@router.head(
    "/{scene_id}/files/{model_version}/{name}",
    operation_id="head_file",
    summary=FILE_SUMMARY + " (by version only)",
    description=OLD_FILE,
    deprecated=True,
    response_class=Response,
    responses=FILE_RESPONSES,
)
def get_file(
    request: Request,
    scene_id: str,
    model_version: str,
    name: str,
    results: Results,
    store: Store,
    model_name: ModelName = None,
) -> Response:
    return _file(request, store, _one(results, scene_id, model_version, model_name), name)


@router.get(
    "/{scene_id}/cog",
    summary="The classification COG (uint8, nodata 255; HTTP Range requests)",
    response_class=Response,
    responses={200: {"content": {"image/tiff": {}}}, **RANGED},
)
@router.head(
    "/{scene_id}/cog",
    operation_id="head_cog",
    summary="The classification COG (uint8, nodata 255; HTTP Range requests)",
    response_class=Response,
    responses={200: {"content": {"image/tiff": {}}}, **RANGED},
)
def get_cog(
    request: Request,
    scene_id: str,
    results: Results,
    store: Store,
    served: Served,
    model_version: Version = None,
    model_name: ModelName = None,
) -> Response:
    record = _one(results, scene_id, model_version, model_name, served)
    return _file(request, store, record, "classification.tif")


@router.get(
    "/{scene_id}/quicklook",
    summary="A quicklook PNG of the classes, with its legend",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **RANGED},
)
@router.head(
    "/{scene_id}/quicklook",
    operation_id="head_quicklook",
    summary="A quicklook PNG of the classes, with its legend",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **RANGED},
)
def get_quicklook(
    request: Request,
    scene_id: str,
    results: Results,
    store: Store,
    served: Served,
    model_version: Version = None,
    model_name: ModelName = None,
) -> Response:
    record = _one(results, scene_id, model_version, model_name, served)
    return _file(request, store, record, "quicklook.png")
