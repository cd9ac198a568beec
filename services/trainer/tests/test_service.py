"""The worker through the in-process bus: bad requests are dead-lettered with their reason; a good
one trains, publishes TrainingStarted and ModelVersionRegistered, and registers once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from eostream.shared import topics
from eostream.shared.bus.base import Delivery
from eostream.shared.bus.kafka import KafkaBus
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.codec import decode
from eostream.shared.errors import BusUnavailableError
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
from eostream.trainer.registered import RegisteredVersion, filter_value
from eostream.trainer.service import CONSUMED, build_trainer
from eostream.trainer.settings import TrainerSettings
from eostream.trainer.task import BatchCallback
from eostream.trainer.tracking import Tracker

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
    # an href that names nothing retrained the live model on EuroSAT (a typo, another scheme)
    # and so did any folder: /tmp, a label folder without its catalog.json
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "collection.json").write_text("{}")
    strays = {"tmp": str(tmp_path), "nocatalog": str(tmp_path / "labels")}
    # collection files of the wrong shape stopped the consumer (TypeError, RecursionError)
    for key, text in {
        "exts": '{"type": "Collection", "id": "c", "stac_extensions": 5}',
        "links": '{"type": "Catalog", "id": "c", "links": "x"}',
        "deep": "[" * 100_000,
    }.items():
        (tmp_path / key).mkdir()
        (tmp_path / key / "collection.json").write_text(text)
        strays[key] = str(tmp_path / key / "collection.json")
    events.append(
        (
            topics.TRAINING_REQUESTS,
            TrainingRequested(request_id="shape", dataset=str(tmp_path / "exts")),
        )
    )
    nothing = {"typo": str(tmp_path / "no-such-labels"), "ftp": "ftp://x/labels"}
    for key, href in (nothing | strays).items():
        events.append(
            (topics.DATASETS_UPDATED, DatasetUpdated(dataset=key, href=href, digest=key * 8))
        )
    bus = await _run(sqlite_settings, events, done=len(events))
    letters = await bus.read_dead_letters(limit=20)
    reasons = {letter.original_key: letter.reason for letter in letters}
    assert "band_set 'hyperspectral' is unknown" in reasons["bands"]
    assert "architecture 'vit_huge' is unknown" in reasons["arch"]
    assert "samples_per_class 2 is too few" in reasons["few"]
    assert "must be models:/NAME/VERSION" in reasons["base"]
    assert "batch_size must be at least 2" in reasons["batch"]
    assert "neither a chip dataset" in reasons["shape"]
    assert "band_set 'sar' is unknown" in reasons["x"]
    for key in nothing | strays:
        assert "is neither a label collection, a chip dataset nor a EuroSAT folder" in reasons[key]
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


@pytest.mark.stack
@pytest.mark.alone
@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_a_broker_outage_at_the_start_is_not_an_mlflow_failure(
    sqlite_settings: TrainerSettings,
    kafka_bootstrap: str,
    outage: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The broker stops exactly while the worker publishes TrainingStarted (the publish is held
    at a gate until the broker is down), on the real Kafka bus. The training thread waits past
    the bus's own publish retries and gets the bus's BusUnavailableError (not its own timeout);
    the handler lets it stop the consumer (the record comes again) instead of retrying and
    dead-lettering it as "MLflow unreachable"; after the broker is back the redelivered request
    is announced and registered. Only the training itself is a stand-in: it is not under test."""
    run = uuid.uuid4().hex[:8]
    kafka = KafkaSettings(
        bootstrap_servers=kafka_bootstrap, topic_prefix=f"start{run}.", publish_retry_seconds=3
    )
    settings = sqlite_settings.model_copy(
        update={"bus": "kafka", "kafka": kafka, "consumer_group": f"t-{run}"}
    )
    started_errors: list[BaseException] = []  # what each TrainingStarted publish raised

    def trains(
        plan: TrainingPlan,
        settings: TrainerSettings,
        tracker: Tracker,
        on_started: StartedCallback | None,
        on_batch: BatchCallback | None,
    ) -> Outcome:
        assert on_started is not None
        try:
            on_started(f"run-{run}", f"http://127.0.0.1:5000/#/runs/run-{run}", "0", False)
        except BaseException as exc:
            started_errors.append(exc)
            raise
        version = RegisteredVersion(name=f"start-{run}", version="1", run_id=f"run-{run}", tags={})
        return Outcome(version=version, metrics={}, run_url=f"http://127.0.0.1:5000/#/runs/{run}")

    bus = KafkaBus(kafka, service="trainer")
    await bus.start()
    # as run_worker does: the publish meets the stopped broker in its producer, not its admin
    await bus.ensure_topics([*CONSUMED, topics.TRAINING_EVENTS, topics.MODELS_REGISTERED])
    gated = outage.gate(bus, topics.TRAINING_EVENTS)
    worker = build_trainer(settings, bus=gated, tracker=tracker_for(settings), trainer=trains)
    # past the retries and the last attempt's wait for the broker's answer
    assert worker._started_timeout() > kafka.publish_retry_seconds + kafka.request_timeout_ms / 1e3
    handled: list[BaseException | None] = []  # each handling's error, None when it succeeded
    handle = worker.handle

    async def recording(event: Event, delivery: Delivery) -> None:
        try:
            await handle(event, delivery)
        except BaseException as exc:
            handled.append(exc)
            raise
        handled.append(None)

    monkeypatch.setattr(worker, "handle", recording)
    consumers = worker.supervised()
    [member] = consumers.members
    consumers.start()
    request = TrainingRequested(request_id=f"start-{run}")
    try:
        await bus.publish(topics.TRAINING_REQUESTS, request)
        await outage.during(gated, "trainer", restarts=True)
        await outage.wait_for(
            lambda: bool(handled) and handled[-1] is None,
            "the redelivered request to be handled after the outage",
        )
        # the thread waited out the publish's retries: the bus's error, never a TimeoutError
        assert started_errors and all(isinstance(e, BusUnavailableError) for e in started_errors)
        # ...and the handler passed it on as is (it stops the consumer), never RetryableError
        errors = [e for e in handled if e is not None]
        assert errors and all(isinstance(e, BusUnavailableError) for e in errors), errors
        assert member.restarts >= 1
        announced = [decode(m) for m in await bus.read_topic(topics.TRAINING_EVENTS, timeout=60)]
        assert {e.request_id for e in announced if isinstance(e, TrainingStarted)} == {
            request.request_id
        }
        registered = [decode(m) for m in await bus.read_topic(topics.MODELS_REGISTERED, timeout=60)]
        assert {e.request_id for e in registered if isinstance(e, ModelVersionRegistered)} == {
            request.request_id
        }
        assert await bus.read_dead_letters(limit=5, timeout=5) == []  # no "MLflow unreachable"
    finally:
        gated.release.set()
        await consumers.stop()
        await bus.close()


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
