"""``eostream trainer ...`` (the worker and local tools) and ``eostream train`` (submit a request).

``eostream train --bands rgb --epochs 20`` publishes TrainingRequested and prints the MLflow run
link as soon as the worker's TrainingStarted arrives (:mod:`eostream.trainer.submission`; in
embedded mode it runs the worker itself).

``eostream trainer fit --stac-out DIR`` also writes the registered model as a self-contained STAC
catalog (:mod:`eostream.trainer.stageout`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError

from eostream.shared import tags
from eostream.shared.deployment import mlflow_client_defaults
from eostream.shared.events import TrainingRequested
from eostream.shared.provenance import run_reference
from eostream.shared.redaction import redact_urls
from eostream.shared.settings import configure_logging, load_settings
from eostream.trainer.progress import progress_bar
from eostream.trainer.settings import TrainerSettings
from eostream.trainer.stageout import write_model_catalog
from eostream.trainer.submission import submit_request

if TYPE_CHECKING:  # torch stays unimported until a command needs it
    from eostream.trainer.plan import TrainingPlan
    from eostream.trainer.tracking import Tracker


class Mix(StrEnum):
    """``--mix``: how pairs of training patches are mixed (TrainConfig.mix)."""

    none = "none"
    mixup = "mixup"
    cutmix = "cutmix"
    both = "both"


app = typer.Typer(
    name="trainer",
    help="Train EuroSAT land-cover models, tracked in MLflow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _settings(**overrides: Any) -> TrainerSettings:
    settings = load_settings(TrainerSettings, **overrides)
    _configure_logging(settings)
    return settings


@contextlib.contextmanager
def _mlflow_answers(tracker: Tracker) -> Iterator[None]:
    """MLflow not answering (or refusing us) is one line and exit status 1: its client retries
    for seconds, not minutes (:func:`mlflow_client_defaults`), and raised a traceback. The line
    names the server the tracker uses (under ``mlflow run``, the project's)."""
    from mlflow.exceptions import MlflowException

    mlflow_client_defaults()
    try:
        yield
    except MlflowException as exc:
        where = redact_urls(tracker.tracking_uri)
        first = redact_urls(str(exc.message).splitlines()[0])[:300]
        typer.echo(f"eostream: MLflow at {where}: {first}", err=True)
        raise typer.Exit(1) from None


def _configure_logging(settings: TrainerSettings) -> None:
    configure_logging(settings.log_level)
    for noisy in ("stac_geoparquet", "onnxscript", "onnx_ir", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _request(**fields: Any) -> TrainingRequested:
    """The request the options make, or one clear line and exit status 2 (an option out of the
    event's bounds, as ``--seed -1`` or ``--epochs 0``, printed pydantic's traceback)."""
    try:
        return TrainingRequested(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "request"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        typer.echo(f"eostream: --{where.replace('_', '-')}: {first['msg']}{more}", err=True)
        raise typer.Exit(2) from None


def _checked(request: TrainingRequested) -> TrainingPlan:
    """The plan for a request, or one clear line and exit status 2."""
    from eostream.trainer.errors import BadTrainingRequestError
    from eostream.trainer.plan import plan_training

    try:
        return plan_training(request)
    except BadTrainingRequestError as exc:
        typer.echo(f"eostream: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command("run")
def run() -> None:
    """Run the worker: consume TrainingRequested / DatasetUpdated, train, register, publish."""
    # a bad environment is reported before the slow imports, and what they log before logging
    # is configured stays out of the service's log (as it did when they came first)
    settings = load_settings(TrainerSettings)
    from eostream.shared.runtime import run_service
    from eostream.trainer.service import from_settings, run_worker

    _configure_logging(settings)
    run_service(lambda: run_worker(settings, from_settings(settings)))


BandsOption = Annotated[str, typer.Option("--bands", help="band set: rgb or ms13")]
FamilyOption = Annotated[
    str,
    typer.Option(
        "--family",
        help="the library that trains the model: torch or keras (patch CNNs), sklearn (per-pixel "
        "models, 10 m maps)",
    ),
]


@app.command("fit")
def fit_command(
    bands: Annotated[
        str | None, typer.Option("--bands", help="band set: rgb or ms13 (sklearn: ms13)")
    ] = None,
    family: FamilyOption = "torch",
    architecture: Annotated[
        str | None,
        typer.Option(
            help="torch: small_cnn, centre_cnn, centre_cnn_stride2 (maps), resnet18 (GPU), "
            "resnet18_stride2, resnet18_imagenet; "
            "sklearn: pixel_hgb or pixel_rf"
        ),
    ] = None,
    epochs: int = 10,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    samples_per_class: Annotated[int | None, typer.Option(help="patches per class")] = None,
    split: Annotated[str, typer.Option(help="random or spatial")] = "random",
    seed: int = 42,
    model_name: str = "eurosat-landcover",
    base_model: Annotated[
        str | None,
        typer.Option(
            help="start from a registered version, models:/NAME/VERSION or models:/NAME@alias "
            "(with --dataset: a new head for its classes, or a small_cnn's encoder in a "
            "seg_small_cnn)"
        ),
    ] = None,
    pretrained: Annotated[
        str | None,
        typer.Option(
            help="start a resnet18_imagenet from a checkpoint: a name (eostream data checkpoint "
            "NAME) or a file"
        ),
    ] = None,
    freeze_backbone: Annotated[
        bool, typer.Option(help="with --pretrained: train only the head")
    ] = False,
    backbone_lr_scale: Annotated[
        float,
        typer.Option(
            min=1e-6,
            max=1.0,
            help="with --pretrained: the backbone's learning rate factor",
        ),
    ] = 1.0,
    label_smoothing: Annotated[
        float,
        typer.Option(min=0.0, max=0.5, help="share of the target spread over every class"),
    ] = 0.0,
    mix: Annotated[
        Mix, typer.Option(help="mix pairs of training patches (patch classification only)")
    ] = Mix.none,
    ema_decay: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.99999,
            help="above 0: validate, keep and ship an exponential moving average of the weights "
            "(e.g. 0.999)",
        ),
    ] = 0.0,
    stac_out: Annotated[
        Path | None,
        typer.Option(
            "--stac-out",
            help="also write the model (ONNX + card) as a STAC catalog with an MLM item here",
            file_okay=False,
        ),
    ] = None,
    dataset: Annotated[
        Path | None,
        typer.Option(
            "--dataset",
            help="train on a chip dataset (eostream labels chips: its folder or chips.parquet): "
            "its classes, bands, chip size and split replace EuroSAT's",
        ),
    ] = None,
) -> None:
    """Train in this process, without the bus (MLproject, benchmarks and the CWL package).

    ``--family sklearn`` fits a per-pixel scikit-learn model (``--epochs`` x 10 boosting
    iterations, ``--batch-size`` pixels sampled per patch)."""
    from eostream.trainer.pipeline import tracker_for, train_and_register
    from eostream.trainer.plan import FAMILIES

    if family not in FAMILIES:
        typer.echo(f"eostream: --family {family!r} is unknown; use one of {FAMILIES}", err=True)
        raise typer.Exit(2)
    pixel = family == "sklearn"
    chips = _chip_dataset(dataset, family, pretrained) if dataset else None
    bands = chips.band_set if chips else bands or ("ms13" if pixel else "rgb")
    architecture = architecture or ("pixel_hgb" if pixel else "small_cnn")

    settings = _settings(bus="memory")  # fit publishes nothing: no Kafka settings needed
    tracker = tracker_for(settings)
    plan = _checked(
        _request(
            band_set=bands,
            architecture=architecture,
            family=family,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            samples_per_class=samples_per_class,
            split=split,
            seed=seed,
            model_name=model_name,
            base_model=base_model,
            pretrained=pretrained,
            freeze_backbone=freeze_backbone,
            backbone_lr_scale=backbone_lr_scale,
            label_smoothing=label_smoothing,
            mix=mix.value,
            ema_decay=ema_decay,
            dataset=str(chips.path) if chips else None,
            requested_by="cli",
        )
    )
    if chips is not None:
        from dataclasses import replace

        plan = replace(plan, dataset=str(chips.path), classes=chips.classes)
    # a pixel model has no batches to count
    from eostream.trainer.errors import BadTrainingRequestError, ExportMismatchError

    try:
        with (
            _mlflow_answers(tracker),
            contextlib.nullcontext(None) if pixel else progress_bar() as on_batch,
        ):
            outcome = train_and_register(
                plan,
                settings,
                tracker=tracker,
                on_started=lambda _r, url, _e, reused: typer.echo(
                    f"{'already trained by this request id' if reused else 'MLflow run'}: "
                    f"{run_reference(url)}"
                ),
                on_batch=on_batch,
            )
    except (BadTrainingRequestError, ExportMismatchError) as exc:  # e.g. a pretrained file
        # that is missing or wrong, chips that are not what their table says, a diverged model
        typer.echo(f"eostream: {exc}", err=True)
        raise typer.Exit(2) from None
    done = "already registered" if outcome.reused else "registered"
    typer.echo(f"{done} {outcome.version.name} version {outcome.version.version}")
    for key, value in sorted(outcome.metrics.items()):
        typer.echo(f"  {key}: {value:.4g}")
    if stac_out is not None:
        with tempfile.TemporaryDirectory(prefix="eostream-fit-") as tmp:
            onnx_path = tracker.download_artifact(
                outcome.version.run_id,
                outcome.version.tags.get(tags.ONNX_ARTIFACT, tags.ONNX_ARTIFACT_PATH),
                Path(tmp),
            )
            catalog = write_model_catalog(outcome, onnx_path, stac_out, plan.base_model)
        typer.echo(f"STAC catalog: {catalog}")


def _chip_dataset(dataset: Path, family: str, pretrained: str | None) -> Any:
    """The chip dataset ``--dataset`` names, or one line and exit status 2."""
    from eostream.trainer import chipset
    from eostream.trainer.errors import DatasetError

    problems = [
        what
        for what, bad in (
            ("--family torch or sklearn", family == "keras"),
            ("no --pretrained (a --base-model may start it)", pretrained is not None),
        )
        if bad
    ]
    if problems:
        typer.echo(f"eostream: --dataset: use {', '.join(problems)}", err=True)
        raise typer.Exit(2)
    try:
        return chipset.open_dataset(dataset)
    except DatasetError as exc:
        typer.echo(f"eostream: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command("evaluate")
def evaluate_command(
    model_uri: Annotated[str, typer.Option(help="models:/NAME/VERSION (or @alias)")],
    bands: Annotated[
        str | None, typer.Option(help="rgb or ms13; default and only choice: the version's own")
    ] = None,
    samples_per_class: Annotated[
        int | None, typer.Option(help="a new selection: patches per class")
    ] = None,
    split: Annotated[str | None, typer.Option(help="a new selection: random or spatial")] = None,
    seed: Annotated[int | None, typer.Option(help="a new selection: its seed")] = None,
) -> None:
    """Score a registered version on EuroSAT patches it never trained on.

    By default on the test split it was trained with (its run's ``dataset/split.csv``). With
    ``--seed``, ``--split`` or ``--samples-per-class``, on a new selection's test split (the
    gate's hold-out left out, as the trainer leaves it out) less the patches the version trained
    or was validated on. Under ``mlflow run ... -e evaluate`` the figures are logged to that run."""
    import os

    import torch

    from eostream.trainer.errors import BadTrainingRequestError
    from eostream.trainer.pipeline import tracker_for

    if bands not in (None, "rgb", "ms13"):  # before MLflow is asked (minutes when it is down)
        raise _usage(f"--bands {bands!r}: use rgb or ms13")
    if split not in (None, "random", "spatial"):
        raise _usage(f"--split {split!r}: use random or spatial")
    settings = _settings(bus="memory")  # evaluate publishes nothing: no Kafka settings needed
    torch.set_num_threads(settings.num_threads)
    tracker = tracker_for(settings)
    try:
        with _mlflow_answers(tracker):
            tracker.configure()
            model, card = tracker.load_base(model_uri, what="--model-uri")
            run_id, recorded = tracker.recorded_split(model_uri)
    except BadTrainingRequestError as exc:  # not models:/NAME/VERSION, or no such version
        raise _usage(str(exc)) from None
    if bands is not None and bands != card.band_set:
        raise _usage(f"{model_uri} takes {card.band_set} patches (its model card), not {bands}")
    if card.dataset is not None or card.task != "patch" or card.band_set not in ("rgb", "ms13"):
        raise _usage(
            f"{model_uri} was trained on labelled chips ({card.dataset or card.band_set}), not on "
            "EuroSAT patches: the registry-bridge scores it on its dataset's test chips and maps"
        )
    anew = samples_per_class is not None or split is not None or seed is not None
    test, where = _evaluation_patches(settings, card.band_set, run_id, recorded, anew, {
        "samples_per_class": samples_per_class, "split": split or "random",
        "seed": 42 if seed is None else seed,
    })  # fmt: skip
    from eostream.trainer.datasets import load_patches
    from eostream.trainer.scoring import evaluate

    data = load_patches(settings.data_dir, card.band_set, test, settings.num_threads)
    result = evaluate(model, data, torch.device("cpu"))
    accuracy = result["accuracy"]
    typer.echo(f"{model_uri}: test accuracy {accuracy:.4f} on {len(data)} patches ({where})")
    if os.environ.get("MLFLOW_RUN_ID"):  # `mlflow run -e evaluate`: the figures go to its run
        import mlflow

        with mlflow.start_run(run_id=os.environ["MLFLOW_RUN_ID"]):
            tracker.log_evaluation("test", result, card.classes)
            mlflow.log_params({"evaluated_model": model_uri, "evaluated_on": where})
            tracker.log_evaluated(test, card.band_set, str(settings.data_dir))


def _usage(message: str) -> typer.Exit:
    typer.echo(f"eostream: {message}", err=True)
    return typer.Exit(2)


def _evaluation_patches(
    settings: TrainerSettings,
    band_set: str,
    run_id: str,
    recorded: list[dict[str, str]] | str,
    anew: bool,
    spec: dict[str, Any],
) -> tuple[list[Any], str]:
    """The test patches ``evaluate`` scores, and a few words on where they come from."""
    from eostream.trainer.catalog import build_catalog
    from eostream.trainer.errors import DatasetError
    from eostream.trainer.selection import (
        Patch,
        SelectionSpec,
        place_key,
        select_for_training,
        training_keys,
    )

    if not anew:
        if isinstance(recorded, str):
            raise _usage(
                f"the version's run {run_id} recorded no split ({recorded}); choose one with "
                "--seed, --split or --samples-per-class"
            )
        rows = [r for r in recorded if r["split"] == "test"]
        patches = [Patch(r["id"], r["class"], int(r["label"]), r["href"], "test") for r in rows]
        return patches, f"the test split it was trained with, run {run_id}"
    table = build_catalog(settings.data_dir, settings.cache_dir, band_set)
    try:
        selection = select_for_training(
            table,
            SelectionSpec(band_set=band_set, **spec),
            settings.data_dir,
            settings.gate_holdout,
        )
    except DatasetError as exc:  # e.g. too few samples per class to fill every split
        raise _usage(str(exc)) from None
    # what trained the version, and what chose its kept epoch
    seen = set() if isinstance(recorded, str) else set(training_keys(recorded, ("train", "val")))
    test = [p for p in selection.of("test") if place_key(p.class_name, p.href) not in seen]
    left = len(selection.of("test")) - len(test)
    words = f"seed {spec['seed']}, {spec['split']} split"
    if isinstance(recorded, str):
        return test, f"{words}; what the version trained on is unknown: {recorded}"
    return test, f"{words}; {left} patches it trained or was validated on left out"


def submit(
    bands: BandsOption = "rgb",
    epochs: Annotated[int, typer.Option(help="training epochs")] = 10,
    architecture: str = "small_cnn",
    family: FamilyOption = "torch",
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    samples_per_class: int | None = None,
    split: str = "random",
    seed: int = 42,
    model_name: str = "eurosat-landcover",
    base_model: str | None = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="train on labelled chips: a chip dataset (folder or chips.parquet) or a label "
            "collection's collection.json, as the worker reads it"
        ),
    ] = None,
    wait: Annotated[bool, typer.Option(help="also wait for the registered version")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the worker")] = 300.0,
) -> None:
    """Ask the trainer for a model: publish TrainingRequested, print the MLflow run link."""

    request = _request(
        band_set=bands,
        architecture=architecture,
        family=family,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        samples_per_class=samples_per_class,
        split=split,
        seed=seed,
        model_name=model_name,
        base_model=base_model,
        dataset=dataset,
        requested_by="eostream train",
    )
    _checked(request)  # refuse a bad request here, before it reaches the bus
    asyncio.run(submit_request(_settings(), request, wait, timeout))
