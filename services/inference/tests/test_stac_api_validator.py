"""stac-api-validator (issue #18) against the embedded STAC API at /stac: the real inference app
over real HTTP (uvicorn), a results index holding a real classified Boadella scene, zero errors
for the conformance classes /stac declares."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from eostream.inference.api.app import create_app
from eostream.inference.service import InferenceService
from eostream.inference.settings import InferenceSettings
from eostream.shared.events import ModelPromoted
from eostream.shared.ops import OpsServer

log = logging.getLogger(__name__)

#: validator conformance names for the classes /stac declares
DECLARED = {
    "https://api.stacspec.org/v1.0.0/core": "core",
    "https://api.stacspec.org/v1.0.0/ogcapi-features": "features",
    "https://api.stacspec.org/v1.0.0/item-search": "item-search",
    "https://api.stacspec.org/v1.0.0/item-search#sort": "item-search#sort",
    "https://api.stacspec.org/v1.0.0/item-search#fields": "item-search#fields",
    "https://api.stacspec.org/v1.0.0-rc.2/item-search#filter": "item-search#filter",
    "https://api.stacspec.org/v1.0.0-rc.2/ogcapi-features#filter": "features#filter",
}


#: the validator fetches STAC's JSON schemas from schemas.stacspec.org, unreachable offline;
#: those checks are done instead with pystac's bundled schemas (``offline_schema_check``)
CONFIDENCE = "eostream:mean_confidence"  # the nested property of the Fields checks
OFFLINE = ("schemas.stacspec.org", "stac-extensions.github.io")


def validate(
    root_url: str, collection: str, geometry: dict[str, object], ccs: list[str]
) -> tuple[list[str], list[str]]:
    from stac_api_validator.validations import QueryConfig, validate_api

    warnings, errors = validate_api(
        root_url=root_url,
        ccs_to_validate=ccs,
        collection=collection,
        geometry=json.dumps(geometry),
        auth_bearer_token=None,
        auth_query_parameter=None,
        fields_nested_property=f"properties.{CONFIDENCE}",
        validate_pagination=True,
        query_config=QueryConfig(*[None] * 13),
        transaction_collection=None,
        headers=None,
        open_assets_urls=False,
    )
    return list(warnings), list(errors)


def offline_schema_check(documents: list[dict[str, object]]) -> None:
    """The JSON-schema checks the validator could not fetch, with pystac's local schemas."""
    import pystac

    for document in documents:
        pystac.validation.validate_dict(document, extensions=[])  # core schema


async def check_search_parameters(stac: str, item: dict[str, Any]) -> None:
    """What the validator checks loosely: intersects filters, limits clamp, bad input is 400
    with the project's error body, unsupported extensions are refused, CORS for reads."""
    far = {"type": "Point", "coordinates": [100.0, 0.0]}
    async with httpx.AsyncClient() as client:
        near = await client.get(
            f"{stac}/search", params={"intersects": json.dumps(item["geometry"])}
        )
        assert near.headers["content-type"] == "application/geo+json"
        assert {f["id"] for f in near.json()["features"]} >= {item["id"]}
        assert near.json()["numberMatched"] == 2  # the two Boadella scenes share a footprint
        away = await client.post(f"{stac}/search", json={"intersects": far})
        assert away.status_code == 200 and away.json()["features"] == []
        capped = await client.get(f"{stac}/search", params={"limit": 5000})
        assert capped.status_code == 200 and capped.json()["numberReturned"] == 2
        for bad in (
            client.get(f"{stac}/search", params={"limit": -1}),
            client.get(f"{stac}/search", params={"limit": "many"}),
            client.post(f"{stac}/search", json={"bbox": [0, 0]}),
            client.post(f"{stac}/search", json={"intersects": {"type": "Polygon"}}),
            client.get(f"{stac}/search", params={"datetime": "1985-04-12"}),
            client.get(f"{stac}/search", params={"filter": "confidence > 0.9"}),
            client.post(f"{stac}/search", json={"sortby": [{"field": "id", "direction": "up"}]}),
            client.post(f"{stac}/search", json={"fields": {"include": "id"}}),
        ):
            answer = await bad
            assert answer.status_code == 400, answer.text
            assert set(answer.json()) == {"code", "description"}
        for order, reverse in (("-properties.datetime", True), ("+datetime", False)):
            page = (await client.get(f"{stac}/search", params={"sortby": order})).json()
            times = [f["properties"]["datetime"] for f in page["features"]]
            assert times == sorted(times, reverse=reverse) and len(set(times)) == 2
        body = {"sortby": [{"field": "id", "direction": "desc"}], "fields": {"exclude": ["assets"]}}
        page = (await client.post(f"{stac}/search", json=body)).json()
        ids = [f["id"] for f in page["features"]]
        assert ids == sorted(ids, reverse=True) and all("assets" not in f for f in page["features"])
        slim = await client.get(f"{stac}/search", params={"fields": "properties.datetime"})
        for feature in slim.json()["features"]:
            assert set(feature) == {"type", "stac_version", "id", "links", "properties"}
            assert set(feature["properties"]) == {"datetime"}
        cors = await client.get(f"{stac}/search", headers={"Origin": "https://example.org"})
        assert cors.headers["access-control-allow-origin"] == "*"


async def test_stac_api_validator_finds_no_error(
    settings: InferenceSettings,
    service: InferenceService,
    make_model: Callable[..., ModelPromoted],
    boadella_item: Callable[[str], Path],
) -> None:
    await asyncio.to_thread(service.deployment.deploy, make_model("1"))
    for date in ("2020-06-21", "2020-09-14"):  # two items, so that paging has a next page
        classified = await asyncio.to_thread(
            service.pipeline.classify_href, str(boadella_item(date))
        )
        assert not classified.skipped
    server = OpsServer(create_app(settings, service), "127.0.0.1", 0)
    await server.start()
    try:
        async with httpx.AsyncClient() as client:
            landing = (await client.get(f"{server.url}/stac")).json()
            item = (await client.get(f"{server.url}/stac/search")).json()["features"][0]
            collection = (
                await client.get(f"{server.url}/stac/collections/{settings.collection_id}")
            ).json()
        assert CONFIDENCE in item["properties"]
        ccs = [DECLARED[c] for c in landing["conformsTo"] if c in DECLARED]
        assert set(ccs) == set(DECLARED.values())
        warnings, errors = await asyncio.to_thread(
            validate, f"{server.url}/stac", settings.collection_id, item["geometry"], ccs
        )
        unreachable = [e for e in errors if any(host in e for host in OFFLINE)]
        errors = [e for e in errors if e not in unreachable]
        log.warning(
            "stac-api-validator on /stac (%s): %d errors, %d warnings, %d schema fetches offline",
            ", ".join(ccs), len(errors), len(warnings), len(unreachable),
        )  # fmt: skip
        assert not errors, "\n".join(errors)
        await asyncio.to_thread(offline_schema_check, [item, collection])
        await check_search_parameters(f"{server.url}/stac", item)
    finally:
        await server.stop()
