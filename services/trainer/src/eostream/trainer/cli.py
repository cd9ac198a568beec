"""``eostream trainer ...`` (the worker and local tools) and ``eostream train`` (submit a request).

``eostream train --bands rgb --epochs 20`` publishes TrainingRequested and prints the MLflow run
link as soon as the worker's TrainingStarted arrives. With ``TRAINER_BUS=memory`` (embedded mode)
there is no other process to train, so the command runs the worker itself, with a progress bar.

``eostream trainer fit --stac-out DIR`` also writes the registered model as a self-contained STAC
catalog (``catalog.json``, one MLM item, the ONNX file and its model card): the stage-out layout
of the OGC EO application package best practice, which the CWL package in deploy/cwl relies on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import shutil
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from pydantic import ValidationError

from eostream.shared import tags, topics
from eostream.shared.deployment import mlflow_client_defaults
from eostream.shared.events import TrainingRequested, TrainingStarted
from eostream.shared.redaction import redact_urls
from eostream.shared.settings import configure_logging, load_settings
from eostream.trainer.settings import TrainerSettings

if TYPE_CHECKING:  # torch stays unimported until a command needs it
    from eostream.shared.bus import Bus
    from eostream.shared.events import DeadLetter
    from eostream.trainer.pipeline import Outcome
    from eostream.trainer.plan import TrainingPlan
    from eostream.trainer.task import BatchCallback
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


@contextlib.contextmanager
def progress_bar() -> Iterator[BatchCallback]:
    """A rich progress bar counting training images, with the rate in images/s."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("training"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.completed:,.0f} images"),
        TextColumn("[cyan]{task.fields[rate]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns) as progress:
        task = progress.add_task("train", total=None, rate="")

        def on_batch(n: int) -> None:
            progress.advance(task, n)
            speed = progress.tasks[0].speed
            progress.update(task, rate=f"{speed:,.0f} images/s" if speed else "")

        yield on_batch


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
                    f"{'already trained by this request id' if reused else 'MLflow run'}: {url}"
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


def write_model_catalog(
    outcome: Outcome, onnx_path: Path, out_dir: Path, base_model: str | None = None
) -> Path:
    """A self-contained STAC catalog in ``out_dir`` with one MLM item: the ONNX and its card.

    The item is the one the registry-bridge ships (:mod:`eostream.shared.mlm`): what inference
    needs (bands in order, per-band scaling to the model's units, classes in output order) as
    STAC MLM fields, the test metrics and the MLflow run; here also the card as a JSON asset.
    """
    from datetime import UTC, datetime

    import pystac

    from eostream.shared import mlm
    from eostream.shared.modelcard import ModelCard
    from eostream.trainer.tracking import CARD_TAG

    version = outcome.version
    card = ModelCard.from_json(version.tags[CARD_TAG])
    folder = out_dir / mlm.item_id(version.name, version.version)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, folder / "model.onnx")
    (folder / "model-card.json").write_text(card.to_json())
    data = onnx_path.read_bytes()
    facts = mlm.MlmFacts(
        name=version.name,
        version=version.version,
        card=card,
        artifact_href=str((folder / "model.onnx").resolve()),
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        created=datetime.now(UTC),
        run_id=version.run_id,
        # a server's UI, not a sqlite file
        run_href=outcome.run_url if outcome.run_url.startswith(("http://", "https://")) else None,
        metrics=tuple(sorted(outcome.metrics.items())),
        base_model=base_model,
    )
    item = pystac.Item.from_dict(mlm.build_item(facts, str((folder / "item.json").resolve())))
    item.add_asset(
        "model-card",
        pystac.Asset(
            str((folder / "model-card.json").resolve()),
            title="eostream model card: bands, scaling, classes",
            media_type=pystac.MediaType.JSON,
            roles=["metadata"],
        ),
    )
    catalog = pystac.Catalog(
        id="eostream-models",
        description="EuroSAT land-cover models trained by eostream",
        title="eostream models",
    )
    catalog.add_item(item)
    catalog.normalize_hrefs(str(out_dir.resolve()))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return out_dir / "catalog.json"


@app.command("evaluate")
def evaluate_command(
    model_uri: Annotated[str, typer.Option(help="models:/NAME/VERSION")],
    bands: BandsOption = "rgb",
    samples_per_class: int | None = None,
    split: str = "random",
    seed: int = 42,
) -> None:
    """Score a registered model on the test split of a selection."""
    import torch

    from eostream.trainer.catalog import build_catalog
    from eostream.trainer.datasets import load_patches
    from eostream.trainer.errors import BadTrainingRequestError
    from eostream.trainer.pipeline import tracker_for
    from eostream.trainer.selection import SelectionSpec, select
    from eostream.trainer.task import evaluate

    if bands not in ("rgb", "ms13"):  # before MLflow is asked (minutes when it is down)
        typer.echo(f"eostream: --bands {bands!r}: use rgb or ms13", err=True)
        raise typer.Exit(2)
    settings = _settings(bus="memory")  # evaluate publishes nothing: no Kafka settings needed
    torch.set_num_threads(settings.num_threads)
    tracker = tracker_for(settings)
    try:
        with _mlflow_answers(tracker):
            tracker.configure()
            model, _card = tracker.load_base(model_uri)
    except BadTrainingRequestError as exc:  # not models:/NAME/VERSION, or no such version
        typer.echo(f"eostream: {exc}", err=True)
        raise typer.Exit(2) from None
    table = build_catalog(settings.data_dir, settings.cache_dir, bands)
    selection = select(
        table,
        SelectionSpec(
            band_set=bands,
            samples_per_class=samples_per_class,
            split="spatial" if split == "spatial" else "random",
            seed=seed,
        ),
    )
    test = load_patches(settings.data_dir, bands, selection.of("test"), settings.num_threads)
    result = evaluate(model, test, torch.device("cpu"))
    typer.echo(f"{model_uri}: test accuracy {result['accuracy']:.4f} on {len(test)} patches")


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
    asyncio.run(_submit(_settings(), request, wait, timeout))


def _run_line(event: TrainingStarted) -> str:
    if event.reused:
        return f"already trained by request {event.request_id}: MLflow run {event.run_url}"
    return f"MLflow run: {event.run_url}"


class RequestFailed(Exception):
    """The trainer refused the request (dead-lettered it), or the embedded worker stopped."""


T = TypeVar("T")
log = logging.getLogger(__name__)

#: seconds between two reads of the dead letters while a submission waits (on Kafka, of the
#: letters written since the request was published)
LETTERS_EVERY = 1.0
KAFKA_LETTERS_EVERY = 5.0

LetterReader = Callable[[], Awaitable["list[DeadLetter]"]]


async def _watched(
    wanted: asyncio.Future[T],
    worker: asyncio.Task[None] | None,
    letters: LetterReader,
    request_id: str,
    timeout: float | None,
    *,
    letters_every: float = LETTERS_EVERY,
) -> T:
    """``wanted``'s result; raises :class:`RequestFailed` when the trainer dead-letters the
    request (one of ``letters()``: its reason) or the embedded ``worker`` stops (both left the
    command waiting for ever), TimeoutError after ``timeout`` seconds (None: no limit).
    ``worker`` is None where the trainer is a service of its own (Kafka). A read of the letters
    that fails (a broker blip) is logged and tried again at the next turn."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    while True:
        pending: set[asyncio.Future[Any]] = {wanted} if worker is None else {wanted, worker}
        finished, _ = await asyncio.wait(pending, timeout=letters_every)
        if wanted in finished:
            return wanted.result()
        if worker is not None and worker in finished:
            if worker.cancelled():
                raise RequestFailed("the trainer was cancelled")
            failure = worker.exception()
            raise RequestFailed(
                f"the trainer stopped: {failure}" if failure else "the trainer stopped"
            )
        try:
            found = await letters()
        except Exception as exc:  # the wait goes on; the next turn reads again
            log.warning("could not read the dead letters (%s); reading again", exc)
            found = []
        for letter in found:
            if letter.original_topic == topics.TRAINING_REQUESTS and letter.original_key == (
                request_id
            ):
                raise RequestFailed(f"request {request_id} refused: {letter.reason}")
        if deadline is not None and loop.time() > deadline:
            raise TimeoutError


async def _letters_since_now(bus: Bus) -> LetterReader:
    """A reader of the dead letters written from now on: on Kafka, from the dead-letter
    topic's end offsets of this moment (not the whole topic at every turn, whose newest letters
    a read cut short by its timeout missed); an in-process or embedded bus is read whole."""
    from eostream.shared.bus.base import parse_dead_letter
    from eostream.shared.bus.kafka import KafkaBus

    if not isinstance(bus, KafkaBus):
        return lambda: bus.read_dead_letters(limit=sys.maxsize)
    topic = bus.dead_letter_topic
    marks = await bus.end_offsets(topic)

    async def read() -> list[DeadLetter]:
        records = await bus.read_topic(topic, timeout=30.0, start=marks)
        return [parse_dead_letter(r) for r in records]

    return read


async def _submit(
    settings: TrainerSettings, request: TrainingRequested, wait: bool, timeout: float
) -> None:
    from eostream.shared.bus import build_bus
    from eostream.shared.events import Event, ModelVersionRegistered
    from eostream.trainer.pipeline import tracker_for
    from eostream.trainer.service import SERVICE, build_trainer

    bus = build_bus(settings, service="trainer-cli")
    await bus.start()
    started: asyncio.Future[TrainingStarted] = asyncio.get_running_loop().create_future()
    done: asyncio.Future[ModelVersionRegistered] = asyncio.get_running_loop().create_future()

    async def listen(event: Event, _delivery: object) -> None:
        if isinstance(event, TrainingStarted) and event.request_id == request.request_id:
            if not started.done():
                started.set_result(event)
        if isinstance(event, ModelVersionRegistered) and event.request_id == request.request_id:
            if not done.done():
                done.set_result(event)

    group = f"trainer-cli-{uuid.uuid4().hex[:8]}"
    # a follower: a bad record is the services' to dead-letter, not each submission's again
    listener = bus.consumer(
        [topics.TRAINING_EVENTS, topics.MODELS_REGISTERED], group, listen, dead_letter=False
    )
    tasks = [asyncio.create_task(listener.run())]
    try:
        letters = await _letters_since_now(bus)  # before the request: its refusal comes after
        await bus.publish(topics.TRAINING_REQUESTS, request)
        typer.echo(
            f"requested training {request.request_id} ({request.band_set}, {request.epochs} epochs)"
        )
        if settings.bus == "memory":  # embedded mode: this process is the worker
            with progress_bar() as on_batch:
                tracker = tracker_for(settings)
                worker = build_trainer(settings, bus=bus, tracker=tracker, on_batch=on_batch)
                running = asyncio.create_task(worker.consumer().run())
                tasks.append(running)
                event = await _watched(started, running, letters, request.request_id, timeout)
                typer.echo(_run_line(event))
                registered = await _watched(done, running, letters, request.request_id, None)
        else:  # the trainer is a service: it may refuse the request before or after starting
            every = KAFKA_LETTERS_EVERY
            event = await _watched(
                started, None, letters, request.request_id, timeout, letters_every=every
            )
            typer.echo(_run_line(event))
            if not wait:
                return
            registered = await _watched(
                done, None, letters, request.request_id, None, letters_every=every
            )
        accuracy = registered.metrics.get("test_accuracy")
        typer.echo(
            f"{'already registered' if event.reused else 'registered'} {registered.name} "
            f"version {registered.version}"
            + ("" if accuracy is None else f" (test accuracy {accuracy:.3f})")
        )
    except TimeoutError:
        typer.echo(
            f"no TrainingStarted within {timeout:.0f}s: is `eostream trainer run` up? "
            f"(service {SERVICE})",
            err=True,
        )
        raise typer.Exit(1) from None
    except RequestFailed as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        await listener.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await bus.close()
