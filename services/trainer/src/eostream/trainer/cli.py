"""``eostream trainer ...`` (the worker and local tools) and ``eostream train`` (submit a request).

``eostream train --bands rgb --epochs 20`` publishes TrainingRequested and prints the MLflow run
link as soon as the worker's TrainingStarted arrives. With ``TRAINER_BUS=memory`` (embedded mode)
there is no other process to train, so the command runs the worker itself, with a progress bar.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

import typer

from eostream.shared.events import TrainingRequested
from eostream.shared.settings import configure_logging, load_settings
from eostream.trainer.settings import TrainerSettings

if TYPE_CHECKING:  # torch stays unimported until a command needs it
    from eostream.trainer.plan import TrainingPlan
    from eostream.trainer.task import BatchCallback

app = typer.Typer(
    name="trainer",
    help="Train EuroSAT land-cover models, tracked in MLflow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _settings() -> TrainerSettings:
    settings = load_settings(TrainerSettings)
    configure_logging(settings.log_level)
    for noisy in ("stac_geoparquet", "onnxscript", "onnx_ir", "alembic"):
        import logging

        logging.getLogger(noisy).setLevel(logging.WARNING)
    return settings


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
    from eostream.shared.runtime import run_service
    from eostream.trainer.service import run_worker

    settings = _settings()
    run_service(lambda: run_worker(settings))


BandsOption = Annotated[str, typer.Option("--bands", help="band set: rgb or ms13")]


@app.command("fit")
def fit_command(
    bands: BandsOption = "rgb",
    architecture: Annotated[str, typer.Option(help="small_cnn or resnet18")] = "small_cnn",
    epochs: int = 10,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    samples_per_class: Annotated[int | None, typer.Option(help="patches per class")] = None,
    split: Annotated[str, typer.Option(help="random or spatial")] = "random",
    seed: int = 42,
    model_name: str = "eurosat-landcover",
    base_model: Annotated[str | None, typer.Option(help="models:/NAME/VERSION")] = None,
) -> None:
    """Train in this process, without the bus (MLproject and benchmarks use this)."""
    from eostream.trainer.pipeline import train_and_register

    settings = _settings()
    plan = _checked(
        TrainingRequested(
            band_set=bands,
            architecture=architecture,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            samples_per_class=samples_per_class,
            split=split,
            seed=seed,
            model_name=model_name,
            base_model=base_model,
            requested_by="cli",
        )
    )
    with progress_bar() as on_batch:
        outcome = train_and_register(
            plan,
            settings,
            on_started=lambda _r, url, _e: typer.echo(f"MLflow run: {url}"),
            on_batch=on_batch,
        )
    typer.echo(f"registered {outcome.version.name} version {outcome.version.version}")
    for key, value in sorted(outcome.metrics.items()):
        typer.echo(f"  {key}: {value:.4g}")


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
    from eostream.trainer.pipeline import tracker_for
    from eostream.trainer.selection import SelectionSpec, select
    from eostream.trainer.task import evaluate

    settings = _settings()
    torch.set_num_threads(settings.num_threads)
    tracker = tracker_for(settings)
    tracker.configure()
    model, _card = tracker.load_base(model_uri)
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
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    samples_per_class: int | None = None,
    split: str = "random",
    seed: int = 42,
    model_name: str = "eurosat-landcover",
    base_model: str | None = None,
    wait: Annotated[bool, typer.Option(help="also wait for the registered version")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the worker")] = 300.0,
) -> None:
    """Ask the trainer for a model: publish TrainingRequested, print the MLflow run link."""

    settings = _settings()
    request = TrainingRequested(
        band_set=bands,
        architecture=architecture,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        samples_per_class=samples_per_class,
        split=split,
        seed=seed,
        model_name=model_name,
        base_model=base_model,
        requested_by="eostream train",
    )
    _checked(request)  # refuse a bad request here, before it reaches the bus
    asyncio.run(_submit(settings, request, wait, timeout))


async def _submit(
    settings: TrainerSettings, request: TrainingRequested, wait: bool, timeout: float
) -> None:
    from eostream.shared import topics
    from eostream.shared.bus import build_bus
    from eostream.shared.events import Event, ModelVersionRegistered, TrainingStarted
    from eostream.trainer.service import SERVICE, TrainerWorker

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
    listener = bus.consumer([topics.TRAINING_EVENTS, topics.MODELS_REGISTERED], group, listen)
    tasks = [asyncio.create_task(listener.run())]
    try:
        await bus.publish(topics.TRAINING_REQUESTS, request)
        typer.echo(
            f"requested training {request.request_id} ({request.band_set}, {request.epochs} epochs)"
        )
        if settings.bus == "memory":  # embedded mode: this process is the worker
            with progress_bar() as on_batch:
                worker = TrainerWorker(settings, bus, on_batch=on_batch)
                tasks.append(asyncio.create_task(worker.consumer().run()))
                event = await asyncio.wait_for(started, timeout)
                typer.echo(f"MLflow run: {event.run_url}")
                registered = await done
        else:
            event = await asyncio.wait_for(started, timeout)
            typer.echo(f"MLflow run: {event.run_url}")
            if not wait:
                return
            registered = await done
        typer.echo(
            f"registered {registered.name} version {registered.version} "
            f"(test accuracy {registered.metrics.get('test_accuracy', float('nan')):.3f})"
        )
    except TimeoutError:
        typer.echo(
            f"no TrainingStarted within {timeout:.0f}s: is `eostream trainer run` up? "
            f"(service {SERVICE})",
            err=True,
        )
        raise typer.Exit(1) from None
    finally:
        await listener.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await bus.close()
