"""The Filter extension of /stac: CQL2 ``filter`` (cql2-text and cql2-json, parsed by the
``cql2`` package) on item searches, and the queryables that say what a filter may name.

A filter is checked before any item is read: its syntax, its operators and every property it
names (a class share of a class no result has, a property no result carries) answer 400 with a
message naming the queryables; a valid filter is evaluated on each candidate item as /stac
answers it (collection set, per-class share properties flattened)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import cql2
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from eostream.inference.api.deps import Results, Settings
from eostream.inference.errors import BadInputError, ResultNotFoundError
from eostream.inference.results import class_names
from eostream.inference.stacitem import SHARE_PREFIX
from eostream.shared.http_errors import error_responses

router = APIRouter()

FILTER_CONFORMS = [
    "https://api.stacspec.org/v1.0.0-rc.2/item-search#filter",
    "https://api.stacspec.org/v1.0.0-rc.2/ogcapi-features#filter",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/filter",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/features-filter",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-text",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-json",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-cql2",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-spatial-operators",
]
QUERYABLES_REL = "http://www.opengis.net/def/rel/ogc/1.0/queryables"
SCHEMA_JSON = "application/schema+json"
CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
LANGS = ("cql2-text", "cql2-json")
MAX_FILTER_CHARS = 20_000
#: in a GET the filter is part of the URL, which the server reads up to 16 KiB (h11's limit):
#: 1000 characters percent-encode to at most 9 KB
MAX_GET_FILTER_CHARS = 1000

#: the operators the ``cql2`` package evaluates (CQL2 1.0); any other is refused with 400
OPERATORS = frozenset(
    (
        *("and", "or", "not", "=", "<>", "<", "<=", ">", ">=", "like", "between", "in"),
        *("isNull", "casei", "accenti"),
        *("s_intersects", "s_equals", "s_disjoint", "s_touches", "s_within"),
        *("s_overlaps", "s_crosses", "s_contains"),
        *("t_after", "t_before", "t_contains", "t_disjoint", "t_during", "t_equals"),
        *("t_finishedby", "t_finishes", "t_intersects", "t_meets", "t_metby"),
        *("t_overlappedby", "t_overlaps", "t_startedby", "t_starts"),
        *("a_equals", "a_contains", "a_containedby", "a_overlaps"),
    )
)

#: the properties every result item can be filtered on, besides one share per class
BASE_QUERYABLES: dict[str, dict[str, Any]] = {
    "id": {"title": "Item ID", "type": "string"},
    "collection": {"title": "Collection ID", "type": "string"},
    "geometry": {
        "title": "Footprint",
        "$ref": "https://geojson.org/schema/Geometry.json",
    },
    "datetime": {"title": "Acquisition time", "type": "string", "format": "date-time"},
    "eostream:scene_id": {"title": "Source scene", "type": "string"},
    "eostream:model_name": {"title": "Model name", "type": "string"},
    "eostream:model_version": {"title": "Model version", "type": "string"},
    "eostream:model_alias": {"title": "Model alias when classified", "type": ["string", "null"]},
    "eostream:mean_confidence": {
        "title": "Mean top-class probability of the valid pixels",
        "type": "number",
        "minimum": 0,
        "maximum": 1,
    },
    "eostream:uncertain_share": {
        "title": "Share of the valid pixels labelled uncertain",
        "type": "number",
        "minimum": 0,
        "maximum": 1,
    },
    "eo:cloud_cover": {
        "title": "Cloud cover of the source scene (%)",
        "type": "number",
        "minimum": 0,
        "maximum": 100,
    },
}


def known_properties(classes: list[str]) -> dict[str, dict[str, Any]]:
    shares = {
        f"{SHARE_PREFIX}{name}": {
            "title": f"Share of the valid pixels classified {name}",
            "type": "number",
            "minimum": 0,
            "maximum": 1,
        }
        for name in classes
    }
    return {**BASE_QUERYABLES, **shares}


def queryables_document(url: str, classes: list[str]) -> dict[str, Any]:
    """The queryables JSON schema (OGC API - Features - Part 3) at ``url``."""
    return {
        "$schema": "https://json-schema.org/draft/2019-09/schema",
        "$id": url,
        "type": "object",
        "title": "Queryables of eostream's classification results",
        "properties": known_properties(classes),
        "additionalProperties": False,
    }


@dataclass(frozen=True)
class Filter:
    """A parsed CQL2 filter and the item properties it may name."""

    expr: cql2.Expr
    properties: frozenset[str]

    def matches(self, item: dict[str, Any]) -> bool:
        """Whether ``item`` is selected. A property the item lacks is null: a comparison with
        it selects nothing (as in SQL), ``IS NULL`` selects it."""
        props = dict(item.get("properties") or {})
        for name in self.properties:
            props.setdefault(name, None)
        try:
            return bool(self.expr.matches({**item, "properties": props}))
        except Exception:  # cql2 cannot reduce a comparison with null or of mixed types
            return False


def _instant(text: Any, what: str) -> None:
    """A CQL2 TIMESTAMP (RFC 3339) or DATE literal, or ".." in an INTERVAL; BadInputError else
    (``TIMESTAMP('abc')`` matched nothing and answered 200)."""
    try:
        if what == "date":
            date.fromisoformat(str(text))
        elif text != "..":
            datetime.fromisoformat(str(text).replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BadInputError(f"filter: {text!r} is not a {what} (RFC 3339)") from None


def _names(node: Any, props: set[str], ops: set[str]) -> None:
    if isinstance(node, dict):
        if isinstance(node.get("property"), str):
            props.add(node["property"])
        if isinstance(node.get("op"), str):
            ops.add(node["op"])
        if "timestamp" in node:
            _instant(node["timestamp"], "timestamp")
        if "date" in node:
            _instant(node["date"], "date")
        if isinstance(node.get("interval"), list):
            for end in node["interval"]:
                if isinstance(end, str):
                    _instant(end, "timestamp")
        for value in node.values():
            _names(value, props, ops)
    elif isinstance(node, list):
        for value in node:
            _names(value, props, ops)


def parse_filter(
    value: Any, lang: str | None, crs: str | None, classes: list[str]
) -> Filter | None:
    """``filter`` (a CQL2 text, or a CQL2 JSON object or its text) checked against the
    queryables of ``classes``; None when there is no filter; BadInputError otherwise."""
    if value is None or value == "":
        return None
    if crs not in (None, "", CRS84):
        raise BadInputError(f"filter-crs {crs!r} is not supported: only {CRS84}")
    if lang is None:
        lang = "cql2-text" if isinstance(value, str) else "cql2-json"
    if lang not in LANGS:
        raise BadInputError(f"filter-lang {lang!r} is not one of {', '.join(LANGS)}")
    if isinstance(value, str) and len(value) > MAX_FILTER_CHARS:
        raise BadInputError(f"filter is longer than {MAX_FILTER_CHARS} characters")
    if lang == "cql2-json" and isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise BadInputError(f"filter is not CQL2 JSON: {exc}") from None
        except RecursionError:
            raise BadInputError("filter is nested too deeply") from None
    if lang == "cql2-text" and not isinstance(value, str):
        raise BadInputError("filter-lang cql2-text needs the filter as a string")
    if lang == "cql2-json" and not isinstance(value, dict):
        raise BadInputError("a cql2-json filter must be a JSON object")
    try:
        expr = cql2.Expr(value)
        tree = expr.to_json()
    except Exception as exc:  # cql2 raises a bare Exception with the parser's report
        detail = " ".join(str(exc).split())
        raise BadInputError(f"filter is not valid {lang}: {detail[:300]}") from None
    props: set[str] = set()
    ops: set[str] = set()
    try:
        _names(tree, props, ops)
    except RecursionError:
        raise BadInputError("filter is nested too deeply") from None
    unknown_ops = sorted(ops - OPERATORS)
    if unknown_ops:
        raise BadInputError(f"filter uses unknown CQL2 operators: {', '.join(unknown_ops)}")
    known = known_properties(classes)
    unknown = sorted(props - set(known))
    if unknown:
        classes_named = [
            p.removeprefix(SHARE_PREFIX) for p in unknown if p.startswith(SHARE_PREFIX)
        ]
        hint = f" (no result has the classes {', '.join(classes_named)})" if classes_named else ""
        raise BadInputError(
            f"filter names properties that are not queryable: {', '.join(unknown)}{hint}; "
            "GET /stac/queryables lists them"
        )
    names = frozenset(p for p in props if p not in ("id", "collection", "geometry") and p in known)
    return Filter(expr, names)


class Queryables(BaseModel):
    """A queryables document: the JSON schema of what a CQL2 filter may name."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    schema_: str = Field(alias="$schema")
    id: str = Field(alias="$id")
    type: str = "object"
    title: str | None = None
    properties: dict[str, dict[str, Any]]
    additionalProperties: bool = False


class SchemaJsonResponse(JSONResponse):
    media_type = SCHEMA_JSON


#: the answer's media type is JSON schema's; its body is documented by :class:`Queryables`
SCHEMA_200: dict[int | str, dict[str, Any]] = {
    200: {"content": {SCHEMA_JSON: {"schema": {"$ref": "#/components/schemas/Queryables"}}}}
}


def _schema(document: dict[str, Any]) -> Response:
    return SchemaJsonResponse(document)


@router.get(
    "/queryables",
    summary="Properties a CQL2 filter may name (JSON schema)",
    response_model=Queryables,
    responses={**SCHEMA_200, **error_responses(422)},
)
def queryables(request: Request, results: Results) -> Response:
    url = str(request.url.remove_query_params(list(request.query_params)))
    return _schema(queryables_document(url, class_names(results)))


@router.get(
    "/collections/{collection_id}/queryables",
    summary="Properties a CQL2 filter on a collection's items may name (JSON schema)",
    response_model=Queryables,
    responses={**SCHEMA_200, **error_responses(404, 422)},
)
def collection_queryables(
    request: Request, collection_id: str, settings: Settings, results: Results
) -> Response:
    if collection_id != settings.collection_id:
        raise ResultNotFoundError(f"no collection {collection_id!r}")
    url = str(request.url.remove_query_params(list(request.query_params)))
    return _schema(queryables_document(url, class_names(results)))
