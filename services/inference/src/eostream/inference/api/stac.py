"""A STAC API (core, collections, features, item search) over the results index, enough for
pystac-client to search classified scenes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from eostream.inference.api.deps import Results, Settings
from eostream.inference.api.params import parse_bbox, parse_datetime
from eostream.inference.api.schemas import (
    Collection,
    Collections,
    Conformance,
    ItemCollection,
    Landing,
    StacItem,
    as_stored,
)
from eostream.inference.errors import BadInputError, ResultNotFoundError
from eostream.inference.results import ResultQuery, ResultRecord
from eostream.shared.http_errors import error_responses

router = APIRouter(prefix="/stac", tags=["stac"])
STAC_VERSION = "1.0.0"
CONFORMS = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/collections",
    "https://api.stacspec.org/v1.0.0/ogcapi-features",
    "https://api.stacspec.org/v1.0.0/item-search",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
]
GEOJSON = "application/geo+json"
QUERY = error_responses(400, 422)
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
            _link("conformance", f"{root}/conformance"),
            _link("data", f"{root}/collections"),
            _link("search", f"{root}/search", GEOJSON, method="GET"),
            _link("search", f"{root}/search", GEOJSON, method="POST"),
            _link("child", f"{root}/collections/{settings.collection_id}"),
        ],
    }


@router.get("/conformance", summary="Conformance classes", response_model=Conformance)
def conformance() -> dict[str, Any]:
    return {"conformsTo": CONFORMS}


def _collection(request: Request, collection_id: str) -> dict[str, Any]:
    root = _root(request)
    return {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "id": collection_id,
        "description": "Land-cover classifications of Sentinel-2 scenes (EuroSAT classes)",
        "license": "proprietary",
        "extent": {
            "spatial": {"bbox": [[-180, -90, 180, 90]]},
            "temporal": {"interval": [[None, None]]},
        },
        "links": [
            _link("self", f"{root}/collections/{collection_id}"),
            _link("root", root),
            _link("parent", root),
            _link("items", f"{root}/collections/{collection_id}/items", GEOJSON),
        ],
    }


@router.get("/collections", summary="Collections", response_model=Collections)
def collections(request: Request, settings: Settings) -> dict[str, Any]:
    return {
        "collections": [_collection(request, settings.collection_id)],
        "links": [_link("self", f"{_root(request)}/collections")],
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
def collection(request: Request, collection_id: str, settings: Settings) -> dict[str, Any]:
    _check_collection(settings, collection_id)
    return _collection(request, collection_id)


def _item(request: Request, record: ResultRecord, collection_id: str) -> dict[str, Any]:
    root = _root(request)
    item = dict(record.item)
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
    records, total = request.state.results.search(query)
    features = [_item(request, r, collection_id) for r in records]
    links: list[dict[str, Any]] = [_link("root", _root(request))]
    if next_href and query.offset + len(records) < total:
        links.append(_link("next", next_href, GEOJSON))
    return {
        "type": "FeatureCollection",
        "features": features,
        "links": links,
        "numberMatched": total,
        "numberReturned": len(features),
    }


def _next(request: Request, offset: int) -> str:
    return str(request.url.include_query_params(token=str(offset)))


Limit = Annotated[int, Query(ge=1, le=1000)]
Token = Annotated[int, Query(ge=0, le=1_000_000, description="paging offset")]


# Items are answered as stored (as_stored), and only documented by their models.
@router.get(
    "/collections/{collection_id}/items",
    summary="Items of a collection",
    response_model=ItemCollection,
    responses=error_responses(400, 404, 422),
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
) -> Response:
    _check_collection(settings, collection_id)
    start, end = parse_datetime(datetime)
    query = ResultQuery(bbox=parse_bbox(bbox), start=start, end=end, limit=limit, offset=token)
    request.state.results = results
    return as_stored(_page(request, query, collection_id, _next(request, token + limit)))


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
    return as_stored(_item(request, records[0], collection_id))


class SearchBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    collections: list[str] | None = None
    ids: list[str] | None = Field(default=None, max_length=1000)
    bbox: list[float] | None = Field(default=None, min_length=4, max_length=6)
    datetime: str | None = None
    limit: int = Field(default=10, ge=1, le=1000)
    token: int = Field(default=0, ge=0, le=1_000_000)


def _search(
    request: Request, body: SearchBody, settings: Settings, results: Results
) -> dict[str, Any]:
    if body.collections and settings.collection_id not in body.collections:
        return {
            "type": "FeatureCollection",
            "features": [],
            "links": [],
            "numberMatched": 0,
            "numberReturned": 0,
        }
    bbox = parse_bbox(",".join(str(v) for v in body.bbox)) if body.bbox else None
    start, end = parse_datetime(body.datetime)
    query = ResultQuery(
        ids=body.ids, bbox=bbox, start=start, end=end, limit=body.limit, offset=body.token
    )
    request.state.results = results
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
    datetime: str | None = None,
    limit: Limit = 10,
    token: Token = 0,
) -> Response:
    box = parse_bbox(bbox)
    body = SearchBody(
        collections=_csv(collections),
        ids=_csv(ids),
        bbox=list(box) if box else None,
        datetime=datetime,
        limit=limit,
        token=token,
    )
    return as_stored(_search(request, body, settings, results))


@router.post(
    "/search", summary="Item search (POST)", response_model=ItemCollection, responses=QUERY
)
def search_post(
    request: Request, body: SearchBody, settings: Settings, results: Results
) -> Response:
    if body.bbox is not None and len(body.bbox) not in (4, 6):
        raise BadInputError("bbox must have 4 or 6 numbers")
    return as_stored(_search(request, body, settings, results))
