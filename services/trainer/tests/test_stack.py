"""CI smoke test on the real stack: a TrainingRequested on real Kafka trains a small CNN on a real
RGB subset, tracked and registered in the real MLflow server (artifacts in MinIO through the
server's proxy); the registered version scores >= 70 % on held-out patches and its ONNX artifact
agrees with torch."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from eostream.shared import topics
from eostream.shared.bus.kafka import KafkaBus
from eostream.shared.events import Event, ModelVersionRegistered, TrainingRequested, TrainingStarted
from eostream.shared.modelcard import ModelCard
from eostream.shared.settings import KafkaSettings
from eostream.trainer.catalog import build_catalog
from eostream.trainer.datasets import load_patches
from eostream.trainer.export import onnx_logits, read_card
from eostream.trainer.pipeline import tracker_for
from eostream.trainer.scoring import evaluate
from eostream.trainer.selection import SelectionSpec, select_for_training
from eostream.trainer.service import build_trainer
from eostream.trainer.settings import TrainerSettings

from .helpers import wait_until

pytestmark = pytest.mark.stack

SAMPLES_PER_CLASS = 300
SEED = 42


async def test_training_on_the_real_stack(
    kafka_bootstrap: str, mlflow_uri: str, data_dir: Path, trainer_cache: Path, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    # topics of its own: a new consumer group starts at the earliest record, and the shared
    # broker's plain `eostream.training.requests` holds every earlier run's requests, which the
    # worker would otherwise train (or look up) one by one before reaching this one
    kafka = KafkaSettings(
        bootstrap_servers=kafka_bootstrap,
        client_id=f"trainer-test-{run}",
        topic_prefix=f"trainer{run}.",
    )
    settings = TrainerSettings(
        bus="kafka",
        kafka=kafka,
        data_dir=data_dir,
        cache_dir=trainer_cache,
        mlflow_tracking_uri=mlflow_uri,
        experiment_name="eostream-trainer-ci",
        num_threads=2,
        device="cpu",
        consumer_group=f"trainer-test-{run}",
    )
    bus = KafkaBus(kafka, service="trainer")
    await bus.start()
    seen: list[Event] = []
    request = TrainingRequested(
        request_id=f"ci-smoke-{run}",
        model_name="eurosat-ci-smoke",
        band_set="rgb",
        architecture="small_cnn",
        epochs=6,  # 0.770 on the held-out patches on 2026-12-05 (10 epochs: 25 s more)
        batch_size=32,
        learning_rate=3e-3,
        samples_per_class=SAMPLES_PER_CLASS,
        seed=SEED,
        requested_by="test_stack",
    )

    async def listen(event: Event, _delivery: object) -> None:
        if getattr(event, "request_id", None) == request.request_id:
            seen.append(event)

    worker = build_trainer(settings, bus=bus, tracker=tracker_for(settings)).consumer()
    listener = bus.consumer(
        [topics.TRAINING_EVENTS, topics.MODELS_REGISTERED], f"trainer-test-listener-{run}", listen
    )
    tasks = [asyncio.create_task(worker.run()), asyncio.create_task(listener.run())]
    try:
        await bus.publish(topics.TRAINING_REQUESTS, request)
        await wait_until(
            lambda: any(isinstance(e, TrainingStarted) for e in seen), 120, "TrainingStarted"
        )
        await wait_until(
            lambda: any(isinstance(e, ModelVersionRegistered) for e in seen),
            600,
            "ModelVersionRegistered",
        )
    finally:
        for consumer in (worker, listener):
            await consumer.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        await bus.close()
    started = next(e for e in seen if isinstance(e, TrainingStarted))
    registered = next(e for e in seen if isinstance(e, ModelVersionRegistered))
    assert started.run_url.startswith(mlflow_uri.rstrip("/")) and started.run_id in started.run_url
    assert registered.run_id == started.run_id

    # the registered version, read back from MLflow, scores on the held-out patches
    tracker = tracker_for(settings)
    tracker.configure()
    model, card = tracker.load_base(f"models:/{registered.name}/{registered.version}")
    table = build_catalog(data_dir, trainer_cache, "rgb")
    spec = SelectionSpec("rgb", samples_per_class=SAMPLES_PER_CLASS, seed=SEED)
    selection = select_for_training(table, spec, data_dir, settings.gate_holdout)
    assert len(selection.spec.exclude) == 300  # the gate's held-out patches: never trained on
    test = load_patches(data_dir, "rgb", selection.of("test"))
    torch.set_num_threads(2)
    accuracy = evaluate(model, test, torch.device("cpu"))["accuracy"]
    assert accuracy >= 0.70, f"held-out accuracy {accuracy:.3f} on {len(test)} patches"

    tags = tracker.version_tags(registered.name, registered.version)
    assert tags["training_data_digest"] == selection.digest == card.training_data_digest
    assert ModelCard.from_json(tags["eostream.model_card"]) == card
    onnx_path = tracker.download_artifact(registered.run_id, "onnx/model.onnx", tmp_path)
    assert hashlib.sha256(onnx_path.read_bytes()).hexdigest() == tags["onnx_sha256"]
    assert read_card(onnx_path) == card
    with torch.no_grad():
        expected = model.eval()(test.x).numpy()
    got = onnx_logits(onnx_path, test.x.numpy())
    assert float(np.abs(got - expected).max()) < 1e-3
    assert (got.argmax(1) == expected.argmax(1)).all()
