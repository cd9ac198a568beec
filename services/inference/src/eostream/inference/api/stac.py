"""A STAC API (core, collections, features, item search) over the results index, enough for
pystac-client to search classified scenes (how a search is answered: :mod:`.search`)."""

from __future__ import annotations

from typing import Annotated, Any

import shapely
import shapely.geometry
from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from eostream.inference.api import filters
from eostream.inference.api.deps import Results, Settings
from eostream.inference.api.filters import FILTER_CONFORMS, QUERYABLES_REL, Filter
from eostream.inference.api.params import parse_bbox
from eostream.inference.api.schemas import (
    Collection,
    Collections,
    Conformance,
    ItemCollection,
    Landing,
    StacItem,
    as_stored,
)
from eostream.inference.api.search import search_records
from eostream.inference.api.search_params import (
    parse_fields,
    parse_intersects,
    parse_sortby,
    parse_when,
    pick_fields,
)
from eostream.inference.errors import BadInputError, ResultNotFoundError
from eostream.inference.results import ResultQuery, ResultRecord, class_names, extent
from eostream.inference.stacitem import public_item
from eostream.shared.http_errors import error_responses

router = APIRouter(prefix="/stac", tags=["stac"])
STAC_VERSION = "1.1.0"  # the version of the result items
CONFORMS = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/collections",
    "https://api.stacspec.org/v1.0.0/ogcapi-features",
    "https://api.stacspec.org/v1.0.0/item-search",
    "https://api.stacspec.org/v1.0.0/item-search#sort",
    "https://api.stacspec.org/v1.0.0/item-search#fields",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    *FILTER_CONFORMS,
]
GEOJSON = "application/geo+json"
#: FastAPI answers /openapi.json as application/json, and the link's type must match it
OPENAPI = "application/json"
MAX_LIMIT = 1000  # a larger limit is capped to this (the spec lets a server cap it)
#: extensions /stac does not implement: refused with 400 rather than silently ignored
UNSUPPORTED = ("query",)
QUERY = error_responses(400, 413, 422)
LOOKUP = error_responses(404, 422)


def _root(request: Request) -> str:
    return f"{request.base_url}stac"


def _link(rel: str, href: str, media: str = "application/json", **extra: Any) -> dict[str, Any]:
    return {"rel": rel, "href": href, "type": media, **extra}


@router.get("", summary="STAC landing page", response_model=Landing)
def landing(request: Request, settings: Settings) -> dict[str, Any]:
    root = _root(request)
    return {
        "type": "Catalog",
        "stac_version": STAC_VERSION,
        "id": "eostream-inference",
        "title": "eostream classification results",
        "description": "Classified Sentinel-2 scenes",
        "conformsTo": CONFORMS,
        "links": [
            _link("self", root),
            _link("root", root),
            _link("service-desc", f"{request.base_url}openapi.json", OPENAPI),
            _link("service-doc", f"{request.base_url}docs", "text/html"),
            _link("conformance", f"{root}/conformance"),
            _link("data", f"{root}/collections"),
            _link("search", f"{root}/search", GEOJSON, method="GET"),
            _link("search", f"{root}/search", GEOJSON, method="POST"),
            _link("child", f"{root}/collections/{settings.collection_id}"),
            _link(QUERYABLES_REL, f"{root}/queryables", filters.SCHEMA_JSON),
        ],
    }


@router.get("/conformance", summary="Conformance classes", response_model=Conformance)
def conformance() -> dict[str, Any]:
    return {"conformsTo": CONFORMS}


def _collection(request: Request, collection_id: str, results: Results) -> dict[str, Any]:
    root = _root(request)
    box, times = extent(results)  # of the results there are (the whole Earth before any)
    return {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "id": collection_id,
        "description": "Land-cover maps of Sentinel-2 scenes, each in the classes of the model "
        "that made it (eostream:model_name, eostream:model_version)",
        "license": "proprietary",
        "extent": {
            "spatial": {"bbox": [box or [-180, -90, 180, 90]]},
            "temporal": {"interval": [times]},
        },
        "links": [
            _link("self", f"{root}/collections/{collection_id}"),
            _link("root", root),
            _link("parent", root),
            _link("items", f"{root}/collections/{collection_id}/items", GEOJSON),
            _link(
                QUERYABLES_REL,
                f"{root}/collections/{collection_id}/queryables",
                filters.SCHEMA_JSON,
            ),
        ],
    }


@router.get("/collections", summary="Collections", response_model=Collections)
def collections(request: Request, settings: Settings, results: Results) -> dict[str, Any]:
    return {
        "collections": [_collection(request, settings.collection_id, results)],
        "links": [
            _link("self", f"{_root(request)}/collections"),
            _link("root", _root(request)),
        ],
    }


def _check_collection(settings: Settings, collection_id: str) -> None:
    if collection_id != settings.collection_id:
        raise ResultNotFoundError(f"no collection {collection_id!r}")


@router.get(
    "/collections/{collection_id}",
    summary="One collection",
    response_model=Collection,
    responses=LOOKUP,
)
def collection(
    request: Request, collection_id: str, settings: Settings, results: Results
) -> dict[str, Any]:
    _check_collection(settings, collection_id)
    return _collection(request, collection_id, results)


def public_base(request: Request, settings: Settings) -> str:
    """The service's URL as clients reach it: the public URL setting, or the request's."""
    return settings.public_url or str(request.base_url)


def served_item(request: Request, settings: Settings, record: ResultRecord) -> dict[str, Any]:
    """A result item as ``/stac/collections/{collection}/items/{id}`` serves it (asset hrefs of
    this service, its STAC links), for the other routes that answer with one."""
    request.state.public_base = public_base(request, settings)
    return _item(request, record, settings.collection_id)


def _item(request: Request, record: ResultRecord, collection_id: str) -> dict[str, Any]:
    root = _root(request)
    item = public_item(record.item, request.state.public_base)
    item["collection"] = collection_id
    kept = [
        link
        for link in item.get("links", [])
        if link.get("rel") not in ("self", "root", "parent", "collection")
    ]
    item["links"] = [
        *kept,
        _link("self", f"{root}/collections/{collection_id}/items/{record.id}", GEOJSON),
        _link("collection", f"{root}/collections/{collection_id}"),
        _link("parent", f"{root}/collections/{collection_id}"),
        _link("root", root),
    ]
    return item


def _page(
    request: Request, query: ResultQuery, collection_id: str, next_href: str | None
) -> dict[str, Any]:
    # results is set by the caller through request.state to keep this function pure of deps
    state = request.state

    def serve(record: ResultRecord) -> dict[str, Any]:
        return _item(request, record, collection_id)

    records, total = search_records(
        state.results, query, state.intersects, state.sortby, state.filter, serve,
        max_candidates=state.max_candidates,
    )  # fmt: skip
    features = [serve(r) for r in records]
    if state.fields is not None:
        features = [pick_fields(f, *state.fields) for f in features]
    links: list[dict[str, Any]] = [
        _link("root", _root(request)),
        _link("self", str(request.url), GEOJSON),
    ]
    if next_href and query.offset + len(records) < total:
        links.append(_link("next", next_href, GEOJSON))
    return {
        "type": "FeatureCollection",
        "features": features,
        "links": links,
        "numberMatched": total,
        "numberReturned": len(features),
    }


def _limit(limit: int) -> int:
    if limit < 1:
        raise BadInputError(f"limit must be at least 1, not {limit}")
    return min(limit, MAX_LIMIT)


def _sortable(
    keys: list[tuple[str, bool]] | None, results: Results
) -> list[tuple[str, bool]] | None:
    """``keys``, each a queryable (``/stac/queryables``: a misspelt field sorted nothing and
    answered 200); the footprint is not sortable."""
    if not keys:  # most searches: no index query for the class list
        return keys
    known = set(filters.known_properties(class_names(results))) - {"geometry"}
    for name, _ in keys or []:
        if name.removeprefix("properties.") not in known:
            raise BadInputError(
                f"sortby {name!r} is not a queryable property (see /stac/queryables)"
            )
    return keys


def _refuse_unsupported(names: Any) -> None:
    asked = [n for n in UNSUPPORTED if n in names]
    if asked:
        raise BadInputError(f"not supported by this STAC API: {', '.join(asked)}")


def _geojson(document: dict[str, Any]) -> Response:
    return Response(as_stored(document).body, media_type=GEOJSON)


def _next(request: Request, offset: int) -> str:
    return str(request.url.include_query_params(token=str(offset)))


Limit = Annotated[int, Query(description=f"page size, capped to {MAX_LIMIT}")]
Token = Annotated[int, Query(ge=0, le=1_000_000, description="paging offset")]
CqlFilter = Annotated[
    str | None,
    Query(
        alias="filter",
        max_length=filters.MAX_GET_FILTER_CHARS,
        description="CQL2 filter (cql2-text, or cql2-json as text); see /stac/queryables. "
        "A longer one goes in a POST body",
    ),
]
FilterLang = Annotated[str | None, Query(alias="filter-lang", description="cql2-text | cql2-json")]
FilterCrs = Annotated[str | None, Query(alias="filter-crs", description=filters.CRS84)]


def _filter(
    request: Request, results: Results, value: Any, lang: str | None, crs: str | None
) -> Filter | None:
    if value is None or value == "":
        if lang not in (None, "", *filters.LANGS):
            raise BadInputError(f"filter-lang {lang!r} is not one of {', '.join(filters.LANGS)}")
        return None
    return filters.parse_filter(value, lang or None, crs, class_names(results))


def _prepare(request: Request, settings: Settings, results: Results) -> None:
    request.state.results = results
    request.state.public_base = public_base(request, settings)
    request.state.intersects = request.state.filter = None
    request.state.sortby = request.state.fields = None
    request.state.max_candidates = settings.stac_max_candidates


# Items are answered as stored (as_stored), and only documented by their models.
@router.get(
    "/collections/{collection_id}/items",
    summary="Items of a collection",
    response_model=ItemCollection,
    responses=error_responses(400, 404, 413, 422),
)
def items(
    request: Request,
    collection_id: str,
    settings: Settings,
    results: Results,
    bbox: str | None = None,
    datetime: str | None = None,
    limit: Limit = 10,
    token: Token = 0,
    filter_: CqlFilter = None,
    filter_lang: FilterLang = None,
    filter_crs: FilterCrs = None,
) -> Response:
    _check_collection(settings, collection_id)
    _refuse_unsupported(request.query_params)
    start, end = parse_when(datetime)
    limit = _limit(limit)
    query = ResultQuery(bbox=parse_bbox(bbox), start=start, end=end, limit=limit, offset=token)
    _prepare(request, settings, results)
    request.state.filter = _filter(request, results, filter_, filter_lang, filter_crs)
    return _geojson(_page(request, query, collection_id, _next(request, token + limit)))


@router.get(
    "/collections/{collection_id}/items/{item_id}",
    summary="One item",
    response_model=StacItem,
    responses=LOOKUP,
)
def item(
    request: Request, collection_id: str, item_id: str, settings: Settings, results: Results
) -> Response:
    _check_collection(settings, collection_id)
    records, _ = results.search(ResultQuery(ids=[item_id], limit=1))
    if not records:
        raise ResultNotFoundError(f"no item {item_id!r} in {collection_id}")
    _prepare(request, settings, results)
    return _geojson(_item(request, records[0], collection_id))


class SearchBody(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    collections: list[str] | str | None = None  # a string: one id or a comma-separated list
    ids: list[str] | None = Field(default=None, max_length=1000)
    bbox: list[float] | None = Field(default=None, min_length=4, max_length=6)
    intersects: dict[str, Any] | None = None
    datetime: str | None = None
    sortby: list[dict[str, Any]] | None = None
    fields: dict[str, Any] | None = None
    limit: int = Field(default=10, ge=1)
    token: int = Field(default=0, ge=0, le=1_000_000)
    filter: Any = None  # CQL2 JSON (an object) or text; checked by filters.parse_filter
    filter_lang: str | None = Field(default=None, alias="filter-lang")
    filter_crs: str | None = Field(default=None, alias="filter-crs")


def _search(
    request: Request, body: SearchBody, settings: Settings, results: Results
) -> dict[str, Any]:
    if isinstance(body.collections, str):
        body.collections = _csv(body.collections)
    if body.collections and settings.collection_id not in body.collections:
        return {
            "type": "FeatureCollection",
            "features": [],
            "links": [],
            "numberMatched": 0,
            "numberReturned": 0,
        }
    _refuse_unsupported(body.model_extra or {})
    if body.bbox is not None and body.intersects is not None:
        raise BadInputError("bbox and intersects must not both be given")
    bbox = parse_bbox(",".join(str(v) for v in body.bbox)) if body.bbox else None
    start, end = parse_when(body.datetime)
    body.limit = _limit(body.limit)
    query = ResultQuery(
        ids=body.ids, bbox=bbox, start=start, end=end, limit=body.limit, offset=body.token
    )
    _prepare(request, settings, results)
    request.state.filter = _filter(request, results, body.filter, body.filter_lang, body.filter_crs)
    request.state.intersects = parse_intersects(body.intersects)
    request.state.sortby = _sortable(parse_sortby(body.sortby), results)
    request.state.fields = parse_fields(body.fields)
    page = _page(request, query, settings.collection_id, None)
    if body.token + page["numberReturned"] < page["numberMatched"]:
        if request.method == "GET":
            page["links"].append(_link("next", _next(request, body.token + body.limit), GEOJSON))
        else:
            page["links"].append(
                _link(
                    "next",
                    f"{_root(request)}/search",
                    GEOJSON,
                    method="POST",
                    merge=True,
                    body={"token": body.token + body.limit},
                )
            )
    return page


def _search_body(**fields: Any) -> SearchBody:
    """The POST body a GET search's parameters make; 400 naming what is wrong (``ids``: at
    most 1000), as the POST body's validation would."""
    try:
        return SearchBody(**fields)
    except ValidationError as exc:
        parts = [
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)[:5]
        ]
        raise BadInputError("; ".join(parts)) from None


def _csv(text: str | None) -> list[str] | None:
    return [p for p in text.split(",") if p] if text else None


@router.get("/search", summary="Item search (GET)", response_model=ItemCollection, responses=QUERY)
def search_get(
    request: Request,
    settings: Settings,
    results: Results,
    collections: str | None = None,
    ids: str | None = None,
    bbox: str | None = None,
    intersects: str | None = None,
    datetime: str | None = None,
    sortby: str | None = None,
    fields: str | None = None,
    limit: Limit = 10,
    token: Token = 0,
    filter_: CqlFilter = None,
    filter_lang: FilterLang = None,
    filter_crs: FilterCrs = None,
) -> Response:
    _refuse_unsupported(request.query_params)
    keys, picked = parse_sortby(sortby), parse_fields(fields)
    box = parse_bbox(bbox)
    area = parse_intersects(intersects)
    body = _search_body(
        collections=_csv(collections),
        ids=_csv(ids),
        bbox=list(box) if box else None,
        intersects=shapely.geometry.mapping(area) if area is not None else None,
        datetime=datetime,
        sortby=[{"field": k, "direction": "desc" if d else "asc"} for k, d in keys or []],
        fields={"include": picked[0], "exclude": picked[1]} if picked else None,
        limit=_limit(limit),
        token=token,
        filter=filter_,
        **{"filter-lang": filter_lang, "filter-crs": filter_crs},
    )
    return _geojson(_search(request, body, settings, results))


@router.post(
    "/search", summary="Item search (POST)", response_model=ItemCollection, responses=QUERY
)
def search_post(
    request: Request, body: SearchBody, settings: Settings, results: Results
) -> Response:
    if body.bbox is not None and len(body.bbox) not in (4, 6):
        raise BadInputError("bbox must have 4 or 6 numbers")
    if "fields" in body.model_fields_set and body.fields is None:
        raise BadInputError("fields must be an object {include, exclude}, not null")
    return _geojson(_search(request, body, settings, results))


router.include_router(filters.router)
