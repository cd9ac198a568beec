"""The models catalogue: the pure item/collection builders, and the embedded mode's static
catalogue, filled by the real bridge (sqlite MLflow, local store, in-process bus) and read back
with pystac (a static catalogue has no search endpoint, so pystac-client cannot search it: the
same questions are asked of the items pystac reads)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pystac
import pytest

from eostream.registry_bridge.catalog import (
    VersionState,
    build_collection,
    catalog_item,
    gate_properties,
    status_of,
    validate_catalog_item,
    validate_collection,
)
from eostream.registry_bridge.embedded import component
from eostream.registry_bridge.settings import BridgeSettings
from eostream.shared import mlm, tags, topics
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.codec import decode
from eostream.shared.embedded import EmbeddedContext
from eostream.shared.events import ModelPromoted
from eostream.shared.modelcard import ModelCard
from eostream.shared.storage.local import LocalObjectStore

from .conftest import HOLDOUT_PER_CLASS, HOLDOUT_SALT, MODEL_NAME

COLLECTION = "eostream-models"
EUROPE = (-10.0, 35.0, 30.0, 60.0)
AUSTRALIA = (113.0, -39.0, 153.0, -11.0)


def shipped(card: ModelCard, version: str, created: datetime) -> dict[str, Any]:
    facts = mlm.MlmFacts(
        name=MODEL_NAME,
        version=version,
        card=card,
        artifact_href=f"s3://eostream/models/{MODEL_NAME}/{version}/model.onnx",
        sha256="ab" * 32,
        size=100,
        created=created,
        run_id="run1",
        metrics=(("test_accuracy", 0.9),),
        base_model="models:/eurosat-rgb/4",
    )
    return mlm.build_item(facts, f"s3://eostream/models/{MODEL_NAME}/{version}/item.json")


def test_an_item_names_its_state_gate_figures_and_sources(card: ModelCard) -> None:
    state = VersionState(
        (tags.CHAMPION,),
        {
            tags.GATE: tags.GATE_PASSED,
            tags.GATE_ACCURACY: "0.91",
            tags.GATE_REASONS: '["PASS accuracy 0.91 >= 0.5"]',
            tags.GATE_EVAL_RUN: "evalrun",
            "eostream.gate.map_accuracy": "0.77",  # figures the gate adds later are carried too
            tags.GATE_MAP_NDWI_IOU: "0.939",
            tags.GATE_MAP_CONDITIONS: '{"file": "fp32", "items": ["a"], "stride": 8}',
            "eostream.gate.note": "not a figure",
            tags.PROMOTED_BY: "alice",
        },
    )
    item = catalog_item(shipped(card, "3", datetime(2026, 3, 1, tzinfo=UTC)), state, COLLECTION)
    props = item["properties"]
    assert (props["version"], props["eostream:aliases"], props["eostream:status"]) == (
        "3",
        ["champion"],
        "champion",
    )
    assert props["eostream:gate"] == "passed" and props["eostream:gate:accuracy"] == 0.91
    assert props["eostream:gate:map_accuracy"] == 0.77 and "eostream:gate:note" not in props
    assert props["eostream:gate:reasons"] == ["PASS accuracy 0.91 >= 0.5"]
    assert props["eostream:gate:eval_run_id"] == "evalrun"
    # a map figure comes with its baseline and what it was measured on and with
    assert props["eostream:gate:map_ndwi_iou_water"] == 0.939
    assert props["eostream:gate:map_conditions"] == {"file": "fp32", "items": ["a"], "stride": 8}
    assert props["eostream:metric:test_accuracy"] == 0.9
    assert props["eostream:classes"] == list(card.classes)
    assert props["eostream:bands"] == ["B04", "B03", "B02"]
    # the verdict the bridge trusts (its audit log's) is shown instead of the tag
    forged = VersionState((), state.tags, "unverified")
    shown = catalog_item(shipped(card, "3", datetime(2026, 3, 1, tzinfo=UTC)), forged, COLLECTION)
    assert shown["properties"]["eostream:gate"] == "unverified"
    assert props["eostream:promoted_by"] == "alice"
    links = {(link["rel"], link["href"]) for link in item["links"]}
    assert ("derived_from", "models:/eurosat-rgb/4") in links  # the base model
    assert ("derived_from", "urn:eostream:dataset:sha256:" + "0" * 64) in links
    assert ("alternate", f"s3://eostream/models/{MODEL_NAME}/3/item.json") in links
    assert not {rel for rel, _ in links} & {"self", "derived-from"}
    assert item["collection"] == COLLECTION


def test_status_follows_aliases_and_stage() -> None:
    archived = {tags.STAGE: tags.STAGE_ARCHIVED}
    assert status_of(VersionState((tags.CHAMPION,), archived)) == "champion"
    assert status_of(VersionState((tags.CHALLENGER,), {})) == "challenger"
    assert status_of(VersionState((), archived)) == "archived"
    assert status_of(VersionState((), {})) == "shipped"
    assert gate_properties({}) == {}


def test_collection_grows_to_cover_new_items_and_keeps_what_it_had(card: ModelCard) -> None:
    first = catalog_item(
        shipped(card, "1", datetime(2026, 1, 1, tzinfo=UTC)), VersionState((), {}), COLLECTION
    )
    collection = build_collection(None, [first], COLLECTION)
    assert validate_collection(collection) == []
    assert collection["summaries"]["mlm:tasks"] == ["classification"]
    assert "SeaLake" in collection["summaries"]["eostream:classes"]
    other = json.loads(json.dumps(first))
    other["id"], other["bbox"] = "other-v1", [100.0, -40.0, 150.0, -10.0]
    other["properties"]["eostream:classes"] = ["Glacier"]
    other["properties"]["end_datetime"] = "2026-06-01T00:00:00Z"
    grown = build_collection(collection, [other], COLLECTION)
    assert grown["extent"]["spatial"]["bbox"] == [[-31.3, -40.0, 150.0, 71.2]]
    assert grown["extent"]["temporal"]["interval"] == [
        ["2015-06-23T00:00:00Z", "2026-06-01T00:00:00Z"]
    ]
    assert {"Glacier", "SeaLake"} <= set(grown["summaries"]["eostream:classes"])
    broken = grown | {"summaries": {"mlm:tasks": ["fortune-telling"]}}
    assert any("not an MLM task" in p for p in validate_collection(broken))


# ------------------------------------------------------------------ the embedded mode
def promoted(bus: InMemoryBus) -> list[ModelPromoted]:
    events = [decode(m) for m in bus._logs[topics.MODELS_PROMOTED]]
    return [e for e in events if isinstance(e, ModelPromoted)]


async def wait_for(bus: InMemoryBus, count: int, timeout: float = 120) -> list[ModelPromoted]:
    for _ in range(int(timeout / 0.1)):
        if len(promoted(bus)) >= count:
            return promoted(bus)
        await asyncio.sleep(0.1)
    raise AssertionError(f"fewer than {count} ModelPromoted after {timeout}s")


def intersects(bbox: list[float], query: tuple[float, float, float, float]) -> bool:
    return not (
        bbox[2] < query[0] or query[2] < bbox[0] or bbox[3] < query[1] or query[3] < bbox[1]
    )


async def catalogued(root: Path, ids: set[str], champion: str, timeout: float = 60) -> None:
    """Until the static catalogue holds ``ids`` with ``champion`` as the champion."""
    for _ in range(int(timeout / 0.1)):
        try:
            found = StaticCatalogue(root)
            if set(found.items) == ids and found.where("eostream:aliases", "champion") == {
                champion
            }:
                return
        except (OSError, ValueError, AssertionError, pystac.STACError):  # not (fully) written yet
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"{sorted(ids)} not in the static catalogue after {timeout}s")


class StaticCatalogue:
    """The questions a user asks of the catalogue, answered from the static files with pystac."""

    def __init__(self, root: Path) -> None:
        catalog = pystac.Catalog.from_file(str(root / "catalog.json"))
        collection = catalog.get_child(COLLECTION)
        assert isinstance(collection, pystac.Collection)
        self.collection = collection
        self.items = {item.id: item for item in collection.get_items()}

    def where(self, prop: str, value: Any) -> set[str]:
        return {i for i, item in self.items.items() if value in item.properties.get(prop, [])}

    def within(self, query: tuple[float, float, float, float]) -> set[str]:
        return {i for i, item in self.items.items() if item.bbox and intersects(item.bbox, query)}


async def test_embedded_bridge_keeps_a_static_catalogue_of_shipped_models(
    tmp_path: Path,
    tracking_uri: str,
    data_dir: Path,
    register: Any,
    models: Any,
    stac_validator: Any,
) -> None:
    bus = InMemoryBus(service="embedded")
    context = EmbeddedContext(
        bus=bus,
        store=LocalObjectStore(tmp_path / "objects", "eostream"),
        home=tmp_path / "home",
        mlflow_tracking_uri=tracking_uri,
        data_dir=data_dir,
        options={
            "registry-bridge": {
                "reconcile_interval_seconds": 0.3,
                "holdout": {"per_class": HOLDOUT_PER_CLASS, "salt": HOLDOUT_SALT},
                "gate": {"min_accuracy": 0.2, "max_class_drop": 0.5, "min_improvement": 0.0},
                "registration_grace_seconds": 0,
            }
        },
    )
    context.store.check()
    bridge_component = component(context)
    settings: BridgeSettings = bridge_component.settings
    root = tmp_path / "home" / "registry-bridge" / "stac"
    assert settings.catalog.static_dir == root
    v1 = register(models.better)
    await bridge_component.start()
    try:
        await wait_for(bus, 1)
        v2 = register(models.better)
        await wait_for(bus, 2)
        ids = {v: f"{MODEL_NAME}-v{v}" for v in (v1, v2)}
        # the catalogue is written right after the announcement, in the same operation
        await catalogued(root, set(ids.values()), ids[v2])
        found = StaticCatalogue(root)
        assert found.where("mlm:tasks", "classification") == set(ids.values())
        assert found.where("eostream:classes", "SeaLake") == set(ids.values())
        assert found.where("eostream:classes", "Glacier") == set()
        assert found.within(EUROPE) == set(ids.values())
        assert found.within(AUSTRALIA) == set()
        assert found.where("eostream:aliases", "champion") == {ids[v2]}
        assert found.items[ids[v1]].properties["eostream:status"] == "archived"
        collection = found.collection.to_dict(transform_hrefs=False)
        assert validate_collection(collection) == []
        assert stac_validator(collection) == []
        for item in found.items.values():
            data = item.to_dict(transform_hrefs=False)
            assert validate_catalog_item(data, COLLECTION) == []
            assert stac_validator(data) == []
            assert {link["rel"] for link in data["links"]} >= {"collection", "derived_from"}

        service = bridge_component.service
        assert service is not None
        await service.bridge.rollback(MODEL_NAME, by="catalog-test", reason="catalogue drill")
        found = StaticCatalogue(root)
        assert found.where("eostream:aliases", "champion") == {ids[v1]}
        assert found.items[ids[v2]].properties["eostream:status"] == "archived"
        assert found.items[ids[v1]].properties["eostream:promoted_by"] == "catalog-test"
    finally:
        await bridge_component.stop()


def test_no_catalogue_when_unset(
    bridge_settings: BridgeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    from eostream.registry_bridge.publishers import build_publisher

    with caplog.at_level("INFO"):
        assert build_publisher(bridge_settings.catalog) is None
    assert "BRIDGE_CATALOG__STAC_API_URL" in caplog.text
