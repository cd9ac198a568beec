"""MLflow in full, on the real stack's MLflow: ``mlflow run`` on the trainer's MLproject trains
and registers a 13-band small CNN (1 epoch, 10 patches a class) as the trainer's own account; the
run then carries the package version and git commit, TensorBoard event files that parse, the ONNX
file as an ``mlflow.onnx`` model that ``mlflow.pyfunc`` loads and that gives inference's logits
on real windows of a real scene, a version description (the trainer's), and, once the
registry-bridge has gated it (as its own account), the verdict in that description.

One training for the whole module (the module took 3.4-5.6 min on 2 busy shared cores, most of it
`mlflow run` and the gate): the tests read what it logged.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from eostream.shared import provenance, tags
from eostream.shared.deployment import MlflowAccount
from eostream.shared.modelcard import ModelCard

pytestmark = [pytest.mark.stack, pytest.mark.usefixtures("stack_mlflow_globals")]

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "eostream-mlproject-tests"
SAMPLES_PER_CLASS = 10
BOADELLA = "sentinel2_scenes/boadella_l2a_sentinelhub/sentinel_2/Boadella_2020-06-21.tif"
#: the Sentinel Hub crop's band order (its PROVENANCE.md): B8A after B08, no B10
BOADELLA_BANDS = [
    "B01",
    "B02",
    "B03",
    "B04",
    "B05",
    "B06",
    "B07",
    "B08",
    "B8A",
    "B09",
    "B11",
    "B12",
]


def account(service: str) -> MlflowAccount:
    found = MlflowAccount.from_environ(os.environ, service)
    if found is None:
        pytest.fail(
            f"no MLflow account for the {service} in the environment: `deploy/local/stack up`, "
            'then `eval "$(deploy/local/stack env)"`',
            pytrace=False,
        )
    return found


@contextmanager
def logged_in(who: MlflowAccount) -> Iterator[None]:
    """The MLflow client reads its credentials from the environment on every request."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in who.client_env().items():
            mp.setenv(name, value)
        yield


@dataclass(frozen=True)
class ProjectRun:
    run_id: str
    model_name: str
    version: str
    output: str


@pytest.fixture(scope="module")
def project_run(
    mlflow_uri: str, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> ProjectRun:
    """``mlflow run services/trainer -e train --env-manager local`` as the trainer's account."""
    model_name = f"eurosat-mlproject-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        **account("trainer").client_env(),
        # the trainer follows the project's server: no TRAINER_MLFLOW_TRACKING_URI (its default,
        # a sqlite file in the working folder, failed with "Run ... not found")
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "TRAINER_CACHE_DIR": str(tmp_path_factory.mktemp("mlproject-cache")),
        "TRAINER_NUM_THREADS": "2",
        "TRAINER_DEVICE": "cpu",
        "EOSTREAM_DATA_DIR": str(data_dir),
        # the MLproject's command is `python -m eostream.trainer`: this interpreter's
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    # what earlier tests in this process may have left for MLflow (`mlflow run` refuses an
    # experiment id beside --experiment-name)
    leftovers = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")
    for leftover in (*leftovers, "TRAINER_MLFLOW_TRACKING_URI", "TRAINER_MLFLOW_UI_URL"):
        env.pop(leftover, None)
    env.pop(provenance.COMMIT_ENV, None)
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "run",
            "services/trainer",
            "-e",
            "train",
            "--env-manager",
            "local",
            "--experiment-name",
            EXPERIMENT,
            "-P",
            "bands=ms13",  # the 375 real 13-band tifs: a small catalogue, no RGB scaling fit
            "-P",
            "epochs=1",
            "-P",
            f"samples_per_class={SAMPLES_PER_CLASS}",
            "-P",
            "batch_size=32",
            "-P",
            "learning_rate=1e-3",  # MLflow logs it as typed; the trainer's spelling is 0.001
            "-P",
            f"model_name={model_name}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"mlflow run failed:\n{output[-4000:]}"
    found = re.search(r"Run \(ID '([0-9a-f]{32})'\) succeeded", output)
    registered = re.search(rf"registered {model_name} version (\d+)", output)
    assert found and registered, output[-4000:]
    return ProjectRun(found[1], model_name, registered[1], output)


@pytest.fixture(scope="module")
def client(mlflow_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)


def test_mlflow_run_on_the_mlproject_trains_and_registers(
    project_run: ProjectRun, client: MlflowClient
) -> None:
    run = client.get_run(project_run.run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == EXPERIMENT
    assert run.data.tags["mlflow.project.entryPoint"] == "train"
    assert run.data.params["epochs"] == "1"
    assert run.data.params["learning_rate"] == "1e-3"  # as typed: the same value, logged once
    assert run.data.params["samples_per_class"] == str(SAMPLES_PER_CLASS)
    logged = {
        m.name
        for m in mlflow.search_logged_models(
            experiment_ids=[run.info.experiment_id],
            filter_string=f"source_run_id = '{project_run.run_id}'",
            output_format="list",
        )
    }
    assert {"model", "onnx_model"} <= logged
    mv = client.get_model_version(project_run.model_name, project_run.version)
    assert mv.run_id == project_run.run_id and mv.status == "READY"
    assert "test_accuracy" in run.data.metrics
    # best_epoch counts from 1; best_step is the step its val_* figures were logged at
    best = run.data.metrics["best_step"]
    assert best == run.data.metrics["best_epoch"] - 1
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_accuracy")}
    assert history[int(best)] == pytest.approx(run.data.metrics["best_val_accuracy"], abs=1e-3)


def test_every_run_records_the_package_version_and_the_commit(
    project_run: ProjectRun, client: MlflowClient
) -> None:
    run_tags = client.get_run(project_run.run_id).data.tags
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert run_tags[provenance.GIT_COMMIT_TAG] == head
    assert run_tags[provenance.COMMIT_SOURCE_TAG] == "git"
    assert run_tags[provenance.PACKAGE_TAG] == "eostream-trainer"
    assert run_tags[provenance.PACKAGE_VERSION_TAG] == importlib.metadata.version(
        "eostream-trainer"
    )


def test_tensorboard_event_files_are_logged_and_parse(
    project_run: ProjectRun, client: MlflowClient, tmp_path: Path
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = [a.path for a in client.list_artifacts(project_run.run_id, "tensorboard")]
    assert files and all(Path(f).name.startswith("events.out.tfevents.") for f in files), files
    local = Path(client.download_artifacts(project_run.run_id, "tensorboard", str(tmp_path)))
    events = EventAccumulator(str(local))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/accuracy", "val/accuracy"} <= scalars, scalars
    # the same figures as the run's MLflow metric history, epoch by epoch
    history = client.get_metric_history(project_run.run_id, "val_accuracy")
    board = events.Scalars("val/accuracy")
    assert [e.step for e in board] == [m.step for m in history] == [0]
    assert board[0].value == pytest.approx(history[0].value, abs=1e-6)


def test_the_onnx_pyfunc_model_gives_inferences_logits_on_a_real_window(
    project_run: ProjectRun, client: MlflowClient, data_dir: Path, tmp_path: Path
) -> None:
    from eostream.inference.fetch import gdal_env
    from eostream.inference.model import ModelInfo, load_model
    from eostream.inference.scene import SceneReader, prepare_scene
    from eostream.inference.uploads import item_for_raster

    mv = client.get_model_version(project_run.model_name, project_run.version)
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{project_run.run_id}/onnx_model")
    signature = pyfunc.metadata.signature
    assert signature is not None
    [spec_in], [spec_out] = signature.inputs.inputs, signature.outputs.inputs
    assert (spec_in.name, spec_in.type, spec_in.shape) == (
        "input",
        np.dtype("float32"),
        (-1, 13, 64, 64),
    )
    assert (spec_out.name, spec_out.shape) == ("logits", (-1, 10))
    served = Path(
        client.download_artifacts(project_run.run_id, "onnx/model.onnx", str(tmp_path / "a"))
    ).read_bytes()
    pyfunc_file = Path(
        mlflow.artifacts.download_artifacts(
            f"runs:/{project_run.run_id}/onnx_model/model.onnx", dst_path=str(tmp_path / "b")
        )
    )
    requirements = Path(
        mlflow.artifacts.download_artifacts(
            f"runs:/{project_run.run_id}/onnx_model/requirements.txt", dst_path=str(tmp_path / "c")
        )
    ).read_text()
    # serving it needs onnxruntime, not the trainer's workspace (torch, ...)
    assert {r.split("==")[0] for r in requirements.split()} == {
        "mlflow",
        "onnx",
        "onnxruntime",
        "numpy",
    }
    # what inference serves is what pyfunc and `mlflow models serve` run, byte for byte
    expected_sha = mv.tags[tags.ONNX_SHA256]
    assert hashlib.sha256(pyfunc_file.read_bytes()).hexdigest() == expected_sha

    loaded = load_model(
        served,
        ModelInfo(project_run.model_name, project_run.version, run_id=project_run.run_id),
        expected_sha256=expected_sha,
        providers=("CPUExecutionProvider",),
        intra_op_threads=1,
    )
    card = loaded.card
    assert card == ModelCard.from_json(mv.tags[tags.MODEL_CARD])
    # five real 64x64 windows of a real 10 m L2A scene, in the model's units, as inference cuts
    tif = data_dir / BOADELLA
    item = item_for_raster(tif, "boadella-2020-06-21", BOADELLA_BANDS, when="2020-06-21T10:30:00Z")
    href = tmp_path / "item.json"
    href.write_text(json.dumps(item))
    plan = prepare_scene(item, str(href), card, policy="adapt", b10_fill=0.0015)
    with SceneReader(plan, card, gdal_env(None), max_pixels=10**8) as reader:
        strip, invalid = reader.read(128, 192)
    assert not invalid.any()
    windows = np.stack([strip[:, :, c : c + 64] for c in range(0, 320, 64)]).astype(np.float32)
    assert windows.shape == (5, 13, 64, 64) and float(windows.std()) > 0.01  # reflectance

    theirs = loaded.run(windows)
    ours = pyfunc.predict(windows)["logits"]
    assert ours.shape == theirs.shape == (5, 10)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-5)
    assert (ours.argmax(1) == theirs.argmax(1)).all()


async def test_the_version_description_says_what_it_is_and_the_gate_adds_its_verdict(
    project_run: ProjectRun, client: MlflowClient, mlflow_uri: str, data_dir: Path, tmp_path: Path
) -> None:
    from eostream.registry_bridge.bridge import build_bridge
    from eostream.registry_bridge.gating import VERDICT_HEADING
    from eostream.registry_bridge.registry import build_registry
    from eostream.registry_bridge.settings import BridgeSettings
    from eostream.shared.bus.memory import InMemoryBus
    from eostream.shared.storage import build_object_store

    mv = client.get_model_version(project_run.model_name, project_run.version)
    card = ModelCard.from_json(mv.tags[tags.MODEL_CARD])
    params = client.get_run(project_run.run_id).data.params
    text = mv.description or ""
    assert card.architecture in text and "small_cnn" in text
    assert ", ".join(card.bands) in text and ", ".join(card.classes) in text
    assert params["dataset_digest"] in text and params["selection_digest"] in text
    assert f"Trained on {params['n_train']} patches" in text
    assert f"Test accuracy {mv.tags[tags.TEST_ACCURACY]}" in text
    assert VERDICT_HEADING not in text

    settings = BridgeSettings(
        bus="memory",
        store="local",
        local_store_root=tmp_path / "objects",
        mlflow_tracking_uri=mlflow_uri,
        data_dir=data_dir,
        registration_grace_seconds=0,
        holdout={
            "per_class": 5
        },  # a small held-out set: this test reads the verdict, not its score
        auto_promote=False,
        gate_experiment="eostream-mlproject-tests-gate",
    )
    with logged_in(account("bridge")):
        store = build_object_store(settings)
        store.check()
        bridge = build_bridge(
            settings,
            registry=build_registry(settings),
            store=store,
            bus=InMemoryBus(service="registry-bridge"),
        )
        outcome = await bridge.handle_version(project_run.model_name, project_run.version)
    assert outcome.state in ("challenger", "failed"), outcome
    after = client.get_model_version(project_run.model_name, project_run.version)
    verdict = after.tags[tags.GATE]
    described = after.description or ""
    # the trainer's text stays; the verdict and its reasons follow it
    assert described.startswith(text)
    tail = described[len(text) :]
    assert tail.startswith(f"\n\n{VERDICT_HEADING}: {verdict} (no champion)")
    for reason in json.loads(after.tags[tags.GATE_REASONS]):
        assert f"- {reason}" in tail
    # the gate's evaluation run records the bridge's code version too
    gate_run = client.get_run(after.tags[tags.GATE_EVAL_RUN]).data.tags
    assert gate_run[provenance.PACKAGE_TAG] == "eostream-registry-bridge"
    assert (
        gate_run[provenance.GIT_COMMIT_TAG]
        == client.get_run(project_run.run_id).data.tags[provenance.GIT_COMMIT_TAG]
    )
