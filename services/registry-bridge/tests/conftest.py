"""Fixtures for registry-bridge tests: tiny real models registered the way the trainer does.

The trainer's contract (see the service README): the run has ``onnx/model.onnx`` (dynamic batch,
``input`` [N, 3, 64, 64] float32 -> ``logits`` [N, 10], the ModelCard JSON in the ONNX metadata),
the pytorch model under the run's ``model`` path (the registered source), metrics such as
``test_accuracy``, and version tags band_set, input_scaling, training_data_digest,
eostream.model_card and onnx_sha256. "better" is a small CNN trained for a few seconds on 300
real EuroSAT RGB patches (outside the held-out set); "worse" is the same net, untrained.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import onnx
import pytest
import torch
from torch import nn

from eostream.registry_bridge.bridge import Bridge, build_bridge
from eostream.registry_bridge.registry import build_registry
from eostream.registry_bridge.service import BridgeService
from eostream.registry_bridge.settings import BridgeSettings
from eostream.shared import provenance
from eostream.shared.bus import Bus
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.holdout import choose
from eostream.shared.modelcard import (
    BAND_SETS,
    EUROSAT_CLASSES,
    METADATA_KEY,
    BandScaling,
    ModelCard,
)
from eostream.shared.storage import ObjectStore, build_object_store

HOLDOUT_PER_CLASS = 15
HOLDOUT_SALT = "eostream-holdout-v1"
MODEL_NAME = "eurosat-landcover"
# REST credentials of the test bridges: name -> (key, role)
CREDENTIALS = {
    "alice": ("alice-promoter-key-0001", "promoter"),
    "bob": ("bob-promoter-key-000002", "promoter"),
    "vic": ("vic-viewer-key-00000003", "viewer"),
}


def api_keys() -> dict[str, dict[str, str]]:
    return {name: {"key": key, "role": role} for name, (key, role) in CREDENTIALS.items()}


def as_(name: str) -> dict[str, str]:
    """Headers that authenticate as ``name``."""
    return {"X-API-Key": CREDENTIALS[name][0]}


def make_bridge(
    settings: BridgeSettings, bus: Bus | None = None, store: ObjectStore | None = None
) -> Bridge:
    """The bridge on the settings' MLflow and store (or ``store``) and ``bus`` (a fresh
    in-process bus by default), wired the way the entrypoints wire it."""
    if store is None:
        store = build_object_store(settings)
        store.check()
    return build_bridge(
        settings,
        registry=build_registry(settings),
        store=store,
        bus=bus if bus is not None else InMemoryBus(service="registry-bridge"),
    )


def make_service(settings: BridgeSettings, bus: Bus, *, webhooks: bool = True) -> BridgeService:
    """The service around :func:`make_bridge` on ``bus``, which the caller starts and closes."""
    return BridgeService(settings, make_bridge(settings, bus), webhooks=webhooks)


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(4),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.features(x / 255.0)  # normalisation inside the graph
        return logits


def rgb_card(digest: str = "0" * 64) -> ModelCard:
    return ModelCard(
        name=MODEL_NAME,
        band_set="rgb",
        bands=BAND_SETS["rgb"],
        scaling=tuple(
            BandScaling(band=b, scale=255.0 / 0.3, clip_min=0.0, clip_max=255.0)
            for b in BAND_SETS["rgb"]
        ),
        architecture="tiny_cnn",
        training_data_digest=digest,
    )


def export_onnx(
    model: nn.Module, card: ModelCard | None, *, dynamic: bool = True, input_name: str = "input"
) -> bytes:
    buf = io.BytesIO()
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(2, 3, 64, 64),),
            buf,  # type: ignore[arg-type]  # a file object works; the stub says path
            input_names=[input_name],
            output_names=["logits"],
            dynamic_axes={input_name: {0: "N"}, "logits": {0: "N"}} if dynamic else None,
            dynamo=False,
        )
    proto = onnx.load_model_from_string(buf.getvalue())
    if card is not None:
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, card.to_json()
    return bytes(proto.SerializeToString())


@dataclass
class Models:
    better: nn.Module
    worse: nn.Module
    training_digest: str


@pytest.fixture(scope="session")
def models(data_dir: Path) -> Models:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    held = set(
        choose(
            {
                c: [p.name for p in (data_dir / "eurosat_rgb" / c).glob("*.jpg")]
                for c in EUROSAT_CLASSES
            },
            HOLDOUT_PER_CLASS,
            HOLDOUT_SALT,
        )
    )
    from PIL import Image

    xs, ys, names = [], [], []
    for i, cls in enumerate(EUROSAT_CLASSES):
        files = [
            p for p in sorted((data_dir / "eurosat_rgb" / cls).glob("*.jpg")) if p.name not in held
        ][:30]
        for f in files:
            with Image.open(f) as img:
                xs.append(np.asarray(img.convert("RGB"), dtype=np.float32).transpose(2, 0, 1))
            ys.append(i)
            names.append(f.name)
    x, y = torch.tensor(np.stack(xs)), torch.tensor(ys)
    better = TinyCNN()
    opt = torch.optim.Adam(better.parameters(), lr=1e-2)
    for _ in range(12):
        perm = torch.randperm(len(x))
        for b in range(0, len(x), 64):
            idx = perm[b : b + 64]
            opt.zero_grad()
            torch.autograd.backward(nn.functional.cross_entropy(better(x[idx]), y[idx]))
            opt.step()
    better.eval()
    torch.manual_seed(1)
    worse = TinyCNN().eval()
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()
    return Models(better=better, worse=worse, training_digest=digest)


@pytest.fixture
def tracking_uri(sqlite_mlflow: str) -> Iterator[str]:
    """This test's sqlite MLflow (a copy of the session's template), set as MLflow's global."""
    uri = sqlite_mlflow
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(previous)


Register = Callable[..., str]
FIXTURE_EXPERIMENT = "trainer-fixture"


def register_version(
    tracking_uri: str,
    model: nn.Module,
    *,
    name: str = MODEL_NAME,
    onnx_bytes: bytes | None = None,
    with_onnx: bool = True,
    card: ModelCard | None = None,
    tags: dict[str, str] | None = None,
    pt2: bool = False,
    test_accuracy: float = 0.5,
) -> str:
    """Log and register one version following the trainer's contract; returns the version."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    card = card or rgb_card()
    data = onnx_bytes if onnx_bytes is not None else export_onnx(model, card)
    if mlflow.get_experiment_by_name(FIXTURE_EXPERIMENT) is None:  # its artifacts beside the db,
        mlflow.create_experiment(  # not in ./mlruns of the folder pytest runs in
            FIXTURE_EXPERIMENT, artifact_location=provenance.artifacts_beside(tracking_uri)
        )
    mlflow.set_experiment(FIXTURE_EXPERIMENT)
    with mlflow.start_run() as run, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.log_metric("test_accuracy", test_accuracy)
        kwargs: dict[str, Any] = {"pip_requirements": ["torch"]}
        if pt2:
            kwargs["input_example"] = np.zeros((2, 3, 64, 64), dtype=np.float32)
        else:
            kwargs["serialization_format"] = "pickle"
        info = mlflow.pytorch.log_model(model, name="model", **kwargs)
        if with_onnx:
            client = mlflow.MlflowClient()
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.onnx"
                path.write_bytes(data)
                client.log_artifact(run.info.run_id, str(path), "onnx")
    version_tags = {
        "band_set": card.band_set,
        "input_scaling": card.model_dump_json(include={"scaling"}),
        "training_data_digest": card.training_data_digest or "",
        "eostream.model_card": card.to_json(),
        "onnx_sha256": hashlib.sha256(data).hexdigest(),
        **(tags or {}),
    }
    mv = mlflow.register_model(info.model_uri, name, tags=version_tags)
    return str(mv.version)


@pytest.fixture
def register(tracking_uri: str) -> Register:
    def _register(model: nn.Module, **kwargs: Any) -> str:
        return register_version(tracking_uri, model, **kwargs)

    return _register


@pytest.fixture
def bridge_settings(tracking_uri: str, tmp_path: Path, data_dir: Path) -> BridgeSettings:
    return BridgeSettings(
        bus="memory",
        store="local",
        local_store_root=tmp_path / "objects",
        bucket="eostream",
        mlflow_tracking_uri=tracking_uri,
        data_dir=data_dir,
        holdout={"per_class": HOLDOUT_PER_CLASS, "salt": HOLDOUT_SALT},
        gate={"min_accuracy": 0.2, "max_class_drop": 0.5, "min_improvement": 0.0},
        # the int8 variant costs ~3 s per shipment: off here, on in test_int8.py
        int8={"enabled": False},
        registration_grace_seconds=0,
        reconcile_interval_seconds=0.5,
        retry_attempts=2,
        retry_backoff_seconds=0.05,
        api_keys=api_keys(),
    )


@pytest.fixture
def card() -> ModelCard:
    return rgb_card()


@pytest.fixture
def export() -> Callable[..., bytes]:
    return export_onnx


@pytest.fixture(scope="session")
def register_to() -> Callable[..., str]:
    """register_version(tracking_uri, model, ...) for tests on other MLflow instances."""
    return register_version
