"""Transfer learning through the registry: a 13-band model fine-tuned from a registered RGB model
(models:/NAME/VERSION), its first conv widened with the RGB filters at B04/B03/B02; and a
fine-tuned model is never scored on the patches its base trained on."""

from __future__ import annotations

import csv
import json
import re
import tempfile
from functools import partial
from pathlib import Path

import mlflow
import pytest
import torch
from typer.testing import CliRunner

from eostream.shared.modelcard import BAND_SETS, EUROSAT_CLASSES
from eostream.trainer.catalog import build_catalog
from eostream.trainer.cli import app as trainer_app
from eostream.trainer.pipeline import tracker_for, train_and_register
from eostream.trainer.plan import TrainingPlan
from eostream.trainer.selection import (
    SelectionSpec,
    group_key_sql,
    select,
    select_for_training,
    training_keys,
)
from eostream.trainer.settings import TrainerSettings
from eostream.trainer.tracking import Tracker


@pytest.mark.slow
def test_fine_tune_ms13_from_registered_rgb(sqlite_settings: TrainerSettings) -> None:
    tracker = tracker_for(sqlite_settings)
    rgb = train_and_register(
        TrainingPlan(
            request_id="rgb-base",
            model_name="base-rgb",
            band_set="rgb",
            epochs=1,
            samples_per_class=20,
            batch_size=32,
        ),
        sqlite_settings,
        tracker=tracker,
    )
    base_uri = f"models:/{rgb.version.name}/{rgb.version.version}"
    base, base_card = tracker.load_base(base_uri)
    # started from an alias: the lineage names the version it pointed at (the alias moves on)
    tracker.client.set_registered_model_alias(rgb.version.name, "champion", rgb.version.version)
    ms = train_and_register(
        TrainingPlan(
            request_id="ms-tuned",
            model_name="tuned-ms",
            band_set="ms13",
            epochs=1,
            samples_per_class=20,
            batch_size=32,
            base_model=f"models:/{rgb.version.name}@champion",
        ),
        sqlite_settings,
        tracker=tracker,
    )
    tuned, card = tracker.load_base(f"models:/{ms.version.name}/{ms.version.version}")
    assert card.band_set == "ms13" and card.bands == BAND_SETS["ms13"]
    # where it started is on its card, its run and its version's description
    assert card.pretrained_source == base_uri
    assert tracker.client.get_run(ms.version.run_id).data.tags["eostream.pretrained"] == base_uri
    described = tracker.client.get_model_version(ms.version.name, ms.version.version).description
    assert f"Started from {base_uri}." in (described or "")
    assert base_card.band_set == "rgb" and base_card.scaling[0].scale > 100  # JPEG units
    assert tuned.first_conv.in_channels == 13 and base.first_conv.in_channels == 3
    # one epoch of fine-tuning moves the RGB filters only a little from where they started
    rgb_positions = [BAND_SETS["ms13"].index(b) for b in BAND_SETS["rgb"]]
    moved = (tuned.first_conv.weight[:, rgb_positions] - base.first_conv.weight).abs().mean()
    assert float(moved) < float(base.first_conv.weight.abs().mean())
    assert torch.isfinite(tuned(torch.rand(2, 13, 64, 64) * 0.3)).all()


def _split_rows(tracker: Tracker, run_id: str) -> list[dict[str, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id,
            artifact_path="dataset/split.csv",
            dst_path=tmp,
            tracking_uri=tracker.tracking_uri,
        )
        with open(path, newline="") as f:
            return list(csv.DictReader(f))


@pytest.mark.slow
def test_a_fine_tuned_model_is_never_scored_on_what_its_base_trained_on(
    sqlite_settings: TrainerSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fine-tuning with another seed drew a new split: 41 of the tuned model's 51 test patches
    had trained its base, and its test accuracy rose by 0.08 with nothing said. And `trainer
    evaluate` scored a version on the seed-42 split whatever it trained with (and an ms13
    version on RGB patches: a traceback)."""
    tracker = tracker_for(sqlite_settings)
    common = partial(TrainingPlan, band_set="ms13", epochs=1, batch_size=32)
    base = train_and_register(
        common(request_id="base-7", model_name="base-ms", seed=7),
        sqlite_settings,
        tracker=tracker,
    )
    uri = f"models:/base-ms/{base.version.version}"
    seen = set(tracker.training_keys_of(uri))
    assert seen == set(training_keys(_split_rows(tracker, base.version.run_id)))
    table = build_catalog(sqlite_settings.data_dir, sqlite_settings.cache_dir, "ms13")
    spec = SelectionSpec(band_set="ms13", seed=42)
    drawn = select_for_training(table, spec, sqlite_settings.data_dir, sqlite_settings.gate_holdout)
    unseen = drawn.of("val") + drawn.of("test")
    assert {f"{p.class_name}/{Path(p.href).stem}" for p in unseen} & seen  # seed 42 alone would

    tuned = train_and_register(
        common(request_id="tuned-42", model_name="tuned-ms", seed=42, base_model=uri),
        sqlite_settings,
        tracker=tracker,
    )
    rows = _split_rows(tracker, tuned.version.run_id)
    scored = {f"{r['class']}/{Path(r['href']).stem}" for r in rows if r["split"] != "train"}
    assert scored and not scored & seen
    params = tracker.client.get_run(tuned.version.run_id).data.params
    assert params["base_model_train_patches"] == str(len(seen))
    kept = {f"{r['class']}/{Path(r['href']).stem}" for r in rows if r["split"] == "train"}
    assert params["base_model_patches_in_train"] == str(len(kept & seen))
    assert params["base_model_patches_held_out"] == "0"
    # the test confusion matrix as counts, beside its picture
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(
            run_id=tuned.version.run_id,
            artifact_path="evaluation/test_confusion_matrix.json",
            dst_path=tmp,
            tracking_uri=tracker.tracking_uri,
        )
        counts = json.loads(Path(path).read_text())
    assert counts["classes"] == list(EUROSAT_CLASSES)
    assert sum(map(sum, counts["matrix"])) == sum(1 for r in rows if r["split"] == "test")

    # `trainer evaluate`: the version's own test split by default, its figure the run's
    monkeypatch.setenv("TRAINER_MLFLOW_TRACKING_URI", sqlite_settings.mlflow_tracking_uri)
    monkeypatch.setenv("TRAINER_EXPERIMENT_NAME", sqlite_settings.experiment_name)
    monkeypatch.setenv("TRAINER_CACHE_DIR", str(sqlite_settings.cache_dir))
    monkeypatch.setenv("EOSTREAM_DATA_DIR", str(sqlite_settings.data_dir))
    # as `mlflow run -e evaluate` runs it: into the project's run, with what it scored and the
    # code that scored it
    mlflow.set_tracking_uri(sqlite_settings.mlflow_tracking_uri)
    with mlflow.start_run(experiment_id=tracker.experiment_id) as project:
        pass
    monkeypatch.setenv("MLFLOW_RUN_ID", project.info.run_id)
    own = CliRunner().invoke(trainer_app, ["evaluate", "--model-uri", uri])
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)  # mlflow drops it as the run ends
    assert own.exit_code == 0, own.output
    logged = mlflow.get_run(project.info.run_id)
    assert logged.data.params["evaluated_model"] == uri and "test_accuracy" in logged.data.metrics
    assert logged.data.tags["eostream.package"] == "eostream-trainer"
    assert logged.inputs is not None
    [evaluated] = logged.inputs.dataset_inputs
    assert evaluated.dataset.name == "eurosat-ms13-evaluated"
    tested = sum(1 for r in _split_rows(tracker, base.version.run_id) if r["split"] == "test")
    assert f"test accuracy {base.metrics['test_accuracy']:.4f} on {tested} patches" in own.stdout
    assert f"the test split it was trained with, run {base.version.run_id}" in own.stdout
    anew = CliRunner().invoke(trainer_app, ["evaluate", "--model-uri", uri, "--seed", "42"])
    assert anew.exit_code == 0, anew.output
    told = r"seed 42, random split; (\d+) patches it trained or was validated on left out"
    left = re.search(told, anew.stdout)
    assert left and int(left.group(1)) > 0, anew.stdout
    wrong = CliRunner().invoke(trainer_app, ["evaluate", "--model-uri", uri, "--bands", "rgb"])
    assert wrong.exit_code == 2
    assert wrong.stderr.strip() == f"eostream: {uri} takes ms13 patches (its model card), not rgb"


def test_a_base_models_patches_take_their_whole_group_to_train(
    data_dir: Path, trainer_cache: Path
) -> None:
    """Forced into train one by one, a base model's patches split their 20 km cells: 6 of 35
    validation and test patches shared a cell with one of them."""
    import duckdb

    table = build_catalog(data_dir, trainer_cache, "ms13")
    base = select(table, SelectionSpec(band_set="ms13", seed=7))
    rows = [{"class": p.class_name, "href": p.href, "split": p.split} for p in base.patches]
    keys = training_keys(rows)
    spec = SelectionSpec(band_set="ms13", split="spatial", seed=42, train_only=keys)
    tuned = select(table, spec)
    with duckdb.connect() as con:
        cells = dict(
            con.execute(
                f"SELECT id, {group_key_sql('ms13', 'spatial')} FROM read_parquet($p)",  # noqa: S608
                {"p": str(table.path)},
            ).fetchall()
        )
    splits: dict[str, set[str]] = {}
    for p in tuned.patches:
        splits.setdefault(cells[p.item_id], set()).add(p.split)
    assert all(len(found) == 1 for found in splits.values()), splits
    unseen = [p for p in tuned.patches if p.split != "train"]
    assert unseen and not {f"{p.class_name}/{Path(p.href).stem}" for p in unseen} & set(keys)
