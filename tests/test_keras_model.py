"""Issue 19: a Keras 3 model (torch backend, no TensorFlow) through the whole path.

``eostream trainer fit --family keras`` trains it on the real EuroSAT MS patches the gate does not
hold out (2 epochs, seconds) and registers it in the real stack's MLflow (its own experiment and
model name), with mlflow.keras autologging in the run. The registry-bridge gates, promotes and
ships it and inference classifies the data folder's real 29RKH scene with it (both embedded, on
one in-process bus, against the same MLflow; ingest announces the scene). The result item and
the model's MLM item name the library.

The gate's accuracy floor is 0: a two-epoch model on ~190 patches is no good map-maker, and what
this test is about is that a keras model passes everything else the gate checks (the contract,
the card, the ONNX's sha256, ONNX vs the registered keras model on held-out patches).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import mlflow
import pytest
from mlflow.tracking import MlflowClient

from eostream.runner.demo import demo_options
from eostream.shared import mlm, tags, topics
from eostream.shared.bus.base import RetryPolicy
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.codec import decode
from eostream.shared.embedded import EmbeddedContext, EmbeddedSystem, discover_components
from eostream.shared.events import ModelPromoted, SceneClassified
from eostream.shared.holdout import DEFAULT_SALT
from eostream.shared.modelcard import ModelCard
from eostream.shared.storage.local import LocalObjectStore

pytestmark = [
    pytest.mark.stack,
    pytest.mark.slow,
    pytest.mark.timeout(1200),
    pytest.mark.usefixtures("stack_mlflow_globals"),
]

SCENE = "S2A_29RKH_20200219_0_L2A"  # the data folder's full scene: ingest's embedded default
EXPERIMENT = "eostream-keras-e2e"
EPOCHS = 2
EOSTREAM = [sys.executable, "-c", "from eostream.runner.cli import main; main()"]
#: the gate's hold-out (10 MS patches a class, 100 in all), left out of training by the trainer
#: (at 15 a class it would be half of Pasture's 30, and the trainer would train on it anyway)
HOLDOUT_PER_CLASS = 10


def events(bus: InMemoryBus, topic: str) -> list[object]:
    return [decode(m) for m in bus._logs[topic]]


async def wait_for(bus: InMemoryBus, topic: str, kind: type, what: str, timeout: float) -> object:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found = [e for e in events(bus, topic) if isinstance(e, kind)]
        if found:
            return found[-1]
        letters = await bus.read_dead_letters(limit=20)
        assert not letters, f"dead-lettered while waiting for {what}: {letters}"
        assert loop.time() < deadline, f"no {what} within {timeout:.0f}s"
        await asyncio.sleep(0.5)


async def test_a_keras_model_is_trained_gated_promoted_shipped_and_maps_a_real_scene(
    mlflow_uri: str,
    data_dir: Path,
    tmp_path: Path,
) -> None:
    name = f"keras-e2e-{uuid.uuid4().hex[:8]}"
    trainer_env = {
        "TRAINER_MLFLOW_TRACKING_URI": mlflow_uri,
        "TRAINER_EXPERIMENT_NAME": EXPERIMENT,
        "TRAINER_DATA_DIR": str(data_dir),
        "TRAINER_CACHE_DIR": str(tmp_path / "trainer-cache"),
        "TRAINER_DEVICE": "cpu",
        "TRAINER_NUM_THREADS": "2",
        "TRAINER_GATE_HOLDOUT__PER_CLASS": str(HOLDOUT_PER_CLASS),
    }
    words = ["fit", "--family", "keras", "--bands", "ms13", "--epochs", str(EPOCHS)]
    words += ["--batch-size", "32", "--learning-rate", "0.003", "--model-name", name]
    fit = subprocess.run(  # `eostream trainer fit --family keras ...`, with this interpreter
        [*EOSTREAM, "trainer", *words],
        env={**os.environ, **trainer_env},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert fit.returncode == 0, fit.stdout + fit.stderr
    assert f"registered {name} version 1" in fit.stdout

    # MLflow: the card names keras, the model is the keras flavour, keras' fit was autologged
    # both URIs explicit: other tests in this process may have set a global registry URI
    client = MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
    version = client.get_model_version(name, "1")
    assert version.source is not None and version.run_id is not None
    card = ModelCard.from_json(version.tags[tags.MODEL_CARD])
    assert (card.library, card.band_set, card.architecture) == ("keras", "ms13", "small_cnn")
    assert card.library_version.startswith("3.")
    assert version.tags[tags.GATE_HOLDOUT_EXCLUDED] == "true"
    assert "keras" in mlflow.models.get_model_info(version.source).flavors
    run = client.get_run(version.run_id)
    assert run.data.tags["eostream.family"] == "keras"
    assert float(run.data.params["optimizer_learning_rate"]) == pytest.approx(0.003)
    epochs_run = int(run.data.metrics["epochs_run"])
    assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == epochs_run

    # the bridge gates, promotes and ships it; ingest announces the scene; inference maps it
    home = tmp_path / "home"
    bus = InMemoryBus(service="embedded", policy=RetryPolicy(max_retries=0, backoff_seconds=0.01))
    context = EmbeddedContext(
        bus=bus,
        store=LocalObjectStore(tmp_path / "objects", "eostream"),
        home=home,
        mlflow_tracking_uri=mlflow_uri,
        data_dir=data_dir,
        options={
            "registry-bridge": {
                "model_names": [name],
                "reconcile_interval_seconds": 1.0,
                "registration_grace_seconds": 0,
                "holdout": {"per_class": HOLDOUT_PER_CLASS, "salt": DEFAULT_SALT},
                "gate": {"min_accuracy": 0.0},
            },
            "inference": {
                # the scene item names the public bucket; its files are in the data folder
                **demo_options(data_dir)["inference"],
                "model_name": name,
                "stride": 64,
                "intra_op_threads": 2,
                "model_wait_seconds": 600,
            },
            "ingest": {"poll_interval_seconds": 5.0},
        },
    )
    factories = {k: f for k, f in discover_components().items() if k != "trainer"}
    async with EmbeddedSystem(context, factories) as system:
        promoted = await wait_for(bus, topics.MODELS_PROMOTED, ModelPromoted, "promotion", 300)
        assert isinstance(promoted, ModelPromoted)
        assert (promoted.name, promoted.version) == (name, "1")
        done = await wait_for(bus, topics.SCENES_CLASSIFIED, SceneClassified, "a map", 600)
        assert isinstance(done, SceneClassified)
        assert (done.item_id, done.model_version) == (SCENE, "1")
        api = system.urls()["inference REST API"]
        async with httpx.AsyncClient(base_url=api, timeout=30) as http:
            listed = (await http.get("/results", params={"scene_id": SCENE})).json()
            (result,) = listed["results"]
            item = (await http.get(result["links"]["item"])).json()
    assert item["properties"]["eostream:model_library"] == "keras"
    assert item["properties"]["eostream:model_name"] == name

    # the shipped model's MLM item, in the bridge's models catalogue
    (path,) = (home / "registry-bridge" / "stac").rglob(f"{mlm.item_id(name, '1')}.json")
    mlm_item = json.loads(path.read_text())
    assert mlm_item["properties"]["eostream:library"] == "keras"
