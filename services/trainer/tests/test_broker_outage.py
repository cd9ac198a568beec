"""The broker stops exactly while the trainer publishes ModelVersionRegistered (the publish is held
at a gate until the broker is down): the publish is retried until the broker is back, the worker
keeps consuming, and the training is registered once and announced once."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import mlflow
import pytest

from eostream.shared import topics
from eostream.shared.bus.kafka import KafkaBus
from eostream.shared.codec import decode
from eostream.shared.events import ModelVersionRegistered, TrainingRequested
from eostream.shared.settings import KafkaSettings
from eostream.trainer.pipeline import tracker_for
from eostream.trainer.service import build_trainer

from .conftest import make_settings

pytestmark = [pytest.mark.stack, pytest.mark.alone, pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.mark.usefixtures("sqlite_mlflow")
async def test_a_broker_outage_during_the_publish_ends_with_one_registered_version(
    kafka_bootstrap: str, data_dir: Path, trainer_cache: Path, tmp_path: Path, outage: Any
) -> None:
    run = uuid.uuid4().hex[:8]
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=f"outage{run}.")
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = make_settings(data_dir, trainer_cache, tracking).model_copy(
        update={"bus": "kafka", "kafka": kafka, "consumer_group": f"t-{run}"}
    )
    bus = KafkaBus(kafka, service="trainer")
    await bus.start()
    gated = outage.gate(bus, topics.MODELS_REGISTERED)
    consumers = build_trainer(settings, bus=gated, tracker=tracker_for(settings)).supervised()
    [member] = consumers.members
    consumers.start()
    request = TrainingRequested(
        request_id=f"outage-{run}",
        model_name=f"outage-{run}",
        band_set="ms13",
        epochs=1,
        batch_size=32,
    )
    try:
        await bus.publish(topics.TRAINING_REQUESTS, request)
        await outage.during(gated, "trainer")
        await outage.wait_for(
            lambda: member.progress is not None and member.progress.records > 0,
            "the request's record to be handled after the outage",
        )
        announced = [decode(m) for m in await bus.read_topic(topics.MODELS_REGISTERED, timeout=60)]
        assert announced and {e.id for e in announced} == {announced[0].id}
        event = announced[0]
        assert isinstance(event, ModelVersionRegistered)
        assert (event.request_id, event.version) == (request.request_id, "1")
        versions = mlflow.MlflowClient(tracking).search_model_versions(
            f"name = '{request.model_name}'"
        )
        assert [str(v.version) for v in versions] == ["1"]  # trained and registered once
        assert member.restarts == 0 and consumers.readiness()[0] and consumers.liveness()[0]
        assert await bus.read_dead_letters(limit=5, timeout=5) == []
    finally:
        gated.release.set()
        await consumers.stop()
        await bus.close()
