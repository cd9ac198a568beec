"""The worker through the in-process bus: bad requests are dead-lettered with their reason; a good
one trains, publishes TrainingStarted and ModelVersionRegistered, and registers once."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from eostream.shared import topics
from eostream.shared.bus.base import Delivery
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.errors import BusUnavailableError, Disposition, classify
from eostream.shared.events import (
    DatasetUpdated,
    Event,
    ModelVersionRegistered,
    TrainingRequested,
    TrainingStarted,
)
from eostream.shared.settings import KafkaSettings
from eostream.trainer.pipeline import Outcome, StartedCallback, tracker_for
from eostream.trainer.plan import TrainingPlan
from eostream.trainer.service import build_trainer
from eostream.trainer.settings import TrainerSettings
from eostream.trainer.task import BatchCallback
from eostream.trainer.tracking import Tracker, filter_value

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
        request_id="bob's ms-small",  # a quote: the MLflow lookup of a redelivery quotes it
        model_name="eurosat-ms-test",
        band_set="ms13",
        epochs=2,
        batch_size=32,
    )
    bus = await _run(sqlite_settings, [(topics.TRAINING_REQUESTS, request)], 1, timeout=300)
    assert bus.size(topics.DEAD_LETTER) == 0
    (started,) = events_on(bus, topics.TRAINING_EVENTS)
    (registered,) = events_on(bus, topics.MODELS_REGISTERED)
    assert isinstance(started, TrainingStarted) and isinstance(registered, ModelVersionRegistered)
    assert started.request_id == "bob's ms-small" and started.run_id in started.run_url
    assert not started.reused
    assert registered.version == "1" and registered.band_set == "ms13"
    assert registered.metrics["onnx_argmax_agreement"] == 1.0

    # a redelivered request does not train or register again, and says so
    again = await _run(sqlite_settings, [(topics.TRAINING_REQUESTS, request)], 1, timeout=120)
    (started_again,) = events_on(again, topics.TRAINING_EVENTS)
    (registered_again,) = events_on(again, topics.MODELS_REGISTERED)
    assert isinstance(started_again, TrainingStarted) and started_again.reused
    assert started_again.run_id == registered.run_id
    assert isinstance(registered_again, ModelVersionRegistered)
    assert registered_again.version == "1" and registered_again.run_id == registered.run_id
    # the version's own figures, read back from its run, not an empty dict
    assert registered_again.metrics["test_accuracy"] == registered.metrics["test_accuracy"]


class _BrokerDown(InMemoryBus):
    """An in-process bus that gives up on TrainingStarted as the Kafka bus does once its
    publish retries run out (BusUnavailableError)."""

    async def publish(self, topic: str, event: Event) -> None:
        if topic == topics.TRAINING_EVENTS:
            # the words of a timeout, as the real error's carry: is_transient would take it
            raise BusUnavailableError(
                "the broker did not take a record within 90s: KafkaTimeoutError: timed out"
            )
        await super().publish(topic, event)


async def test_a_broker_outage_at_the_start_is_not_an_mlflow_failure(
    sqlite_settings: TrainerSettings,
) -> None:
    """The worker waits past the bus's own publish retries for its TrainingStarted, and a
    BusUnavailableError stops the consumer (the record comes again) instead of being retried
    and dead-lettered as "MLflow unreachable"."""
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:1", publish_retry_seconds=90)
    settings = sqlite_settings.model_copy(update={"kafka": kafka})

    def trains(
        plan: TrainingPlan,
        settings: TrainerSettings,
        tracker: Tracker,
        on_started: StartedCallback | None,
        on_batch: BatchCallback | None,
    ) -> Outcome:
        assert on_started is not None
        on_started("run-1", "http://127.0.0.1:5000/#/runs/run-1", "0", False)
        raise AssertionError("the TrainingStarted publish should have failed")

    bus = _BrokerDown(service="trainer")
    worker = build_trainer(settings, bus=bus, tracker=tracker_for(settings), trainer=trains)
    assert worker._started_timeout() > kafka.publish_retry_seconds
    delivery = Delivery(topic=topics.TRAINING_REQUESTS, partition=0, offset=0, key="outage")
    with pytest.raises(BusUnavailableError):
        await worker.handle(TrainingRequested(request_id="outage"), delivery)
    assert classify(BusUnavailableError("down")) is Disposition.STOP


@pytest.mark.parametrize(
    ("value", "literal"),
    [("plain-id", "'plain-id'"), ("bob's run", '"bob\'s run"'), ("x' OR '1", "\"x' OR '1\"")],
)
def test_filter_values_cannot_end_their_literal(value: str, literal: str) -> None:
    from mlflow.utils.search_utils import SearchUtils

    assert filter_value(value) == literal
    parse = SearchUtils.parse_search_filter
    (clause,) = parse(f"tags.`r` = {filter_value(value)}")  # type: ignore[no-untyped-call]
    assert clause["value"] == value
    with pytest.raises(ValueError, match="both kinds of quote"):
        filter_value('it\'s "quoted"')
