"""A label lands, a model learns from it: water polygons imported over two real Boadella dates
(`eostream labels import --home`) are announced once by ingest's label watcher, and the trainer
cuts chips from them and registers a classifier of the labels' own classes (water, other)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from eostream.inference import reference
from eostream.ingest.labelwatch import LabelWatcher
from eostream.ingest.state import SqliteStateStore
from eostream.shared import tags, topics
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.events import DatasetUpdated, ModelVersionRegistered, TrainingRequested
from eostream.shared.label_catalog import StaticLabelCatalog
from eostream.shared.modelcard import ModelCard
from eostream.trainer.labels_cli import app as labels_app
from eostream.trainer.pipeline import tracker_for
from eostream.trainer.service import build_trainer
from eostream.trainer.settings import TrainerSettings

from .helpers import events_on, wait_until

DATES = ("2020-06-21", "2020-09-14")
COLLECTION = "boadella-water"


def _import(home: Path, scenes: Path, data_dir: Path, date: str) -> None:
    folder = data_dir / reference.BOADELLA_FOLDER / "sentinel_2"
    scene = scenes / f"boadella-{date}" / f"boadella-{date}.json"
    words = ["import", "--scene", str(scene), "--home", str(home), "--collection", COLLECTION]
    geojson = folder / f"Boadella_{date}_labels.geojson"
    result = CliRunner().invoke(labels_app, [*words, "--geojson", str(geojson)])
    assert result.exit_code == 0, result.output


@pytest.mark.usefixtures("root_logging")
async def test_imported_labels_are_announced_once_and_trained_on(
    data_dir: Path, sqlite_settings: TrainerSettings, tmp_path: Path
) -> None:
    built = reference.build_boadella(data_dir, tmp_path / "reference", DATES)
    scenes = built.parent.parent / "boadella-scenes"
    home = tmp_path / "home"
    bus = InMemoryBus(service="ingest")
    state = SqliteStateStore(tmp_path / "ingest.sqlite")
    await state.open()
    watcher = LabelWatcher(StaticLabelCatalog(home / "labels"), store=state, bus=bus)
    try:
        assert await watcher.poll() == []  # no labels yet: nothing to announce

        _import(home, scenes, data_dir, DATES[0])
        [first] = await watcher.poll()
        assert first.published and first.items == 1
        [again] = await watcher.poll()  # unchanged: announced once
        assert not again.published and again.digest == first.digest

        _import(home, scenes, data_dir, DATES[1])  # a second date labelled: a new dataset
        [second] = await watcher.poll()
        assert second.published and second.items == 2 and second.digest != first.digest
    finally:
        await state.close()
    announced = [
        e for e in events_on(bus, topics.DATASETS_UPDATED) if isinstance(e, DatasetUpdated)
    ]
    assert [e.digest for e in announced] == [first.digest, second.digest]
    latest = announced[-1]
    assert latest.dataset == COLLECTION and latest.source == "ingest"
    assert Path(latest.href) == (home / "labels" / COLLECTION / "collection.json").resolve()

    # the trainer takes the three announcements: the first, overtaken by the second date's
    # labels, trains those (chips of both dates, the labels' classes), under their digest
    # 100 optimiser steps, not the default 300: the masks' water is learnt well before that
    settings = sqlite_settings.model_copy(
        update={"dataset_updated_epochs": 2, "min_chip_steps": 100}
    )
    worker = build_trainer(settings, bus=bus, tracker=tracker_for(settings))
    consumer = worker.consumer()
    await bus.publish(topics.DATASETS_UPDATED, latest)  # what a consumer group starting now sees
    task = asyncio.create_task(consumer.run())
    try:
        await wait_until(
            lambda: bus.size(topics.MODELS_REGISTERED) + bus.size(topics.DEAD_LETTER) >= 3,
            600,
            "three announcements handled",
        )
    finally:
        await consumer.stop()
        await asyncio.wait_for(task, 60)
    assert bus.size(topics.DEAD_LETTER) == 0
    registered = [
        e for e in events_on(bus, topics.MODELS_REGISTERED) if isinstance(e, ModelVersionRegistered)
    ]
    names = {(r.name, r.version) for r in registered}
    assert {n for n, _ in names} == {COLLECTION}
    # one training: the two announcements of the second digest reuse the version
    assert len(names) == 1 and len(registered) == 3
    assert {r.request_id for r in registered} == {f"dataset-{COLLECTION}-{second.digest[:16]}"}
    cut = settings.cache_dir / "label-chips"
    assert (cut / f"{COLLECTION}-{second.digest[:16]}").is_dir()
    assert not (cut / f"{COLLECTION}-{first.digest[:16]}").exists()  # nothing under the old
    client = MlflowClient(str(settings.mlflow_tracking_uri))
    version = client.get_model_version(COLLECTION, registered[-1].version)
    card = ModelCard.from_json(version.tags[tags.MODEL_CARD])
    assert card.classes == ("water", "other")
    # by default a segmentation network (label_architecture seg_unet_indices) on the masks
    assert (card.task, card.library, card.architecture) == (
        "segmentation",
        "pytorch",
        "seg_unet_indices",
    )
    assert card.band_set == "l2a"  # the 12 bands of L2A scenes (no B10)
    run = client.get_run(str(version.run_id))
    assert run.data.metrics["test_pixel_iou_water"] > 0.8, run.data.metrics
    assert card.dataset is not None and second.digest[:16] in card.dataset
    summary = json.loads((Path(card.dataset).parent / "dataset.json").read_text())
    assert summary["labels"] == latest.href
    assert registered[0].metrics["test_accuracy"] > 0.5, registered[0].metrics

    # a request may name the chips (or the labels) itself
    requests = [
        TrainingRequested(request_id="chips", model_name="water-2", epochs=1, dataset=card.dataset),
        TrainingRequested(request_id="nowhere", dataset=str(tmp_path / "nowhere")),
        TrainingRequested(request_id="keras", family="keras", dataset=card.dataset),
        TrainingRequested(
            request_id="pixels",
            model_name="water-px",
            architecture="pixel_hgb",
            band_set="l2a",
            dataset=card.dataset,
        ),
    ]
    worker = build_trainer(settings, bus=bus, tracker=tracker_for(settings))
    consumer = worker.consumer()
    for request in requests:
        await bus.publish(topics.TRAINING_REQUESTS, request)
    task = asyncio.create_task(consumer.run())
    try:
        await wait_until(
            lambda: bus.size(topics.MODELS_REGISTERED) + bus.size(topics.DEAD_LETTER) >= 7,
            300,
            "four requests handled",
        )
    finally:
        await consumer.stop()
        await asyncio.wait_for(task, 60)
    reasons = {
        letter.original_key: letter.reason for letter in await bus.read_dead_letters(limit=10)
    }
    assert "neither a chip dataset" in reasons["nowhere"]
    assert "use the torch or sklearn family" in reasons["keras"]
    [chips] = [
        e
        for e in events_on(bus, topics.MODELS_REGISTERED)
        if isinstance(e, ModelVersionRegistered) and e.request_id == "chips"
    ]
    version = client.get_model_version("water-2", chips.version)
    card = ModelCard.from_json(version.tags[tags.MODEL_CARD])
    assert (card.classes, card.task, card.library) == (("water", "other"), "patch", "pytorch")
    # few chips: at least min_chip_steps optimiser steps, the loss weighted by class
    params = client.get_run(str(version.run_id)).data.params
    assert int(params["epochs_for_steps"]) > 1 and params["class_weights"].startswith("(")
    # the per-pixel scikit-learn model of the same chips: the indices alone, its water threshold
    # chosen on pixels it was not fitted on
    [pixels] = [
        e
        for e in events_on(bus, topics.MODELS_REGISTERED)
        if isinstance(e, ModelVersionRegistered) and e.request_id == "pixels"
    ]
    version = client.get_model_version("water-px", pixels.version)
    card = ModelCard.from_json(version.tags[tags.MODEL_CARD])
    assert (card.task, card.library, card.pixel_features) == ("pixel", "scikit-learn", "indices")
    run = client.get_run(str(version.run_id))
    assert run.data.params["threshold_class"] == "water"
    assert run.data.metrics["test_pixel_iou_water"] > 0.8, run.data.metrics


async def test_bad_label_announcements_are_dead_lettered_with_the_reason(
    sqlite_settings: TrainerSettings, tmp_path: Path
) -> None:
    empty = tmp_path / "labels" / "nothing"
    empty.mkdir(parents=True)
    (empty / "collection.json").write_text(
        json.dumps(
            {
                "type": "Collection",
                "id": "nothing",
                "stac_version": "1.0.0",
                "stac_extensions": ["https://stac-extensions.github.io/label/v1.0.1/schema.json"],
                "description": "no items",
                "license": "other",
                "extent": {
                    "spatial": {"bbox": [[0, 0, 1, 1]]},
                    "temporal": {"interval": [[None, None]]},
                },
                "links": [],
            }
        )
    )
    bus = InMemoryBus(service="trainer")
    worker = build_trainer(sqlite_settings, bus=bus, tracker=tracker_for(sqlite_settings))
    consumer = worker.consumer()
    task = asyncio.create_task(consumer.run())
    for dataset, href in [
        ("nothing", str(empty / "collection.json")),
        ("api", "http://127.0.0.1:9/collections/water"),
    ]:
        await bus.publish(
            topics.DATASETS_UPDATED, DatasetUpdated(dataset=dataset, href=href, digest="d" * 64)
        )
    try:
        await wait_until(lambda: bus.size(topics.DEAD_LETTER) >= 2, 180, "two dead letters")
    finally:
        await consumer.stop()
        await asyncio.wait_for(task, 30)
    reasons = {
        letter.original_key: letter.reason for letter in await bus.read_dead_letters(limit=10)
    }
    assert "labels" in reasons["nothing"] and "Traceback" not in reasons["nothing"]
    # a STAC API that does not answer: retried, then dead-lettered with the reason
    assert "STAC API is unreachable" in reasons["api"] and "gave up after" in reasons["api"]
    assert bus.size(topics.MODELS_REGISTERED) == 0


async def test_dates_imported_one_after_another_are_announced_once_they_settle(
    data_dir: Path, tmp_path: Path
) -> None:
    """``settle_seconds``: a collection still changing is not announced; once its items have
    held still that long, one announcement covers every date imported meanwhile."""
    built = reference.build_boadella(data_dir, tmp_path / "reference", DATES)
    scenes = built.parent.parent / "boadella-scenes"
    home = tmp_path / "home"
    bus = InMemoryBus(service="ingest")
    state = SqliteStateStore(tmp_path / "ingest.sqlite")
    await state.open()
    now = [0.0]
    watcher = LabelWatcher(
        StaticLabelCatalog(home / "labels"), store=state, bus=bus, settle_seconds=10,
        clock=lambda: now[0],
    )  # fmt: skip
    try:
        _import(home, scenes, data_dir, DATES[0])
        [first] = await watcher.poll()
        assert not first.published  # just changed: wait
        now[0] = 5.0
        _import(home, scenes, data_dir, DATES[1])  # changed again before it settled
        [second] = await watcher.poll()
        assert not second.published and second.items == 2
        now[0] = 14.0  # 9 s since the last change
        assert not (await watcher.poll())[0].published
        now[0] = 15.0
        [settled] = await watcher.poll()
        assert settled.published and settled.items == 2
        now[0] = 100.0
        assert not (await watcher.poll())[0].published  # announced once
    finally:
        await state.close()
    assert bus.size(topics.DATASETS_UPDATED) == 1
