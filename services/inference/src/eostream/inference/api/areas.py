"""/results/aggregate and /results/change: class areas of an area per acquisition date, and the
transitions between two maps (``eostream.inference.area_query``). Registered before
``results.router``, whose ``/results/{scene_id}`` would take ``aggregate`` for a scene id.

Both read whole windows of result maps into memory, in the threadpool beside the model and the
consumers, so both are bounded before any map is read: the pixels one request may read
(``AREA_MAX_PIXELS``, estimated from the results' sizes and footprints: 413 with how to narrow
it) and the pixels all of them read at once (``AREA_PIXELS_IN_FLIGHT``: 503 with Retry-After):
``api/area_limits.py``."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from eostream.inference import area_query, areas, writer
from eostream.inference.api import area_limits
from eostream.inference.api.deps import Results, Served, Settings, Store
from eostream.inference.api.params import parse_bbox, parse_datetime
from eostream.inference.api.search import sort_key
from eostream.inference.errors import BadInputError
from eostream.inference.results import ResultRecord
from eostream.shared.http_errors import error_responses

router = APIRouter(prefix="/results", tags=["areas"])

Bbox = Annotated[
    str | None,
    Query(
        max_length=400,
        description="minx,miny,maxx,maxy (WGS84); one crossing the antimeridian is refused (400)",
    ),
]
Intersects = Annotated[
    str | None,
    Query(
        max_length=2000,
        description="a GeoJSON Polygon or MultiPolygon (WGS84), as JSON (at most 2000 characters)",
    ),
]
Version = Annotated[
    str | None,
    Query(
        max_length=100, description="this model version's results (default: each scene's latest)"
    ),
]
ModelNameQuery = Annotated[
    str | None,
    Query(max_length=200, description="this model's results (versions are numbered per model)"),
]


class ClassArea(BaseModel):
    pixels: int = Field(description="pixels inside the area")
    km2: float


class DateAreas(BaseModel):
    date: str = Field(description="acquisition date (UTC), YYYY-MM-DD")
    results: list[str] = Field(description="the result ids summed for this date")
    scenes: list[str]
    maps: list[str] = Field(description="the results' classification COGs")
    map_classes: list[list[str]] = Field(
        default_factory=list,
        description="each map's classes, by pixel value (its model's; the legend's values are "
        "positions in all the classes seen)",
    )
    models: list[str] = Field(
        default_factory=list,
        description="each map's model, NAME vVERSION: dates mapped by other models differ by "
        "their models too",
    )
    area_pixels: int = Field(description="pixels of the maps inside the area")
    area_km2: float
    nodata_pixels: int = Field(description="of those, pixels without a label (masked, nodata)")
    classes: dict[str, ClassArea] = Field(description="per class (and uncertain)")


class LegendEntry(BaseModel):
    value: int
    name: str
    color_hint: str


class Aggregate(BaseModel):
    """Class areas (km2) inside the area, per acquisition date, oldest first."""

    area: dict[str, Any] = Field(description="the area, a GeoJSON geometry (WGS84)")
    datetime: str | None
    model_version: str | None = Field(
        description="null: each scene's map (the served model's result, else its latest)"
    )
    models: list[str] = Field(
        default_factory=list,
        description="the models of all the maps, NAME vVERSION; more than one: a change over "
        "time may be the models', not the land's (ask for one model_name and model_version)",
    )
    legend: list[LegendEntry] = Field(description="the classes of the results, then uncertain")
    dates: list[DateAreas]


class ChangeLinks(BaseModel):
    map: str = Field(description="PNG: changed pixels in their new class's colour")
    cog: str = Field(description="COG (uint16): from * 256 + to, 65535 nodata")


class ChangeMatrix(BaseModel):
    """Transitions from map a to map b inside the area (rows: a's class, columns: b's)."""

    a: str = Field(description="result id of a")
    b: str = Field(description="result id of b")
    a_datetime: str | None
    b_datetime: str | None
    classes: list[str] = Field(description="row and column labels: classes, then uncertain")
    pixels: list[list[int]]
    km2: list[list[float]]
    changed_km2: float
    unchanged_km2: float
    compared_pixels: int = Field(description="pixels inside the area labelled in both maps")
    links: ChangeLinks


def parse_area(bbox: str | None, intersects: str | None) -> areas.Geometry:
    """The area: exactly one of bbox and intersects."""
    if (bbox is None) == (intersects is None):
        raise BadInputError("give the area: bbox=minx,miny,maxx,maxy or intersects=<GeoJSON>")
    if bbox is not None:
        box = parse_bbox(bbox)  # the bbox of every route (/results, /stac): one parser
        if box is None:
            raise BadInputError("bbox is empty: give minx,miny,maxx,maxy")
        return areas.bbox_geometry(box)
    try:
        value = json.loads(str(intersects))
    except ValueError:
        raise BadInputError("intersects is not JSON (a GeoJSON Polygon or MultiPolygon)") from None
    except RecursionError:  # thousands of nested brackets
        raise BadInputError(
            "intersects is nested too deep (a GeoJSON Polygon or MultiPolygon)"
        ) from None
    return areas.check_geometry(value)


def _reader(store: Any) -> Any:
    return lambda record: area_query.map_bytes(store, record)


@router.get(
    "/aggregate",
    summary="Class areas (km2) inside an area per acquisition date (JSON, or CSV with f=csv)",
    response_model=Aggregate,
    responses={200: {"content": {"text/csv": {}}}, **error_responses(400, 404, 413, 422, 503)},
)
def aggregate(
    request: Request,
    settings: Settings,
    results: Results,
    store: Store,
    served: Served,
    bbox: Bbox = None,
    intersects: Intersects = None,
    datetime: Annotated[str | None, Query(max_length=100, description="RFC 3339 a/b")] = None,
    classes: Annotated[
        str | None, Query(max_length=2000, description="comma-separated class names (all)")
    ] = None,
    model_name: Annotated[str | None, Query(max_length=200)] = None,
    model_version: Version = None,
    f: Annotated[Literal["json", "csv"] | None, Query(description="json or csv")] = None,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    geometry = parse_area(bbox, intersects)
    wanted = [c.strip() for c in classes.split(",") if c.strip()] if classes else []
    csv = f == "csv" or (f is None and accept is not None and "text/csv" in accept)
    return _aggregate(
        request, settings, results, store, geometry, datetime, wanted, model_name,
        model_version, csv, served,
    )  # fmt: skip


ClassName = Annotated[str, Field(max_length=100)]


class AggregateQuery(BaseModel):
    """The query of ``POST /results/aggregate``: an area too large for a URL."""

    model_config = ConfigDict(extra="forbid")

    bbox: list[float] | None = Field(default=None, min_length=4, max_length=4)
    intersects: dict[str, Any] | None = Field(
        default=None, description="a GeoJSON Polygon or MultiPolygon (WGS84)"
    )
    datetime: str | None = Field(default=None, max_length=100)
    classes: list[Annotated[str, Field(max_length=100)]] | None = Field(
        default=None, max_length=100
    )
    model_name: str | None = Field(default=None, max_length=200)
    model_version: str | None = Field(default=None, max_length=100)
    f: Literal["json", "csv"] | None = None


@router.post(
    "/aggregate",
    summary="The same, the query as a JSON body (for areas too large for a URL); a read",
    response_model=Aggregate,
    responses={200: {"content": {"text/csv": {}}}, **error_responses(400, 404, 413, 422, 503)},
)
def aggregate_post(
    request: Request,
    settings: Settings,
    results: Results,
    store: Store,
    served: Served,
    query: AggregateQuery,
) -> Response:
    if (query.bbox is None) == (query.intersects is None):
        raise BadInputError("give the area: bbox [minx, miny, maxx, maxy] or intersects <GeoJSON>")
    if query.bbox is not None:
        minx, miny, maxx, maxy = query.bbox
        if miny > maxy:
            raise BadInputError(f"bbox {query.bbox}: miny exceeds maxy")
        geometry = areas.bbox_geometry((minx, miny, maxx, maxy))
    else:
        geometry = areas.check_geometry(query.intersects)
    return _aggregate(
        request, settings, results, store, geometry, query.datetime, query.classes or [],
        query.model_name, query.model_version, query.f == "csv", served,
    )  # fmt: skip


def _aggregate(
    request: Request,
    settings: Settings,
    results: Results,
    store: Store,
    geometry: areas.Geometry,
    datetime: str | None,
    wanted: list[str],
    model_name: str | None,
    model_version: str | None,
    csv: bool,
    served: tuple[str, str] | None = None,
) -> Response:
    start, end = parse_datetime(datetime)
    records = area_query.select(
        results, geometry, start, end, model_name=model_name, model_version=model_version,
        served=served,
    )  # fmt: skip
    known = area_query.legend(records)
    area_query.check_classes(wanted, known)
    names = wanted or [*known, writer.UNCERTAIN_NAME]
    how = "give a smaller area (bbox or intersects) or a shorter datetime range"
    with area_limits.reading(request, settings, records, geometry, how):
        entries = area_query.aggregate(records, _reader(store), geometry, names)
    if csv:
        return Response(area_query.csv_lines(entries), media_type="text/csv; charset=utf-8")
    body = Aggregate(
        area=geometry,
        datetime=datetime,
        model_version=model_version,
        models=[
            f"{name} v{version}"  # v9 before v10
            for name, version in sorted(
                {(r.model_name, r.model_version) for e in entries for r in e.records},
                key=lambda m: (m[0], sort_key(m[1])),
            )
        ],
        legend=[LegendEntry(**e) for e in _legend(known)],
        dates=[
            DateAreas(
                date=e.date.isoformat(),
                results=e.results,
                scenes=e.scenes,
                maps=[
                    f"{request.base_url}results/{quote(r.scene_id, safe='')}/cog?"
                    # the model too: another model's version of the same number is another map
                    + urlencode(
                        {"model_version": r.model_version}
                        | ({"model_name": r.model_name} if r.model_name else {})
                    )
                    for r in e.records
                ],
                map_classes=[list(area_query.class_names(r)) for r in e.records],
                models=[f"{r.model_name} v{r.model_version}" for r in e.records],
                area_pixels=e.area_pixels,
                area_km2=e.area_km2,
                nodata_pixels=e.nodata_pixels,
                classes={k: ClassArea(**v) for k, v in e.classes.items()},
            )
            for e in entries
        ],
    )
    return Response(body.model_dump_json(), media_type="application/json")


def _legend(names: tuple[str, ...]) -> list[dict[str, Any]]:
    """The legend by the class names the dates' ``classes`` use (the model's own, not the
    STAC item's names made safe for the classification extension)."""
    return [
        {"value": e["value"], "name": e.get("title", e["name"]), "color_hint": e["color_hint"]}
        for e in writer.legend(names)
    ]


@contextlib.contextmanager
def _pair(
    request: Request,
    settings: Settings,
    results: Results,
    store: Store,
    a: str,
    b: str,
    bbox: str | None,
    intersects: str | None,
    model_version: str | None,
    model_name: str | None = None,
    served: tuple[str, str] | None = None,
) -> Iterator[tuple[ResultRecord, ResultRecord, area_query.Change]]:
    """The two results and their change, within the budget until the block ends (the map and
    the COG are drawn from the maps read)."""
    geometry = parse_area(bbox, intersects) if bbox is not None or intersects is not None else None
    which = {"model_version": model_version, "model_name": model_name}
    first = area_query.resolve(results, a, geometry, served=served, **which)
    second = area_query.resolve(results, b, geometry, served=served, **which)
    how = (
        "give an area (bbox or intersects) around what you compare"
        if geometry is None
        else "give a smaller area (bbox or intersects)"
    )
    with area_limits.reading(request, settings, [first, second], geometry, how):
        yield first, second, area_query.change(first, second, _reader(store), geometry)


Ref = Annotated[
    str, Query(min_length=1, max_length=600, description="a result id, or a date YYYY-MM-DD")
]
OptionalArea = "the area (optional with result ids; needed with dates to pick the scene)"


@router.get(
    "/change",
    summary="Transition matrix between two maps of one grid (result ids or dates) in an area",
    response_model=ChangeMatrix,
    responses=error_responses(400, 404, 413, 422, 503),
)
def change(
    request: Request,
    settings: Settings,
    results: Results,
    store: Store,
    served: Served,
    a: Ref,
    b: Ref,
    bbox: Annotated[str | None, Query(max_length=400, description=OptionalArea)] = None,
    intersects: Intersects = None,
    model_version: Version = None,
    model_name: ModelNameQuery = None,
) -> ChangeMatrix:
    which = (model_version, model_name, served)
    with _pair(request, settings, results, store, a, b, bbox, intersects, *which) as (
        first,
        second,
        found,
    ):
        body = found.body()
    params = {"a": first.id, "b": second.id}
    params |= {k: v for k, v in (("bbox", bbox), ("intersects", intersects)) if v is not None}
    link = f"{request.base_url}results/change/map?"
    return ChangeMatrix(
        a=first.id,
        b=second.id,
        a_datetime=first.datetime.isoformat() if first.datetime else None,
        b_datetime=second.datetime.isoformat() if second.datetime else None,
        links=ChangeLinks(
            map=link + urlencode(params), cog=link + urlencode(params | {"f": "tif"})
        ),
        **body,
    )


@router.get(
    "/change/map",
    summary="Change map of two maps: PNG (changed pixels in the new class's colour) or COG",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}, "image/tiff": {}}},
        **error_responses(400, 404, 413, 422, 503),
    },
)
def change_map(
    request: Request,
    settings: Settings,
    results: Results,
    store: Store,
    served: Served,
    a: Ref,
    b: Ref,
    bbox: Annotated[str | None, Query(max_length=400, description=OptionalArea)] = None,
    intersects: Intersects = None,
    model_version: Version = None,
    model_name: ModelNameQuery = None,
    f: Annotated[Literal["png", "tif"], Query(description="png or tif (COG)")] = "png",
) -> Response:
    which = (model_version, model_name, served)
    with _pair(request, settings, results, store, a, b, bbox, intersects, *which) as (
        _first,
        _second,
        found,
    ):
        if f == "tif":
            return Response(
                area_query.change_cog(found),
                media_type="image/tiff; application=geotiff; profile=cloud-optimized",
            )
        return Response(area_query.change_png(found), media_type="image/png")
