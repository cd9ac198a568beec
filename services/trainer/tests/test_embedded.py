"""The embedded component: the worker on a shared in-process bus trains a request into a registered
version while the event loop it shares with the other components keeps running; options cannot
replace the embedded bus, MLflow, cache or data folder; a stop during training interrupts it
without dead-lettering the request and keeps its checkpoint."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from eostream.shared import topics
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.embedded import EmbeddedContext, EmbeddedSystem
from eostream.shared.errors import ConfigError
from eostream.shared.events import ModelVersionRegistered, TrainingRequested, TrainingStarted
from eostream.shared.storage.local import LocalObjectStore
from eostream.trainer.embedded import TrainerComponent, component, embedded_settings

from .helpers import events_on, wait_until

TICK = 0.05
log = logging.getLogger(__name__)


def context_for(tmp_path: Path, data_dir: Path, options: dict[str, Any]) -> EmbeddedContext:
    return EmbeddedContext(
        bus=InMemoryBus(service="embedded"),
        store=LocalObjectStore(tmp_path / "objects", "eostream"),
        home=tmp_path / "home",
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        data_dir=data_dir,
        options={"trainer": options},
    )


class LoopWatch:
    """Counts event-loop ticks, and the tick count seen by each training batch.

    Liveness without a clock: a trainer that ran on the loop would block it for the whole run, so
    every batch would see the same tick count; one that runs in its own thread sees the loop tick
    between its batches. No duration is compared with a bound, so a loaded machine cannot fail it.
    """

    def __init__(self) -> None:
        self.ticks = 0
        self.seen_by_batches: list[int] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self.ticks += 1

    def on_batch(self, _batch_size: int) -> None:
        """Called from the training thread after each batch."""
        self.seen_by_batches.append(self.ticks)

    def __enter__(self) -> LoopWatch:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()


@pytest.mark.usefixtures("sqlite_mlflow")
async def test_a_request_trains_and_registers_while_the_loop_keeps_running(
    tmp_path: Path, data_dir: Path
) -> None:
    context = context_for(tmp_path, data_dir, {"num_threads": 2, "experiment_name": "embedded"})
    bus = context.bus
    assert isinstance(bus, InMemoryBus)
    async with EmbeddedSystem(context, {"trainer": component}) as system:
        [trainer] = system.components
        assert isinstance(trainer, TrainerComponent) and trainer.urls == {}
        with LoopWatch() as watch:
            trainer.batch_observers.append(watch.on_batch)
            await bus.publish(
                topics.TRAINING_REQUESTS,
                TrainingRequested(
                    request_id="embedded-1", epochs=1, samples_per_class=20, batch_size=32
                ),
            )
            await wait_until(lambda: bus.size(topics.TRAINING_EVENTS) > 0, 60, "TrainingStarted")
            await wait_until(
                lambda: bus.size(topics.MODELS_REGISTERED) + bus.size(topics.DEAD_LETTER) > 0,
                90,
                "ModelVersionRegistered",
            )
        assert bus.size(topics.DEAD_LETTER) == 0
        [started] = events_on(bus, topics.TRAINING_EVENTS)
        [registered] = events_on(bus, topics.MODELS_REGISTERED)
        assert isinstance(started, TrainingStarted) and started.request_id == "embedded-1"
        assert isinstance(registered, ModelVersionRegistered)
        assert (registered.request_id, registered.run_id) == ("embedded-1", started.run_id)
        assert (registered.name, registered.version, registered.band_set) == (
            "eurosat-landcover",
            "1",
            "rgb",
        )
        assert 0.0 <= registered.metrics["test_accuracy"] <= 1.0
        # the loop ticked while training went on: training ran off it, in the worker's thread
        batches = watch.seen_by_batches
        log.info("%d batches saw tick counts %s", len(batches), batches)
        assert len(batches) >= 2
        assert batches[-1] > batches[0], "the event loop did not tick while the model trained"
    # the catalogue cache and the scaling fit live under <home>/trainer
    assert (tmp_path / "home" / "trainer" / "scaling").is_dir()
    assert list((tmp_path / "home" / "trainer" / "stac").glob("eurosat-rgb-*.parquet"))


@pytest.mark.usefixtures("sqlite_mlflow")
async def test_stop_during_training_interrupts_it_and_keeps_the_checkpoint(
    tmp_path: Path, data_dir: Path
) -> None:
    context = context_for(tmp_path, data_dir, {"stop_grace_seconds": 0})
    bus = context.bus
    assert isinstance(bus, InMemoryBus)
    trainer = component(context)
    await bus.start()
    await trainer.start()
    try:
        await bus.publish(
            topics.TRAINING_REQUESTS,
            TrainingRequested(request_id="long", epochs=50, samples_per_class=20, batch_size=16),
        )
        run_dir = tmp_path / "home" / "trainer" / "runs" / "long"
        await wait_until(lambda: (run_dir / "checkpoint.pt").is_file(), 90, "a first checkpoint")
        assert trainer.busy
    finally:
        await trainer.stop()
        await bus.close()
    assert not trainer.busy
    assert bus.size(topics.MODELS_REGISTERED) == 0
    assert bus.size(topics.DEAD_LETTER) == 0  # interrupted, not a bad request
    assert (run_dir / "checkpoint.pt").is_file() and (run_dir / "mlflow_run_id").is_file()


def test_embedded_settings_take_options_but_not_the_embedded_adapters(
    tmp_path: Path, data_dir: Path
) -> None:
    settings = embedded_settings(context_for(tmp_path, data_dir, {"num_threads": 1}))
    assert settings.num_threads == 1
    assert settings.bus == "memory"
    assert settings.mlflow_tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert (settings.cache_dir, settings.data_dir) == (tmp_path / "home" / "trainer", data_dir)
    with pytest.raises(ConfigError, match="bus, cache_dir"):
        embedded_settings(context_for(tmp_path, data_dir, {"bus": "kafka", "cache_dir": "x"}))
    with pytest.raises(ConfigError, match=r"(?i)num_threads"):
        embedded_settings(context_for(tmp_path, data_dir, {"num_threads": 0}))
    with pytest.raises(ConfigError, match="stop_grace_seconds"):
        component(context_for(tmp_path, data_dir, {"stop_grace_seconds": -1}))
