"""Items are checked before any work: a bad id, bbox, datetime or asset field is a 400 over REST
(the classify route and the process) and a dead letter from the consumer, which goes on, with no
file written; a scene that fails after writing leaves none."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from eostream.inference.errors import BadInputError
from eostream.inference.service import InferenceService
from eostream.inference.settings import InferenceSettings
from eostream.inference.validation import validate_item
from eostream.shared import topics
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.events import ModelPromoted, SceneDiscovered

from .conftest import AUTH, BOADELLA_BANDS

EXECUTE = "/processes/classify-scene/execution"


def _bad_items(good: dict[str, Any]) -> dict[str, tuple[dict[str, Any], str]]:
    """name -> (item, words of the reason): each made from the good item by one change. Among
    them asset fields of the wrong type and times outside years 1-9999 in UTC, which raised
    TypeError or OverflowError past validation (a consumer stopped for ever, a 500)."""

    def variant(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        item: dict[str, Any] = json.loads(json.dumps(good))
        change(item)
        return item

    def top(**fields: Any) -> Callable[[dict[str, Any]], None]:
        return lambda item: item.update(fields)

    def data(**fields: Any) -> Callable[[dict[str, Any]], None]:
        return lambda item: item["assets"]["data"].update(fields)

    def when(value: str) -> Callable[[dict[str, Any]], None]:
        return lambda item: item["properties"].update(datetime=value)

    def band(**fields: Any) -> Callable[[dict[str, Any]], None]:
        return data(**{"raster:bands": [{"scale": 0.0001, "offset": 0, **fields}]})

    return {
        "bbox-not-numbers": (variant(top(bbox=["west", 0, 1, 1])), "bbox"),
        "bad-datetime": (variant(when("2020-13-45T99:00:00Z")), "RFC 3339"),
        "dotdot-id": (variant(top(id="../../etc")), "not a safe name"),
        "long-id": (variant(top(id="a" * 1100)), "1100 characters"),
        "roles-number": (variant(data(roles=5)), "roles must be a list of strings"),
        "roles-string": (variant(data(roles="data")), "roles must be a list of strings"),
        "scale-list": (variant(band(scale=[1])), "scale must be a finite number"),
        "scale-text": (variant(band(scale="a")), "scale must be a finite number"),
        "offset-true": (variant(band(offset=True)), "offset must be a finite number"),
        "raster-bands-number": (variant(data(**{"raster:bands": 3})), "raster:bands must be a"),
        "eo-bands-number": (variant(data(**{"eo:bands": 3})), "eo:bands must be a list"),
        "assets-list": (variant(top(assets=[1])), "assets must be an object"),
        "before-year-1-in-utc": (variant(when("0001-01-01T00:00:00+01:00")), "years 1..9999"),
        "after-9999-in-utc": (variant(when("9999-12-31T23:59:59-01:00")), "years 1..9999"),
        # a geometry that is not GeoJSON went into the result item, and every area search
        # that met its bbox answered 500 (shapely could not read it)
        "geometry-text": (variant(top(geometry="x")), "the item's geometry must be a GeoJSON"),
        "geometry-coordinates-text": (
            variant(top(geometry={"type": "Point", "coordinates": "x"})),
            "the item's geometry is not a GeoJSON geometry",
        ),
        "geometry-off-the-globe": (
            variant(top(geometry={"type": "Point", "coordinates": [500, 42]})),
            "outside longitude",
        ),
    }


def _results(service: InferenceService, settings: InferenceSettings) -> list[str]:
    return [info.key for info in service.store.list(settings.results_prefix + "/")]


async def test_rest_refuses_bad_items_with_a_400_and_writes_nothing(
    service: InferenceService,
    settings: InferenceSettings,
    client: httpx.AsyncClient,
    tmp_path: Path,
    boadella_item: Callable[[str], Path],
    make_model: Callable[..., ModelPromoted],
) -> None:
    await asyncio.to_thread(service.deployment.deploy, make_model("1"))
    good = json.loads(boadella_item("2020-06-21").read_text())
    for name, (item, words) in _bad_items(good).items():
        href = tmp_path / f"{name}.json"
        href.write_text(json.dumps(item))
        r = await client.post("/classify/item", json={"item_href": str(href)}, headers=AUTH)
        assert r.status_code == 400, f"{name}: {r.status_code} {r.text}"
        body = r.json()
        assert body["code"] == "bad_input" and words in body["description"], (name, body)
        r = await client.post(EXECUTE, json={"inputs": {"scene": item}}, headers=AUTH)
        assert r.status_code == 400 and words in r.json()["description"], (name, r.text)
    assert _results(service, settings) == []
    assert (await client.get("/readyz")).status_code == 200


def test_validation_names_the_field(boadella_item: Callable[[str], Path]) -> None:
    good = json.loads(boadella_item("2020-06-21").read_text())
    validate_item(good, "good.json")
    for name, (item, words) in _bad_items(good).items():
        with pytest.raises(BadInputError, match=r"^bad\.json: ") as caught:
            validate_item(item, "bad.json")
        assert words in str(caught.value), (name, str(caught.value))


async def test_consumer_dead_letters_bad_items_and_writes_nothing(
    service: InferenceService,
    settings: InferenceSettings,
    bus: InMemoryBus,
    tmp_path: Path,
    boadella_item: Callable[[str], Path],
    make_model: Callable[..., ModelPromoted],
) -> None:
    await asyncio.to_thread(service.deployment.deploy, make_model("1"))
    good = json.loads(boadella_item("2020-06-21").read_text())
    bad = _bad_items(good)
    for name, (item, _words) in bad.items():
        href = tmp_path / f"{name}.json"
        href.write_text(json.dumps(item))
        await bus.publish(topics.SCENES_DISCOVERED, _scene_event(name, str(href)))
    for _ in range(400):
        if bus.size(bus.dead_letter_topic) >= len(bad):
            break
        await asyncio.sleep(0.05)
    reasons = {d.original_key: d.reason for d in await bus.read_dead_letters(limit=50)}
    assert set(reasons) == set(bad)
    for name, (_item, words) in bad.items():
        assert words in reasons[name], (name, reasons[name])
    assert _results(service, settings) == []
    # the consumer goes on: a good scene after them is classified
    good_href = str(boadella_item("2020-06-21"))
    await bus.publish(topics.SCENES_DISCOVERED, _scene_event("good", good_href))
    for _ in range(600):
        if bus.size(topics.SCENES_CLASSIFIED):
            break
        await asyncio.sleep(0.05)
    assert bus.size(topics.SCENES_CLASSIFIED) == 1
    assert service.liveness()[0]


def _scene_event(key: str, href: str) -> SceneDiscovered:
    return SceneDiscovered(
        item_id=key,
        item_href=href,
        datetime=datetime(2020, 6, 21, tzinfo=UTC),
        processing_level="L2A",
        bands=tuple(BOADELLA_BANDS),
        source_name="test",
    )


async def test_a_scene_that_fails_after_writing_leaves_no_files(
    service: InferenceService,
    settings: InferenceSettings,
    boadella_item: Callable[[str], Path],
    make_model: Callable[..., ModelPromoted],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await asyncio.to_thread(service.deployment.deploy, make_model("1"))

    def index_down(record: object) -> None:
        raise RuntimeError("results index write failed")

    monkeypatch.setattr(service.pipeline.results, "put", index_down)
    with pytest.raises(RuntimeError, match="index write failed"):
        await asyncio.to_thread(service.pipeline.classify_href, str(boadella_item("2020-06-21")))
    assert _results(service, settings) == []
    monkeypatch.undo()
    await asyncio.to_thread(service.pipeline.classify_href, str(boadella_item("2020-06-21")))
    assert len(_results(service, settings)) >= 4  # the same scene, once it works, writes them


@pytest.mark.parametrize(
    "bbox",
    [
        [170.0, -10.0, -170.0, 10.0],  # across the antimeridian
        [0.0, 0.0, 0.0, 1.0, 1.0, 100.0],  # 3D
        None,
    ],
)
def test_valid_bboxes_pass(bbox: list[float] | None) -> None:
    validate_item(
        {
            "id": "S2A_T1_x-1.2",
            "bbox": bbox,
            "properties": {
                "datetime": None,
                "start_datetime": "2020-01-01T00:00:00Z",
                "end_datetime": "2020-01-02T00:00:00+01:00",
            },
        },
        "item.json",
    )


@pytest.mark.parametrize(
    ("item", "words"),
    [
        ({"id": "a/b", "bbox": None, "properties": {"datetime": "2020-01-01T00:00:00Z"}}, "safe"),
        (
            {"id": "ok", "bbox": [0, 0, 1], "properties": {"datetime": "2020-01-01T00:00:00Z"}},
            "4 or 6",
        ),
        (
            {
                "id": "ok",
                "bbox": [0, 0, float("nan"), 1],
                "properties": {"datetime": "2020-01-01T00:00:00Z"},
            },
            "non-finite",
        ),
        (
            {"id": "ok", "bbox": [0, 10, 1, 5], "properties": {"datetime": "2020-01-01T00:00:00Z"}},
            "south <= north",
        ),
        ({"id": "ok", "bbox": [0, 0, 1, 1], "properties": {}}, "no datetime"),
        (
            {
                "id": "ok",
                "bbox": [0, 0, 1, 1],
                "properties": {
                    "datetime": None,
                    "start_datetime": "2020-02-01T00:00:00Z",
                    "end_datetime": "2020-01-01T00:00:00Z",
                },
            },
            "after",
        ),
    ],
)
def test_invalid_items_are_refused_with_the_reason(item: dict[str, Any], words: str) -> None:
    with pytest.raises(BadInputError, match=words):
        validate_item(item, "item.json")
