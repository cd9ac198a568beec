"""What the maps say, in Prometheus: classifying a scene counts exactly its statistics' pixels per
class (uncertain included) and observes its mean confidence and uncertain share once, on the event
path and the REST path alike, by model version and scene kind."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from prometheus_client import REGISTRY

from eostream.inference import metrics
from eostream.inference.service import InferenceService
from eostream.shared import topics
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.events import ModelPromoted, SceneDiscovered

from .conftest import AUTH

Snapshot = dict[str, float]


def snapshot(model: str, version: str, kind: str) -> Snapshot:
    """Every map sample of one model version and scene kind, by class or histogram sample."""
    found: Snapshot = {}
    for family in REGISTRY.collect():
        for sample in family.samples:
            labels = sample.labels
            if (labels.get("model"), labels.get("version"), labels.get("scene_kind")) != (
                model,
                version,
                kind,
            ):
                continue
            if sample.name == "eostream_inference_class_pixels_total":
                found[f"class:{labels['class']}"] = sample.value
            elif sample.name.startswith(
                ("eostream_inference_scene_mean_confidence", "eostream_inference_scene_uncertain")
            ) and not sample.name.endswith(("_bucket", "_created")):
                found[sample.name] = sample.value
    return found


def delta(before: Snapshot, after: Snapshot) -> Snapshot:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


def expected(stats: dict[str, object], props: dict[str, object]) -> Snapshot:
    classes = stats["classes"]
    uncertain = stats["uncertain"]
    assert isinstance(classes, dict) and isinstance(uncertain, dict)
    want: Snapshot = {f"class:{n}": float(c["pixels"]) for n, c in classes.items() if c["pixels"]}
    if uncertain["pixels"]:
        want["class:uncertain"] = float(uncertain["pixels"])
    want["eostream_inference_scene_mean_confidence_count"] = 1.0
    want["eostream_inference_scene_mean_confidence_sum"] = float(
        props["eostream:mean_confidence"]  # type: ignore[arg-type]
    )
    want["eostream_inference_scene_uncertain_share_count"] = 1.0
    if props["eostream:uncertain_share"]:
        want["eostream_inference_scene_uncertain_share_sum"] = float(
            props["eostream:uncertain_share"]  # type: ignore[arg-type]
        )
    return want


def local(uri: str) -> Path:
    return Path(urlparse(uri).path)


async def test_a_classified_scene_counts_exactly_its_statistics_on_the_event_path(
    service: InferenceService,
    bus: InMemoryBus,
    boadella_item: Callable[[str], Path],
    make_model: Callable[..., ModelPromoted],
) -> None:
    await asyncio.to_thread(service.deployment.deploy, make_model("7", name="mapcount"))
    href = boadella_item("2020-06-21")
    before = snapshot("mapcount", "7", "L2A")
    event = SceneDiscovered(
        item_id="boadella-2020-06-21",
        item_href=str(href),
        datetime=datetime(2020, 6, 21, tzinfo=UTC),
        processing_level="L2A",
        bands=("B02", "B03", "B04"),
        source_name="test",
    )
    await bus.publish(topics.SCENES_DISCOVERED, event)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    while bus.size(topics.SCENES_CLASSIFIED) < 1:
        assert loop.time() < deadline, "the scene was not classified"
        await asyncio.sleep(0.05)
    record = service.pipeline.results.get("boadella-2020-06-21", "7")
    assert record is not None
    props = record.item["properties"]

    got = delta(before, snapshot("mapcount", "7", "L2A"))

    assert got == pytest.approx(expected(record.stats, props), abs=1e-9)
    counted = sum(v for k, v in got.items() if k.startswith("class:"))
    assert counted == record.stats["valid_pixels"]  # every valid pixel once, nodata never
    # the same numbers as the statistics.json that readers get
    stats_file = json.loads(local(record.item["assets"]["statistics"]["href"]).read_text())
    assert {f"class:{n}": c["pixels"] for n, c in stats_file["classes"].items() if c["pixels"]} == {
        k: v for k, v in got.items() if k.startswith("class:") and k != "class:uncertain"
    }


async def test_the_rest_path_counts_a_scene_once_and_a_skipped_scene_not_again(
    service: InferenceService,
    client: httpx.AsyncClient,
    boadella_item: Callable[[str], Path],
    make_model: Callable[..., ModelPromoted],
) -> None:
    await asyncio.to_thread(service.deployment.deploy, make_model("8", name="mapcount"))
    href = str(boadella_item("2020-09-14"))
    before = snapshot("mapcount", "8", "L2A")
    first = await client.post("/classify/item", json={"item_href": href}, headers=AUTH)
    assert first.status_code == 200, first.text
    after_first = snapshot("mapcount", "8", "L2A")
    again = await client.post("/classify/item", json={"item_href": href}, headers=AUTH)
    assert again.status_code == 200 and again.json()["skipped"] is True

    assert snapshot("mapcount", "8", "L2A") == after_first  # skipped: nothing counted again
    record = service.pipeline.results.get("boadella-2020-09-14", "8")
    assert record is not None
    assert delta(before, after_first) == pytest.approx(
        expected(record.stats, record.item["properties"]), abs=1e-9
    )


def test_scene_kind_is_bounded() -> None:
    assert metrics.scene_kind("L2A") == "L2A"
    assert metrics.scene_kind("L1C") == "L1C"
    assert metrics.scene_kind(None) == "other"
    assert metrics.scene_kind("S2B_MSIL2A_some_product_id") == "other"
