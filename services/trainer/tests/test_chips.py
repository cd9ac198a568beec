"""Chips cut from labelled real scenes (Boadella) train a patch classifier on the labels' own
classes (water, other), which inference's pipeline then runs on a third real date."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, cast

import duckdb
import mlflow
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from eostream.inference import evaluation, reference
from eostream.registry_bridge import contract, onnx_model, quantize
from eostream.registry_bridge import evaluation as gate_evaluation
from eostream.registry_bridge import holdout as gate_holdout
from eostream.registry_bridge.gatekeeper import Gatekeeper
from eostream.registry_bridge.registry import MlflowRegistry
from eostream.registry_bridge.settings import BridgeSettings, Int8Settings
from eostream.registry_bridge.shipping import Shipper
from eostream.shared import topics
from eostream.shared.bus.kafka import KafkaBus
from eostream.shared.events import TrainingRequested
from eostream.shared.modelcard import ModelCard
from eostream.shared.settings import KafkaSettings
from eostream.trainer import chipset
from eostream.trainer.cli import app as trainer_app
from eostream.trainer.cli import fit_command, submit
from eostream.trainer.errors import DatasetError
from eostream.trainer.labels_cli import app as labels_app
from eostream.trainer.pipeline import tracker_for
from eostream.trainer.service import build_trainer
from eostream.trainer.settings import TrainerSettings
from eostream.trainer.submission import submit_request

from .conftest import make_settings

TRAIN_DATES = ("2020-06-21", "2020-09-14")
MAP_DATE = "2021-07-16"
SIZE = 32
LABELS_JSON = "sentinel2_scenes/boadella_l2a_sentinelhub/sentinel_2/labels.json"


def _chips(labels: Path, out: Path, *extra: str) -> tuple[int, str]:
    args = ["chips", "--labels", str(labels), "--out", str(out), "--size", str(SIZE), *extra]
    result = CliRunner().invoke(labels_app, args)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def references(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two labelled dates to cut chips from, and a third to map."""
    root = tmp_path_factory.mktemp("boadella")
    train = reference.build_boadella(data_dir, root / "train", TRAIN_DATES)
    third = reference.build_boadella(data_dir, root / "map", (MAP_DATE,))
    # the reference's water is the model's own class "water" (data of the set, not code)
    collection = json.loads(third.read_text())
    collection[reference.MAPPING_FIELD] = {"water": ["water"]}
    third.write_text(json.dumps(collection))
    return train, third


@pytest.fixture(scope="module")
def dataset(references: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("chips") / "boadella"
    code, output = _chips(references[0], out, "--block", "3", "--classes", "water,other")
    assert code == 0, output
    assert "dropped: mixed" in output and "split_gap" in output
    return out


def test_chips_are_labelled_on_purpose_and_split_apart(dataset: Path) -> None:
    data = chipset.open_dataset(dataset)
    assert data.classes == ("water", "other")
    assert (data.band_set, data.size, data.processing_level) == ("rgb", SIZE, "L2A")
    with duckdb.connect() as con:
        rows = con.execute(
            "SELECT split, class, class_share, chip_row, chip_col, assets.image.href, chip_index,"
            " scene_id FROM read_parquet($p)",
            {"p": str(data.path)},
        ).fetchall()
    assert {r[0] for r in rows} == {"train", "val", "test"}
    assert {r[1] for r in rows} == {"water", "other"}
    # stratified: validation (which picks the kept epoch) and test hold water too
    assert {(r[0], r[1]) for r in rows} == {
        (s, c) for s in ("train", "val", "test") for c in ("water", "other")
    }
    assert {r[7] for r in rows} == {f"boadella-{d}" for d in TRAIN_DATES}
    assert min(r[2] for r in rows) >= 0.75  # every chip's class covers 75 % of it
    # no training chip touches (overlaps or borders) a test chip, on any date
    train = {(r[3], r[4]) for r in rows if r[0] == "train"}
    test = {(r[3], r[4]) for r in rows if r[0] == "test"}
    assert not any(
        abs(a[0] - b[0]) <= SIZE and abs(a[1] - b[1]) <= SIZE for a in train for b in test
    )
    # the arrays: reflectance as inference reads it, and a per-pixel mask agreeing with the class
    water = next(r for r in rows if r[1] == "water")
    with np.load(dataset / water[5]) as npz:
        x, mask = npz["x"][water[6]], npz["mask"][water[6]]
    assert x.shape == (3, SIZE, SIZE) and np.isfinite(x).all()
    assert 0.0 <= float(np.median(x)) < 0.2  # water is dark
    assert (mask == 0).mean() >= 0.75
    summary = json.loads((dataset / "dataset.json").read_text())
    assert summary["dropped"]["mixed"] > 0 and summary["dropped"]["split_gap"] > 0


@pytest.mark.usefixtures("root_logging", "sqlite_mlflow")
def test_a_water_other_classifier_trains_and_maps_a_third_date(
    dataset: Path,
    references: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRAINER_MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("TRAINER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TRAINER_EXPERIMENT_NAME", "chips-test")
    monkeypatch.setenv("TRAINER_DEVICE", "cpu")
    monkeypatch.setenv("TRAINER_MIN_CHIP_STEPS", "100")  # a smoke test: a third of the default
    out = tmp_path / "model"
    words = ["fit", "--dataset", str(dataset), "--epochs", "2", "--batch-size", "16"]
    result = CliRunner().invoke(
        trainer_app, [*words, "--model-name", "boadella-water", "--stac-out", str(out)]
    )
    assert result.exit_code == 0, result.output
    card = ModelCard.from_json((next(out.rglob("model-card.json"))).read_text())
    assert card.classes == ("water", "other")
    assert card.patch_size == SIZE and card.processing_level == "L2A"
    assert card.dataset == str((dataset / chipset.TABLE).resolve())
    assert card.dataset_test_split == "test"
    # `trainer evaluate` scores EuroSAT patches: a model of chips is refused in one line
    asked = ["evaluate", "--model-uri", "models:/boadella-water/1"]
    scored = CliRunner().invoke(trainer_app, asked)
    assert scored.exit_code == 2 and "trained on labelled chips" in scored.stderr, scored.output
    onnx_path = next(out.rglob("*.onnx"))
    # the bridge's contract takes its classes, and its gate scores it on the dataset's test split
    data = onnx_path.read_bytes()
    facts, problems = onnx_model.inspect(data)
    assert facts is not None and problems == []
    assert contract.check_graph(facts, card) == []
    held_out = gate_holdout.load_chips(str(card.dataset), str(card.dataset_test_split))
    assert held_out.classes == card.classes and held_out.images.shape[1:] == (3, SIZE, SIZE)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    session = onnx_model.session(data, 1)
    scores, _ = gate_evaluation.evaluate(
        lambda x: onnx_model.logits(session, x),
        held_out,
        experiment="chips-gate-test",
        run_name="gate",
        params={},
        tags={},
    )
    assert scores.samples == len(held_out.files) and set(scores.per_class_recall) <= {
        "water",
        "other",
    }
    assert scores.accuracy > 0.5
    # inference's own pipeline (embedded) loads it (the contract takes its classes) and maps
    report = evaluation.evaluate(str(references[1]), str(onnx_path))
    assert report.errors == [] and report.classes == ["water", "other"]
    (item,) = report.items
    cm = item.model_cm  # rows: labels (water, other); columns: the map
    iou = cm[0, 0] / (cm[0].sum() + cm[:, 0].sum() - cm[0, 0])
    assert cm[0, 0] / cm[0].sum() > 0.5, cm  # most labelled water is mapped as water
    assert iou > 0.3, cm
    assert cm[1, 1] > cm[0, 1], cm  # the map is not water everywhere


@pytest.mark.usefixtures("root_logging", "sqlite_mlflow")
def test_a_water_segmentation_network_trains_on_masks_is_gated_by_pixel_and_maps_at_10m(
    dataset: Path,
    references: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """seg_unet learns every pixel's class from the chips' masks; its ONNX gives a score per
    class and pixel, the gate scores it pixel by pixel on the test chips, and inference maps the
    third date from the windows' centres."""
    monkeypatch.setenv("TRAINER_MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("TRAINER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TRAINER_EXPERIMENT_NAME", "chips-test")
    monkeypatch.setenv("TRAINER_DEVICE", "cpu")
    monkeypatch.setenv("TRAINER_MIN_CHIP_STEPS", "100")  # a smoke test: a third of the default
    out = tmp_path / "model"
    words = ["fit", "--dataset", str(dataset), "--architecture", "seg_unet", "--epochs", "2"]
    result = CliRunner().invoke(
        trainer_app, [*words, "--model-name", "boadella-seg", "--stac-out", str(out)]
    )
    assert result.exit_code == 0, result.output
    card = ModelCard.from_json((next(out.rglob("model-card.json"))).read_text())
    assert (card.task, card.architecture, card.classes) == (
        "segmentation",
        "seg_unet",
        ("water", "other"),
    )
    data = next(out.rglob("*.onnx")).read_bytes()
    facts, problems = onnx_model.inspect(data)
    assert facts is not None and problems == []
    assert contract.check_graph(facts, card) == []
    assert facts.outputs[0].shape[1:] == (2, SIZE, SIZE)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking)
    [run] = mlflow.search_runs(experiment_names=["chips-test"], output_format="list")
    metrics = run.data.metrics
    # few chips: at least min_chip_steps optimiser steps, on the labelled pixels' classes
    assert int(run.data.params["epochs_for_steps"]) > 2
    # what ran, not what the request defaulted to: the stretched patience, the chips' own
    # split, the dataset by its absolute path and name
    params = run.data.params
    stretched = int(params["patience"]) * int(params["epochs_for_steps"]) // int(params["epochs"])
    assert int(params["patience_for_steps"]) == stretched
    assert params["split"] == "recorded" and Path(params["dataset"]).is_absolute()
    assert run.inputs is not None
    [used] = run.inputs.dataset_inputs
    assert used.dataset.name.startswith("chips-"), used.dataset.name
    assert run.data.tags["compute.precision"] == "fp32"  # TRAINER_CPU_BF16 is off by default
    assert metrics["test_pixel_iou_water"] > 0.7, metrics
    assert metrics["onnx_argmax_agreement"] > 0.9999

    # the gate: every labelled pixel of the test chips is a row
    held_out = gate_holdout.load_chips(str(card.dataset), "test", masks=True)
    assert held_out.masks is not None and held_out.masks.shape == (len(held_out.files), SIZE, SIZE)
    session = onnx_model.session(data, 1)
    scores, _ = gate_evaluation.evaluate(
        lambda x: onnx_model.logits(session, x),
        held_out,
        experiment="chips-gate-test",
        run_name="gate",
        params={},
        tags={},
    )
    assert scores.samples == int((held_out.masks != 255).sum())
    assert scores.accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-6), "one figure"
    assert scores.per_class_recall["water"] > 0.7

    # a bridge on another machine reads the card's path nowhere: it takes the run's copy
    elsewhere = card.model_copy(update={"dataset": str(tmp_path / "trainer-disk/chips.parquet")})
    settings = BridgeSettings(bus="memory", data_dir=tmp_path, mlflow_tracking_uri=tracking)
    gate = Gatekeeper(settings, MlflowRegistry(tracking), cast(Shipper, None))
    copied = gate.holdout_for(elsewhere, run.info.run_id)
    assert copied.digest == held_out.digest and copied.masks is not None
    assert np.array_equal(copied.masks, held_out.masks)
    assert gate.chip_table(elsewhere) != elsewhere.dataset  # downloaded once, then reused
    with pytest.raises(FileNotFoundError, match="not readable here"):
        Gatekeeper(settings, MlflowRegistry(tracking), cast(Shipper, None)).holdout_for(elsewhere)

    # inference maps the third date per pixel and scores it against its labels
    report = evaluation.evaluate(str(references[1]), str(next(out.rglob("*.onnx"))))
    assert report.errors == [] and report.classes == ["water", "other"]
    (item,) = report.items
    cm = item.model_cm
    iou = cm[0, 0] / (cm[0].sum() + cm[:, 0].sum() - cm[0, 0])
    assert iou > 0.7, cm

    # int8: calibrated on the run's training chips, checked on every labelled test pixel; it
    # maps the third date as the fp32 model does
    verdict = quantize.check(
        data,
        card,
        settings=Int8Settings(),
        holdout=held_out,
        calibration=lambda: gate.calibration_for(card.band_set, elsewhere, run.info.run_id),
        logits=lambda model, x: onnx_model.logits(onnx_model.session(model, 1), x),
    )
    assert verdict.outcome == "passed" and verdict.onnx_bytes is not None, verdict.reasons
    assert verdict.agreement is not None and verdict.agreement > 0.97, verdict.reasons
    assert "labelled pixels" in verdict.reasons[-1]
    assert "the input convolutions int8, the normalisation folded" in verdict.reasons[-2]
    int8_file = tmp_path / "int8.onnx"
    int8_file.write_bytes(verdict.onnx_bytes)
    (item8,) = evaluation.evaluate(str(references[1]), str(int8_file)).items
    cm8 = item8.model_cm
    iou8 = cm8[0, 0] / (cm8[0].sum() + cm8[:, 0].sum() - cm8[0, 0])
    assert iou8 == pytest.approx(iou, abs=0.02), (iou, iou8)


@pytest.mark.usefixtures("sqlite_mlflow")
def test_label_models_start_from_a_registered_eurosat_classifier(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fine-tuning from what exists: a registered 13-band EuroSAT small_cnn starts a
    water/other classifier on the RGB chips (the other ten bands dropped, a new two-class head)
    and a seg_small_cnn (its encoder); both name it as their start, on card and MLM item."""
    monkeypatch.setenv("TRAINER_MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("TRAINER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TRAINER_EXPERIMENT_NAME", "fine-tune-test")
    monkeypatch.setenv("TRAINER_DEVICE", "cpu")
    monkeypatch.setenv("TRAINER_MIN_CHIP_STEPS", "100")  # a smoke test: a third of the default
    runner = CliRunner()
    words = ["fit", "--bands", "ms13", "--architecture", "small_cnn", "--epochs", "1"]
    result = runner.invoke(
        trainer_app, [*words, "--samples-per-class", "12", "--model-name", "eurosat-ms"]
    )
    assert result.exit_code == 0, result.output
    base = "models:/eurosat-ms/1"
    scored = (("small_cnn", "test_accuracy"), ("seg_small_cnn", "test_mean_iou"))
    for architecture, metric in scored:
        out = tmp_path / architecture
        words = ["fit", "--dataset", str(dataset), "--architecture", architecture, "--epochs", "2",
                 "--base-model", base, "--model-name", f"boadella-{architecture}",
                 "--stac-out", str(out)]  # fmt: skip
        result = runner.invoke(trainer_app, words)
        assert result.exit_code == 0, result.output
        card = ModelCard.from_json((next(out.rglob("model-card.json"))).read_text())
        assert (card.architecture, card.classes, card.band_set) == (
            architecture,
            ("water", "other"),
            "rgb",
        )
        assert card.pretrained_source == base
        [item] = [json.loads(f.read_text()) for f in out.rglob("*.json") if "mlm:name" in
                  json.loads(f.read_text()).get("properties", {})]  # fmt: skip
        assert item["properties"]["mlm:pretrained_source"] == base
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
        [run] = mlflow.search_runs(
            experiment_names=["fine-tune-test"],
            filter_string=f"params.architecture = '{architecture}' "
            f"and params.base_model = '{base}'",
            output_format="list",
        )
        assert run.data.metrics[metric] > 0.7, run.data.metrics

    # a start the request's network cannot take: one line
    words = ["fit", "--dataset", str(dataset), "--architecture", "seg_unet", "--epochs", "1"]
    result = runner.invoke(trainer_app, [*words, "--base-model", base])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (  # below the progress bar: one line
        f"eostream: base_model {base} is a small_cnn: fine-tune it as a small_cnn (or "
        "seg_small_cnn, with its encoder), not a seg_unet"
    ), result.output


def test_bad_chip_requests_get_one_line(
    references: tuple[Path, Path], data_dir: Path, tmp_path: Path
) -> None:
    third = references[1]
    code, output = _chips(third, tmp_path / "a", "--classes", "water,cloud")
    assert code == 2 and output.strip() == (
        "eostream labels: unknown class cloud: the labels name water, other"
    )
    # forest is a class of the labelling tool's list, but no label draws it
    code, output = _chips(
        third,
        tmp_path / "b",
        "--classes",
        "water,forest,other",
        "--class-list",
        str(data_dir / LABELS_JSON),
    )
    assert code == 2 and output.startswith("eostream labels: class forest has no chips"), output
    code, output = _chips(third, tmp_path / "c", "--size", "128", "--classes", "water,other")
    assert code == 2 and output.startswith("eostream labels: too few chips to split"), output
    code, output = _chips(third, tmp_path / "d", "--split-by", "date")
    assert code == 2 and output.startswith(
        "eostream labels: too few chips to split: they lie in 1 date(s)"
    ), output
    # larger than the trainer takes: refused before cutting, not by the trainer after it
    code, output = _chips(third, tmp_path / "e", "--size", "2048", "--classes", "water,other")
    assert code == 2 and output.strip() == "eostream labels: --size 2048: chips of 8 to 1024 px"
    for out in ("a", "b", "c", "d", "e"):
        assert not (tmp_path / out).exists()  # nothing half-written
    assert len(output.strip().splitlines()) == 1


@pytest.mark.usefixtures("root_logging")
def test_fit_refuses_a_missing_dataset_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(trainer_app, ["fit", "--dataset", str(tmp_path / "none")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        f"eostream: no chip dataset at {tmp_path / 'none'} (expected a folder with chips.parquet)"
    )


@pytest.mark.usefixtures("root_logging")
@pytest.mark.parametrize("command", ["fit", "submit"])
def test_an_option_out_of_the_requests_bounds_is_one_line(command: str) -> None:
    """pydantic's refusal of the request was a traceback (``eostream trainer fit`` and
    ``eostream train``, which is ``submit``)."""
    train_app = typer.Typer()
    train_app.command("fit")(fit_command)
    train_app.command("submit")(submit)
    result = CliRunner().invoke(train_app, [command, "--seed", "-1"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        "eostream: --seed: Input should be greater than or equal to 0"
    ), result.output
    result = CliRunner().invoke(train_app, [command, "--epochs", "0", "--seed", "-1"])
    assert result.output.strip().endswith("(and 1 more)"), result.output


def _variant(dataset: Path, out: Path, select_sql: str = "*", arrays: Any = None) -> Path:
    """A copy of ``dataset`` with its table rewritten by ``select_sql`` (duckdb, over the rows
    as ``t``) and each scene's arrays passed through ``arrays(x, mask) -> (x, mask)``."""
    shutil.copytree(dataset, out)
    table = out / chipset.TABLE
    with duckdb.connect() as con:
        # the test's own SQL, over a copy of the test's own table
        con.execute(
            f"COPY (SELECT {select_sql} FROM read_parquet($p) t) TO '{out / 'new.parquet'}' "  # noqa: S608
            "(FORMAT parquet)",
            {"p": str(table)},
        )
    (out / "new.parquet").replace(table)
    if arrays is not None:
        for npz in (out / "arrays").glob("*.npz"):
            with np.load(npz) as f:
                x, mask = arrays(f["x"], f["mask"])
            np.savez(npz, x=x, mask=mask)
    return out


def _loaded(path: Path) -> None:
    data = chipset.open_dataset(path)
    chosen = chipset.select(data)
    patches = list(chosen.of("train"))
    chipset.load(data, patches)
    chipset.load_masks(data, patches)


def test_chip_datasets_that_are_not_what_their_table_says_are_refused_before_training(
    dataset: Path, tmp_path: Path
) -> None:
    """Each of these stopped the trainer's consumer (restarted on the same record for ever), or
    trained and registered a model: a chip without a class index, a chip index past its array,
    arrays of another size than proj:shape, NaN pixels, a mask class beyond the classes, one
    class. Each is a DatasetError (dead-lettered) naming it, before a run starts."""
    first = "(SELECT min(id) FROM read_parquet($p))"
    nan_x = lambda x, m: (np.full_like(x, np.nan), m)  # noqa: E731
    cases = {
        "a proj:shape of one number": (
            f'* REPLACE (CASE WHEN id = {first} THEN "proj:shape"[1:1] ELSE "proj:shape" END '
            'AS "proj:shape")',
            None,
            "without a class",
        ),
        "a null class index": (
            f"* REPLACE (CASE WHEN id = {first} THEN NULL ELSE class_index END AS class_index)",
            None,
            "without a class",
        ),
        "an index past the array": (
            f"* REPLACE (CASE WHEN id = {first} THEN chip_index + 100000 ELSE chip_index END "
            "AS chip_index)",
            None,
            "is past the",
        ),
        "2 x 2 arrays": ("*", lambda x, m: (x[..., :2, :2], m[..., :2, :2]), "not 32 x 32"),
        "NaN pixels": ("*", nan_x, "NaN or infinite"),
        "a mask class 7": ("*", lambda x, m: (x, np.where(m == 0, 7, m)), "beyond the 2"),
        "one class": (
            "* REPLACE (0 AS class_index, 'water' AS class)",
            None,
            "a model needs at least two",
        ),
    }
    for i, (case, (sql, arrays, words)) in enumerate(cases.items()):
        path = _variant(
            dataset, tmp_path / f"v{i}", sql.replace("$p", f"'{dataset / chipset.TABLE}'"), arrays
        )
        with pytest.raises(DatasetError) as caught:
            _loaded(path)
        assert words in str(caught.value), (case, str(caught.value))
    _loaded(dataset)  # the dataset they were made of loads


def test_run_and_chip_folders_stay_one_folder_inside_the_cache() -> None:
    """A request id ``..`` made the run folder the cache itself (its clean-up emptied it), and
    ``x/../../..`` put a label collection's chips outside the cache."""
    from eostream.trainer.labelled import _folder_name
    from eostream.trainer.pipeline import _safe

    names = {_safe(text) for text in ("..", ".", "x/../../../../zz", "x_.._zz", "a b", "")}
    assert len(names) == 6  # distinct ids, distinct folders
    for name in names | {_folder_name("labels", key) for key in ("..", "x/../../zz", "/")}:
        assert name not in (".", "..") and "/" not in name and not name.startswith("."), name
    digest = "ab" * 32
    assert _folder_name("boadella", digest) == f"boadella-{digest[:16]}"  # caches keep names
    assert _safe("long") == "long" and _safe(digest) == digest  # so do plain request ids
    forged = _safe("a/b")  # an id written as another id's folder name gets a folder of its own
    assert _safe(forged) != forged and _safe(forged).startswith(forged)


def test_a_broken_label_catalogue_is_a_dataset_error_not_a_stopped_consumer(
    references: tuple[Path, Path], data_dir: Path, tmp_path: Path
) -> None:
    """pystac's own errors (a link to a scene item that is gone, an item without assets)
    stopped the trainer's consumer, restarted on the same record for ever."""
    from eostream.shared.events import TrainingRequested
    from eostream.trainer.labelled import request_plan

    settings = make_settings(data_dir, tmp_path / "cache", "sqlite:///unused.db")
    root = references[0].parent.parent
    scene = "boadella-scenes/boadella-2020-06-21/boadella-2020-06-21.json"
    label = "boadella-water-labels/boadella-water-2020-06-21/boadella-water-2020-06-21.json"

    def no_assets(path: Path) -> None:
        item = json.loads(path.read_text())
        item.pop("assets")
        path.write_text(json.dumps(item))

    def gone(path: Path) -> None:
        path.unlink()

    for i, (relative, breaks) in enumerate(((scene, gone), (label, no_assets))):
        broken = tmp_path / f"broken-{i}"
        shutil.copytree(root, broken)
        breaks(broken / relative)
        collection = broken / references[0].relative_to(root)
        request = TrainingRequested(request_id=f"broken-{i}", dataset=str(collection))
        with pytest.raises(DatasetError, match="labels "):
            request_plan(request, settings)


@pytest.mark.usefixtures("root_logging")
def test_an_embedded_submission_the_worker_refuses_ends_in_one_line(
    dataset: Path,
    data_dir: Path,
    sqlite_mlflow: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``eostream train`` on the in-process bus waited for ever (or for --timeout) once the
    worker dead-lettered its request; now it says why and exits 1."""
    nan = _variant(dataset, tmp_path / "nan", arrays=lambda x, m: (np.full_like(x, np.nan), m))
    for name, value in {
        "BUS": "memory",
        "DATA_DIR": str(data_dir),
        "CACHE_DIR": str(tmp_path / "cache"),
        "MLFLOW_TRACKING_URI": sqlite_mlflow,
        "NUM_THREADS": "2",
        "DEVICE": "cpu",
    }.items():
        monkeypatch.setenv(f"TRAINER_{name}", value)
    train_app = typer.Typer()
    train_app.command("fit")(fit_command)
    train_app.command("submit")(submit)
    args = ["submit", "--dataset", str(nan), "--epochs", "1", "--timeout", "120"]
    result = CliRunner().invoke(train_app, args)
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: request ") and "NaN or infinite" in last, result.output


@pytest.mark.stack
async def test_a_kafka_submission_the_worker_refuses_ends_in_one_line(
    dataset: Path,
    data_dir: Path,
    kafka_bootstrap: str,
    sqlite_mlflow: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``eostream train --wait`` against the trainer service on Kafka waited for ever once the
    service dead-lettered its request (and, refused before it started, said after --timeout that
    the trainer was not up); it now reads the dead letters while it waits and says why."""
    nan = _variant(dataset, tmp_path / "nan", arrays=lambda x, m: (np.full_like(x, np.nan), m))
    run = uuid.uuid4().hex[:8]
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=f"submit{run}.")
    settings = TrainerSettings(
        bus="kafka",
        kafka=kafka,
        data_dir=data_dir,
        cache_dir=tmp_path / "cache",
        mlflow_tracking_uri=sqlite_mlflow,
        num_threads=2,
        device="cpu",
        consumer_group=f"trainer-submit-{run}",
    )
    bus = KafkaBus(kafka, service="trainer")
    await bus.start()
    worker = build_trainer(settings, bus=bus, tracker=tracker_for(settings)).consumer()
    running = asyncio.create_task(worker.run())
    request = TrainingRequested(
        request_id=f"nan-{run}", dataset=str(nan), epochs=1, requested_by="test_chips"
    )
    try:
        with pytest.raises(typer.Exit) as exited:
            await submit_request(settings, request, True, 120.0)
    finally:
        await worker.stop()
        await asyncio.gather(running, return_exceptions=True)
        await bus.close()
    assert exited.value.exit_code == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: request nan-{run} refused:") and "NaN or infinite" in last


async def test_a_wait_reads_the_letters_again_after_a_failed_read() -> None:
    """The wait of a submission to a trainer service: another request's letter, or another
    topic's with the same key, is not this refusal; a read that fails (a broker blip) ended the
    wait in a traceback, and is now read again at the next turn."""
    from eostream.shared.events import DeadLetter
    from eostream.trainer.submission import RequestFailed, watched

    def letter(topic: str, key: str) -> DeadLetter:
        return DeadLetter(
            reason=f"{key} on {topic}", error_type="DatasetError", service="trainer",
            original_topic=topic, original_key=key, original_value=b"{}",
        )  # fmt: skip

    reads: list[int] = []

    async def letters() -> list[DeadLetter]:
        reads.append(1)
        if len(reads) == 1:
            raise ConnectionError("broker blip")
        found = [letter("eostream.training.events", "mine"), letter(topics.TRAINING_REQUESTS, "x")]
        return found if len(reads) == 2 else [*found, letter(topics.TRAINING_REQUESTS, "mine")]

    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    with pytest.raises(
        RequestFailed, match=f"request mine refused: mine on {topics.TRAINING_REQUESTS}"
    ):
        await watched(never, None, letters, "mine", 30.0, letters_every=0.01)
    assert len(reads) == 3


def test_evaluate_with_mlflow_down_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's client retried a server that refuses connections for minutes, then raised a
    traceback; its retries are now a few seconds' (kept if set) and the error one line."""
    monkeypatch.setenv("TRAINER_MLFLOW_TRACKING_URI", "http://alice:pw@127.0.0.1:9")
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)  # unset, and restored (unset) after the test
    args = ["evaluate", "--model-uri", "models:/m/1", "--bands", "rgb"]
    result = CliRunner().invoke(trainer_app, args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("eostream: MLflow at http://***@127.0.0.1:9: API request to"), last


def test_evaluate_refuses_an_unknown_band_set_before_asking_mlflow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With MLflow down, ``trainer evaluate --bands nope`` took four minutes of MLflow's retries
    before a traceback; the band set is checked first."""
    monkeypatch.setenv("TRAINER_MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    args = ["evaluate", "--model-uri", "models:/m/1", "--bands", "nope"]
    result = CliRunner().invoke(trainer_app, args)
    assert result.exit_code == 2
    assert result.output.strip() == "eostream: --bands 'nope': use rgb or ms13"
