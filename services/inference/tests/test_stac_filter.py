"""CQL2 ``filter`` on /stac (issue #18): real classified Boadella scenes (two dates, two model
versions) behind the real app on uvicorn; pystac-client's filtered searches return only the
matching items (what should match is computed here from each item's own class shares); paging
with a filter; bad input (invalid CQL2, unknown property or class, non-GeoJSON geometry, a bbox
across the antimeridian) answers 400 with a message and disturbs nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pystac_client import Client

from eostream.inference.api.app import create_app
from eostream.inference.service import InferenceService
from eostream.inference.settings import InferenceSettings
from eostream.shared.events import ModelPromoted
from eostream.shared.ops import OpsServer

SHARE = "eostream:share:"


@pytest.fixture
async def stac(
    settings: InferenceSettings,
    service: InferenceService,
    make_model: Callable[..., ModelPromoted],
    boadella_item: Callable[[str], Path],
) -> AsyncIterator[str]:
    """/stac of a service holding three results: two dates by v1, the first date by v2."""
    for version, dates in (("1", ("2020-06-21", "2020-09-14")), ("2", ("2020-06-21",))):
        await asyncio.to_thread(service.deployment.deploy, make_model(version))
        for date in dates:
            outcome = await asyncio.to_thread(
                service.pipeline.classify_href, str(boadella_item(date))
            )
            assert not outcome.skipped
    server = OpsServer(create_app(settings, service), "127.0.0.1", 0)
    await server.start()
    try:
        yield f"{server.url}/stac"
    finally:
        await server.stop()


def _all(stac: str) -> list[dict[str, Any]]:
    return list(httpx.get(f"{stac}/search", params={"limit": 100}).json()["features"])


async def test_queryables_name_every_class_and_the_model(stac: str) -> None:
    async with httpx.AsyncClient() as client:
        r = await client.get(f"{stac}/queryables")
        assert r.status_code == 200 and r.headers["content-type"] == "application/schema+json"
        doc = r.json()
        assert doc["$id"] == f"{stac}/queryables" and doc["additionalProperties"] is False
        items = (await client.get(f"{stac}/search")).json()["features"]
        classes = set(items[0]["properties"]["eostream:class_shares"])
        assert {f"{SHARE}{c}" for c in classes} <= set(doc["properties"])
        for name in ("eostream:model_version", "eostream:mean_confidence", "datetime"):
            assert name in doc["properties"]
        landing = (await client.get(stac)).json()
        rels = {link["rel"]: link["href"] for link in landing["links"]}
        assert rels["http://www.opengis.net/def/rel/ogc/1.0/queryables"] == f"{stac}/queryables"
        collection = landing["links"][-2]["href"]  # the child collection
        per = await client.get(f"{collection}/queryables")
        assert per.status_code == 200 and per.json()["properties"] == doc["properties"]
        assert (await client.get(f"{stac}/collections/nope/queryables")).status_code == 404


async def test_filtered_searches_return_only_matching_items(stac: str) -> None:
    everything = await asyncio.to_thread(_all, stac)
    assert len(everything) == 3
    # the class whose share differs most between the results (the test models are random)
    classes = everything[0]["properties"]["eostream:class_shares"]

    def spread(name: str) -> float:
        values = [f["properties"][f"{SHARE}{name}"] for f in everything]
        return float(max(values) - min(values))

    name = max(classes, key=spread)
    values = sorted({f["properties"][f"{SHARE}{name}"] for f in everything})
    assert len(values) >= 2, "the results should differ in some class share"
    cut = (values[0] + values[-1]) / 2
    want = {f["id"] for f in everything if f["properties"][f"{SHARE}{name}"] > cut}
    assert 0 < len(want) < 3
    v2 = {f["id"] for f in everything if f["properties"]["eostream:model_version"] == "2"}

    def search(**kw: Any) -> set[str]:
        client = Client.open(stac)
        return {item.id for item in client.search(max_items=100, **kw).items()}

    text = f'"{SHARE}{name}" > {cut}'
    assert await asyncio.to_thread(search, filter=text, filter_lang="cql2-text") == want
    as_json = {"op": "=", "args": [{"property": "eostream:model_version"}, "2"]}
    assert await asyncio.to_thread(search, filter=as_json, filter_lang="cql2-json") == v2
    both = f"{text} AND eostream:model_version = '2'"
    got = await asyncio.to_thread(search, filter=both, bbox=everything[0]["bbox"])
    assert got == want & v2
    assert await asyncio.to_thread(search, filter=text, bbox=[100, 0, 101, 1]) == set()

    async with httpx.AsyncClient() as client:
        # GET with a filter, on the items of the collection too
        collection = everything[0]["collection"]
        r = await client.get(
            f"{stac}/collections/{collection}/items",
            params={"filter": "eostream:model_version = '2'"},
        )
        assert {f["id"] for f in r.json()["features"]} == v2
        # paging: one item a page, the filter kept on every page
        v1 = {f["id"] for f in everything} - v2
        seen: list[str] = []
        url: str | None = f"{stac}/search"
        params: dict[str, Any] | None = {"filter": "eostream:model_version = '1'", "limit": 1}
        while url:
            page = (await client.get(url, params=params)).json()
            assert page["numberMatched"] == len(v1)
            seen += [f["id"] for f in page["features"]]
            url = next((lk["href"] for lk in page["links"] if lk["rel"] == "next"), None)
            params = None
        assert sorted(seen) == sorted(v1)
        body = {"filter": as_json, "limit": 1, "sortby": [{"field": "id", "direction": "asc"}]}
        first = (await client.post(f"{stac}/search", json=body)).json()
        assert first["numberMatched"] == len(v2) and first["features"][0]["id"] in v2


async def test_bad_filters_and_geometries_answer_400(stac: str) -> None:
    async with httpx.AsyncClient() as client:
        cases = [
            (client.get(f"{stac}/search", params={"filter": "eostream:model_version = = '1'"}),
             "not valid cql2-text"),
            (client.get(f"{stac}/search", params={"filter": "confidence > 0.9"}),
             "not queryable: confidence"),
            (client.get(f"{stac}/search", params={"filter": f"{SHARE}Glacier > 0.1"}),
             "no result has the classes Glacier"),
            (client.get(f"{stac}/search", params={"filter": "id = 'a'", "filter-lang": "sql"}),
             "filter-lang 'sql'"),
            (client.post(f"{stac}/search", json={"filter": [1, 2], "filter-lang": "cql2-json"}),
             "must be a JSON object"),
            (client.post(f"{stac}/search", json={"filter": {"op": "nope", "args": [1]}}),
             "unknown CQL2 operators: nope"),
            (client.get(f"{stac}/search", params={"filter": "id = 'a'", "filter-crs": "EPSG:3857"}),
             "filter-crs"),
            (client.post(f"{stac}/search", json={"intersects": {"type": "Polygon", "coordinates": 7}}),  # noqa: E501
             "not a GeoJSON geometry"),
            (client.get(f"{stac}/search", params={"intersects": "{not json"}),
             "not a GeoJSON geometry"),
            (client.get(f"{stac}/search", params={"filter": "datetime > TIMESTAMP('abc')"}),
             "'abc' is not a timestamp"),
            (client.get(f"{stac}/search", params={"sortby": "-"}),
             "has an empty field"),
            (client.get(f"{stac}/search", params={"sortby": "-eostream:mean_confidance"}),
             "'eostream:mean_confidance' is not a queryable"),
            (client.post(f"{stac}/search", json={"intersects": {"type": "Point", "coordinates": [[0, 0]]}}),  # noqa: E501
             "nest 1 deep where its type puts positions 0 deep"),
            (client.get(f"{stac}/search", params={"bbox": "170,-10,-170,10"}),
             "antimeridian"),
            (client.post(f"{stac}/search", json={"bbox": [170, -10, -170, 10]}),
             "antimeridian"),
        ]  # fmt: skip
        for request, message in cases:
            answer = await request
            assert answer.status_code == 400, answer.text
            body = answer.json()
            assert set(body) == {"code", "description"} and message in body["description"], body
        # a class share sorts (it exists only in the items as served, not as stored)
        shares = [
            k
            for k in (await client.get(f"{stac}/queryables")).json()["properties"]
            if k.startswith("eostream:share:")
        ]
        distinct = 0
        for share in shares:
            for sign, descending in (("-", True), ("+", False)):
                params = {"sortby": f"{sign}{share}"}
                page = (await client.get(f"{stac}/search", params=params)).json()
                got = [f["properties"].get(share) for f in page["features"]]
                assert got == sorted(got, reverse=descending) and len(got) == 3, (share, got)
            distinct += len(set(got)) > 1
        assert distinct, "no share tells the items apart: the sort would not be seen"
        # nothing was disturbed: the same searches still answer everything
        assert (await client.get(f"{stac}/search")).json()["numberMatched"] == 3
        assert (await client.get(f"{stac}/queryables")).status_code == 200


async def test_cql2_json_in_a_get_is_its_json_text(stac: str) -> None:
    expr = json.dumps({"op": "=", "args": [{"property": "eostream:model_version"}, "2"]})
    async with httpx.AsyncClient() as client:
        r = await client.get(f"{stac}/search", params={"filter": expr, "filter-lang": "cql2-json"})
    assert r.status_code == 200
    assert {f["properties"]["eostream:model_version"] for f in r.json()["features"]} == {"2"}


async def test_the_collection_says_where_and_when_its_results_are(stac: str) -> None:
    """Its extent is that of the results (the whole Earth and an open interval said nothing)."""
    async with httpx.AsyncClient() as client:
        [collection] = (await client.get(f"{stac}/collections")).json()["collections"]
        items = (await client.get(f"{stac}/search")).json()["features"]
    [box] = collection["extent"]["spatial"]["bbox"]
    assert box == [
        min(i["bbox"][0] for i in items),
        min(i["bbox"][1] for i in items),
        max(i["bbox"][2] for i in items),
        max(i["bbox"][3] for i in items),
    ]
    assert 2.7 < box[0] < box[2] < 2.9 and 42.3 < box[1] < box[3] < 42.4  # Boadella
    [[first, last]] = collection["extent"]["temporal"]["interval"]
    assert first.startswith("2020-06-21T") and last.startswith("2020-09-14T")
    assert first.endswith("Z") and "EuroSAT" not in collection["description"]
