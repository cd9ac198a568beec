"""The worker through the in-process bus: bad requests are dead-lettered with their reason; a good
one trains, publishes TrainingStarted and ModelVersionRegistered, and registers once."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from eostream.shared import topics
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.events import DatasetUpdated, Event, TrainingRequested
from eostream.trainer.pipeline import tracker_for
from eostream.trainer.service import build_trainer
from eostream.trainer.settings import TrainerSettings

from .helpers import events_on, wait_until


async def _run(
    settings: TrainerSettings,
    events: Sequence[tuple[str, Event]],
    done: int,
    timeout: float = 60,
) -> InMemoryBus:
    """Publish ``events``, run the worker until ``done`` records are handled, stop it."""
    bus = InMemoryBus(service="trainer")
    worker = build_trainer(settings, bus=bus, tracker=tracker_for(settings))
    consumer = worker.consumer()
    task = asyncio.create_task(consumer.run())
    for topic, event in events:
        await bus.publish(topic, event)
    handled = lambda: bus.size(topics.DEAD_LETTER) + bus.size(topics.MODELS_REGISTERED) >= done  # noqa: E731
    try:
        await wait_until(handled, timeout, f"{done} handled records")
    finally:
        await consumer.stop()
        await asyncio.wait_for(task, 30)
    return bus


async def test_bad_requests_are_dead_lettered_with_reasons(
    sqlite_settings: TrainerSettings, tmp_path: Path
) -> None:
    bad = [
        TrainingRequested(request_id="bands", band_set="hyperspectral"),
        TrainingRequested(request_id="arch", architecture="vit_huge"),
        TrainingRequested(request_id="few", samples_per_class=2),
        TrainingRequested(request_id="base", base_model="s3://somewhere/model.pt"),
        TrainingRequested(request_id="batch", batch_size=1),
    ]
    events: list[tuple[str, Event]] = [(topics.TRAINING_REQUESTS, e) for e in bad]
    events.append(
        (
            topics.DATASETS_UPDATED,
            DatasetUpdated(dataset="x", href="file:///x", digest="abc", band_set="sar"),
        )
    )
    bus = await _run(sqlite_settings, events, done=len(events))
    letters = await bus.read_dead_letters(limit=10)
    reasons = {letter.original_key: letter.reason for letter in letters}
    assert "band_set 'hyperspectral' is unknown" in reasons["bands"]
    assert "architecture 'vit_huge' is unknown" in reasons["arch"]
    assert "samples_per_class 2 is too few" in reasons["few"]
    assert "must be models:/NAME/VERSION" in reasons["base"]
    assert "batch_size must be at least 2" in reasons["batch"]
    assert "band_set 'sar' is unknown" in reasons["x"]
    assert all(
        letter.original_topic in (topics.TRAINING_REQUESTS, topics.DATASETS_UPDATED)
        for letter in letters
    )
    assert bus.size(topics.MODELS_REGISTERED) == 0


async def test_missing_data_and_unknown_base_model_are_dead_lettered(
    sqlite_settings: TrainerSettings, tmp_path: Path
) -> None:
    empty = sqlite_settings.model_copy(update={"data_dir": tmp_path / "nothing-here"})
    bus = await _run(empty, [(topics.TRAINING_REQUESTS, TrainingRequested(request_id="nodata"))], 1)
    (letter,) = await bus.read_dead_letters(limit=5)
    assert "no EuroSAT RGB data" in letter.reason and "EOSTREAM_DATA_DIR" in letter.reason
    bus = await _run(
        sqlite_settings,
        [
            (
                topics.TRAINING_REQUESTS,
                TrainingRequested(
                    request_id="nobase",
                    band_set="ms13",
                    samples_per_class=20,
                    base_model="models:/does-not-exist/3",
                ),
            )
        ],
        1,
    )
    (letter,) = await bus.read_dead_letters(limit=5)
    assert letter.error_type == "BadTrainingRequestError" and "does-not-exist" in letter.reason


@pytest.mark.slow
async def test_training_request_registers_once(sqlite_settings: TrainerSettings) -> None:
    request = TrainingRequested(
        request_id="ms-small",
        model_name="eurosat-ms-test",
        band_set="ms13",
        epochs=2,
        batch_size=32,
    )
    bus = await _run(sqlite_settings, [(topics.TRAINING_REQUESTS, request)], 1, timeout=300)
    assert bus.size(topics.DEAD_LETTER) == 0
    (started,) = events_on(bus, topics.TRAINING_EVENTS)
    (registered,) = events_on(bus, topics.MODELS_REGISTERED)
    assert started.request_id == "ms-small" and started.run_id in started.run_url  # type: ignore[attr-defined]
    assert registered.version == "1" and registered.band_set == "ms13"  # type: ignore[attr-defined]
    assert registered.metrics["onnx_argmax_agreement"] == 1.0  # type: ignore[attr-defined]

    # a redelivered request does not train or register again
    again = await _run(sqlite_settings, [(topics.TRAINING_REQUESTS, request)], 1, timeout=120)
    (registered_again,) = events_on(again, topics.MODELS_REGISTERED)
    assert registered_again.version == "1" and registered_again.run_id == registered.run_id  # type: ignore[attr-defined]
