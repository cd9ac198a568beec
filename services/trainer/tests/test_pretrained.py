"""A pretrained start: a checkpoint file the test makes itself (torchvision's ResNet-18 with
seeded random weights, saved as torchvision saves its ImageNet weights) is loaded into the
backbone, frozen or trained at a lower backbone rate, recorded in the card and the MLM item, and
bad files or requests are refused with one line."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch
import torchvision  # type: ignore[import-untyped]
from mlflow import MlflowClient
from typer.testing import CliRunner

from eostream.shared import mlm, tags
from eostream.shared.checkpoints import CHECKPOINTS, checkpoint_dir, checkpoint_path
from eostream.shared.events import TrainingRequested
from eostream.shared.modelcard import BAND_SETS, ModelCard
from eostream.trainer import labelled
from eostream.trainer.catalog import CatalogTable
from eostream.trainer.cli import app
from eostream.trainer.datasets import PatchTensors, band_statistics, load_patches
from eostream.trainer.errors import BadTrainingRequestError
from eostream.trainer.models import EuroSATNet, build_model
from eostream.trainer.pipeline import tracker_for, train_and_register
from eostream.trainer.plan import plan_training
from eostream.trainer.pretrained import load_pretrained, resolve_pretrained
from eostream.trainer.scaling import identity_scaling
from eostream.trainer.selection import SelectionSpec, select
from eostream.trainer.settings import TrainerSettings
from eostream.trainer.start import pretrained_start
from eostream.trainer.task import TrainConfig, fit, param_groups


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(123)
    net = torchvision.models.resnet18(weights=None)  # 1000 classes, 3 bands: ImageNet's shapes
    path = tmp_path_factory.mktemp("ckpt") / "resnet18-test.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def ms_train(ms_table: CatalogTable, data_dir: Path) -> PatchTensors:
    """16 real EuroSAT MS patches (the MS catalogue is quick to build)."""
    selection = select(ms_table, SelectionSpec("ms13", samples_per_class=10, seed=3))
    train = load_patches(data_dir, "ms13", selection.of("train"))
    return PatchTensors(train.x[:16], train.y[:16], train.ids[:16])


def _model(band_set: str, train: PatchTensors | None = None) -> EuroSATNet:
    bands = BAND_SETS[band_set]
    if train is None:
        mean, std = [0.0] * len(bands), [1.0] * len(bands)
    else:
        mean, std = band_statistics(train.x)
    return build_model("resnet18_imagenet", bands, mean, std)


def _request(**kw: object) -> TrainingRequested:
    base: dict[str, object] = {"band_set": "rgb", "architecture": "resnet18_imagenet"}
    return TrainingRequested.model_validate({**base, **kw})


def test_loaded_backbone_is_the_checkpoint(checkpoint: Path) -> None:
    state = torch.load(checkpoint, weights_only=True)
    rgb = _model("rgb")
    loaded = load_pretrained(rgb, resolve_pretrained(str(checkpoint)))
    mine = rgb.backbone.state_dict()
    assert "conv1.weight" in loaded and not any(k.startswith("fc.") for k in loaded)
    for key in loaded:  # RGB: conv1 too, B04/B03/B02 = ImageNet's R/G/B
        assert torch.equal(mine[key], state[key]), key
    assert mine["fc.weight"].shape == (10, 512)  # a new head for EuroSAT's classes

    ms = _model("ms13")
    load_pretrained(ms, resolve_pretrained(str(checkpoint)))
    conv1 = ms.backbone.state_dict()["conv1.weight"]
    bands = list(BAND_SETS["ms13"])
    scale = 3 / len(bands)
    for channel, band in enumerate(("B04", "B03", "B02")):
        assert torch.allclose(
            conv1[:, bands.index(band)], state["conv1.weight"][:, channel] * scale
        )
    mean = state["conv1.weight"].mean(dim=1) * scale
    assert torch.allclose(conv1[:, bands.index("B08")], mean)
    assert torch.equal(
        ms.backbone.state_dict()["layer4.1.bn2.weight"], state["layer4.1.bn2.weight"]
    )


def test_frozen_backbone_only_the_head_changes(checkpoint: Path, ms_train: PatchTensors) -> None:
    plan = plan_training(
        _request(band_set="ms13", pretrained=str(checkpoint), freeze_backbone=True)
    )
    model = _model("ms13", ms_train)
    source = pretrained_start(plan, model)
    assert source is not None and source.sha256 in source.description
    before = {k: v.clone() for k, v in model.named_parameters()}
    fit(
        model,
        ms_train,
        ms_train,
        TrainConfig(epochs=1, batch_size=16, augment=False),
        torch.device("cpu"),
    )
    changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    assert changed == {"backbone.fc.weight", "backbone.fc.bias"}


def test_backbone_learning_rate_scale_makes_two_groups(checkpoint: Path) -> None:
    model = _model("rgb")
    load_pretrained(model, resolve_pretrained(str(checkpoint)))
    groups = param_groups(model, TrainConfig(learning_rate=1e-3, backbone_lr_scale=0.1))
    assert [g["lr"] for g in groups] == pytest.approx([1e-4, 1e-3])
    head = {id(p) for p in model.backbone.get_submodule("fc").parameters()}
    assert {id(p) for p in groups[1]["params"]} == head
    assert len(groups[0]["params"]) == len(list(model.parameters())) - 2
    assert len(param_groups(model, TrainConfig())) == 1


def test_card_and_mlm_item_record_the_source(checkpoint: Path) -> None:
    source = resolve_pretrained(str(checkpoint))
    card = ModelCard(
        name="m",
        band_set="rgb",
        bands=BAND_SETS["rgb"],
        scaling=identity_scaling("rgb"),
        architecture="resnet18_imagenet",
        pretrained_source=source.description,
    )
    facts = mlm.MlmFacts(
        name="m", version="1", card=ModelCard.from_json(card.to_json()),
        artifact_href="s3://x/model.onnx", sha256="0" * 64, size=1,
        created=datetime(2026, 12, 2, tzinfo=UTC),
    )  # fmt: skip
    props = mlm.build_item(facts, "s3://x/item.json")["properties"]
    assert props["mlm:pretrained"] is True
    assert props["mlm:pretrained_source"] == f"{checkpoint.resolve()} sha256:{source.sha256}"


def test_bad_checkpoints_are_refused(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(BadTrainingRequestError, match="neither a known checkpoint"):
        resolve_pretrained(str(tmp_path / "nope.pth"))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(checkpoint.read_bytes()[:100_000])  # a truncated download
    with pytest.raises(BadTrainingRequestError, match="not a torch state dict"):
        load_pretrained(_model("rgb"), resolve_pretrained(str(corrupt)))
    other = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), other)
    with pytest.raises(BadTrainingRequestError, match="does not fit resnet18_imagenet"):
        load_pretrained(_model("rgb"), resolve_pretrained(str(other)))


def test_registered_checkpoint_is_checked_in_the_cache(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EOSTREAM_CACHE", str(tmp_path))
    with pytest.raises(BadTrainingRequestError, match="eostream data checkpoint resnet18-imagenet"):
        resolve_pretrained("resnet18-imagenet")
    path = checkpoint_path(CHECKPOINTS["resnet18-imagenet"])
    path.parent.mkdir(parents=True)
    path.write_bytes(checkpoint.read_bytes())  # not torchvision's file: its digest is wrong
    with pytest.raises(BadTrainingRequestError, match="expected f37072fd"):
        resolve_pretrained("resnet18-imagenet")


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"freeze_backbone": True}, "need a pretrained checkpoint"),
        ({"pretrained": "x", "architecture": "small_cnn"}, "needs the torch family"),
        ({"pretrained": "x", "base_model": "models:/m/1"}, "exclude each other"),
        ({"pretrained": "x", "freeze_backbone": True, "backbone_lr_scale": 0.1}, "frozen"),
    ],
)
def test_bad_pretrained_requests_are_refused(fields: dict[str, object], problem: str) -> None:
    with pytest.raises(BadTrainingRequestError, match=problem):
        plan_training(_request(**fields))


@pytest.mark.slow
def test_a_pretrained_run_records_its_checkpoint(
    checkpoint: Path, sqlite_settings: TrainerSettings
) -> None:
    """The whole path (sqlite MLflow): run tag and param, and the registered card."""
    tracker = tracker_for(sqlite_settings)
    plan = plan_training(
        _request(
            request_id="pretrained-start", model_name="pretrained-ms", band_set="ms13",
            epochs=1, samples_per_class=10, batch_size=64, pretrained=str(checkpoint),
            backbone_lr_scale=0.1,
        )
    )  # fmt: skip
    outcome = train_and_register(plan, sqlite_settings, tracker=tracker)
    card = ModelCard.from_json(outcome.version.tags[tags.MODEL_CARD])
    source = resolve_pretrained(str(checkpoint))
    assert card.pretrained_source == source.description
    run = MlflowClient(sqlite_settings.mlflow_tracking_uri).get_run(outcome.version.run_id)
    assert run.data.tags["eostream.pretrained"] == source.description
    assert run.data.params["pretrained"] == str(checkpoint)
    assert float(run.data.params["backbone_lr_scale"]) == 0.1


def test_fit_refuses_a_missing_checkpoint_in_one_line(
    sqlite_settings: TrainerSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAINER_MLFLOW_TRACKING_URI", sqlite_settings.mlflow_tracking_uri)
    monkeypatch.setenv("TRAINER_CACHE_DIR", str(tmp_path / "cache"))
    missing = tmp_path / "missing.pth"
    words = ["fit", "--bands", "ms13", "--architecture", "resnet18_imagenet"]
    result = CliRunner().invoke(app, [*words, "--pretrained", str(missing)])
    assert result.exit_code == 2, result.output
    assert f"pretrained '{missing}' is neither a known checkpoint" in result.output
    assert "Traceback" not in result.output


def test_a_request_off_the_bus_names_a_checkpoint_file_in_the_allowed_folders(
    checkpoint: Path, tmp_path: Path
) -> None:
    """A TrainingRequested could name any file the trainer's machine holds (it read it and
    recorded its digest); off the bus a file must lie in ``pretrained_dirs``, through links too.
    A registry name stays allowed; ``trainer fit --pretrained`` (a local user) takes any file."""
    settings = TrainerSettings(bus="memory", pretrained_dirs=(checkpoint.parent,))
    allowed = _request(band_set="ms13", pretrained=str(checkpoint))
    assert labelled.request_plan(allowed, settings).pretrained == str(checkpoint)
    assert labelled.request_plan(_request(band_set="ms13"), settings).pretrained is None
    registry = _request(band_set="ms13", pretrained="resnet18-imagenet")
    assert labelled.request_plan(registry, settings).pretrained == "resnet18-imagenet"
    link = checkpoint.parent / "elsewhere.pth"
    link.unlink(missing_ok=True)
    link.symlink_to(tmp_path / "x.pth")
    outside = [
        "/etc/passwd",
        str(tmp_path / "x.pth"),
        f"{checkpoint.parent}/../{tmp_path.name}/x.pth",
        str(link),
    ]
    for source in outside:
        request = _request(band_set="ms13", pretrained=source)
        with pytest.raises(BadTrainingRequestError, match=r"must lie in .*TRAINER_PRETRAINED_DIRS"):
            labelled.request_plan(request, settings)
    default = TrainerSettings(bus="memory")
    assert default.pretrained_dirs == (checkpoint_dir(),)


def test_pretrained_dirs_are_a_path_list_or_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """``TRAINER_PRETRAINED_DIRS=/models`` was refused (JSON only) and ``~`` never expanded."""
    for value in ("/models:~/ckpt", '["/models", "~/ckpt"]'):
        monkeypatch.setenv("TRAINER_PRETRAINED_DIRS", value)
        dirs = TrainerSettings(bus="memory").pretrained_dirs
        assert dirs == (Path("/models"), Path.home() / "ckpt"), value
