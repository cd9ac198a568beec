"""The trainer component of the embedded mode (``eostream up`` / ``eostream demo``).

The worker on the shared in-process bus, against the embedded MLflow
(``context.mlflow_tracking_uri``: the demo's MLflow server, or a sqlite URI), with its catalogue
cache, RGB scaling fit and epoch checkpoints under ``<home>/trainer``. It consumes
``TrainingRequested`` and ``DatasetUpdated`` and publishes ``TrainingStarted`` and
``ModelVersionRegistered``. It serves nothing (no operations endpoint in embedded mode).

At start the RGB catalogue cache is built in a child process (once per data digest; the cache
stays under the home), and requests are taken once it is there: built in this process, its 27,000
STAC items would make the garbage collector pause the shared event loop. Training runs in a
worker thread (:class:`~eostream.trainer.service.TrainerWorker` hands it to
``asyncio.to_thread``), so the other components sharing the event loop keep serving while a model
trains; torch uses at most ``num_threads`` threads.

Stopping takes no new request and gives the training in flight ``stop_grace_seconds`` to finish
and register. Past that it is interrupted at its next batch: its MLflow run is marked failed and
its last epoch checkpoint stays under ``<home>/trainer/runs/<request id>``, so the same request,
delivered again, resumes that run from that epoch.

Options (``context.options["trainer"]``): any :class:`TrainerSettings` field, e.g.
``num_threads``, ``device``, ``experiment_name``, ``default_model_name``, plus
``stop_grace_seconds`` (default 45, under the embedded runner's 60 s per component); the bus,
MLflow, the cache and the data folder are the embedded ones and cannot be set.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from eostream.shared.bus.supervisor import SupervisedConsumer
from eostream.shared.embedded import EmbeddedContext
from eostream.shared.errors import ConfigError
from eostream.shared.settings import load_settings
from eostream.trainer.pipeline import Outcome, StartedCallback
from eostream.trainer.plan import TrainingPlan
from eostream.trainer.service import SERVICE, TrainerAdapters, build_trainer, from_settings, train
from eostream.trainer.settings import TrainerSettings
from eostream.trainer.task import BatchCallback
from eostream.trainer.tracking import Tracker

log = logging.getLogger(__name__)

#: Settings the embedded mode decides; options naming them are refused.
FIXED = frozenset(
    (
        "bus",
        "kafka",
        "store",
        "s3",
        "local_store_root",
        "bucket",
        "mlflow_tracking_uri",
        "mlflow_registry_uri",
        "cache_dir",
        "data_dir",
    )
)
GRACE_OPTION = "stop_grace_seconds"
DEFAULT_GRACE_SECONDS = 45.0
#: Built in a child process at start: building the RGB catalogue (27,000 STAC items) in this
#: process would make its garbage collector pause the shared event loop for ~0.1-0.5 s at a time.
WARM_BAND_SET = "rgb"
_WARM_CODE = (
    "import sys; from pathlib import Path; from eostream.trainer.catalog import build_catalog; "
    "build_catalog(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])"
)
#: How long stop() waits for an interrupted training to reach its next batch and unwind.
UNWIND_SECONDS = 10.0


class TrainingInterruptedError(RuntimeError):
    """Raised in the training thread, at a batch boundary, when the component stops."""


def state_dir(context: EmbeddedContext) -> Path:
    return context.home / SERVICE


def stop_grace_seconds(context: EmbeddedContext) -> float:
    value = context.options_for(SERVICE).get(GRACE_OPTION, DEFAULT_GRACE_SECONDS)
    try:
        grace = float(value)
    except (TypeError, ValueError):
        message = f"trainer option {GRACE_OPTION} must be a number, not {value!r}"
        raise ConfigError(message) from None
    if grace < 0:
        raise ConfigError(f"trainer option {GRACE_OPTION} must be >= 0, not {grace}")
    return grace


def embedded_settings(context: EmbeddedContext) -> TrainerSettings:
    """Settings of the embedded worker: the context's MLflow, home and data folder plus options."""
    options = context.settable_options(SERVICE, FIXED)
    options.pop(GRACE_OPTION, None)
    overrides: dict[str, Any] = {
        **options,
        **context.fixed_settings(),  # the trainer stores nothing itself: models go to MLflow
        "mlflow_tracking_uri": context.mlflow_tracking_uri,
        "cache_dir": state_dir(context),
    }
    return load_settings(TrainerSettings, **overrides)


class TrainerComponent:
    name = SERVICE

    def __init__(
        self,
        settings: TrainerSettings,
        adapters: TrainerAdapters,
        *,
        stop_grace_seconds: float = DEFAULT_GRACE_SECONDS,
    ) -> None:
        self.settings = settings
        self.stop_grace_seconds = stop_grace_seconds
        self.worker = build_trainer(
            settings,
            bus=adapters.bus,
            tracker=adapters.tracker,
            trainer=self._train,
            on_batch=self._check_interrupt,
        )
        self._consumer: SupervisedConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._interrupt = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        #: Called from the training thread after each batch (progress bars, tests).
        self.batch_observers: list[BatchCallback] = []

    @property
    def urls(self) -> Mapping[str, str]:
        return {}

    @property
    def busy(self) -> bool:
        """Whether a training is in flight."""
        return not self._idle.is_set()

    def _check_interrupt(self, batch_size: int) -> None:
        for observe in self.batch_observers:
            observe(batch_size)
        if self._interrupt.is_set():
            raise TrainingInterruptedError("the embedded trainer is stopping")

    def _train(
        self,
        plan: TrainingPlan,
        settings: TrainerSettings,
        tracker: Tracker,
        on_started: StartedCallback | None,
        on_batch: BatchCallback | None,
    ) -> Outcome:
        """Runs in the worker thread (``asyncio.to_thread``), never on the event loop."""
        self._idle.clear()
        try:
            return train(plan, settings, tracker, on_started, on_batch)
        finally:
            self._idle.set()

    async def start(self) -> None:
        self.settings.cache_dir.mkdir(parents=True, exist_ok=True)  # state_dir(context)
        torch.set_num_threads(self.settings.num_threads)
        self._interrupt.clear()
        self._consumer = SupervisedConsumer(
            self.worker.consumer,
            service=SERVICE,
            group=self.settings.consumer_group,
            supervision=self.settings.consumers,
        )
        self._task = asyncio.create_task(self._serve(self._consumer), name="trainer-consumer")
        self._task.add_done_callback(_log_crash)
        log.info(
            "trainer: consuming training requests (MLflow %s, cache %s, %d torch threads)",
            self.settings.mlflow_tracking_uri,
            self.settings.cache_dir,
            self.settings.num_threads,
        )

    async def _serve(self, consumer: SupervisedConsumer) -> None:
        await warm_catalog(self.settings, WARM_BAND_SET)
        await consumer.run()  # returns at once when stop() came during the warm-up

    async def stop(self) -> None:
        if self._consumer is None or self._task is None:
            return
        consumer, task = self._consumer, self._task
        self._consumer = self._task = None
        await consumer.stop()  # no new record; the one in flight goes on
        if self.busy:
            log.info(
                "trainer: waiting up to %.0fs for the training in flight", self.stop_grace_seconds
            )
        done, _ = await asyncio.wait({task}, timeout=self.stop_grace_seconds)
        if not done:
            log.warning(
                "trainer: interrupting the training in flight; its last epoch checkpoint stays "
                "under %s/runs for a redelivered request to resume",
                self.settings.cache_dir,
            )
            task.cancel()  # the record is neither committed nor dead-lettered
            self._interrupt.set()
        await asyncio.wait({task})  # a crash was logged by _log_crash
        if self.busy:  # the thread unwinds at its next batch
            await asyncio.to_thread(self._idle.wait, UNWIND_SECONDS)


async def warm_catalog(settings: TrainerSettings, band_set: str) -> bool:
    """Build (or find) ``band_set``'s catalogue cache in a child process; False if it failed.

    A failure is only logged: the request that needs the catalogue then fails (and is
    dead-lettered) with the reason, as without the warm-up.
    """
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(  # this interpreter, fixed code
        sys.executable,
        "-c",
        _WARM_CODE,
        str(settings.data_dir),
        str(settings.cache_dir),
        band_set,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, stderr = await process.communicate()
    except asyncio.CancelledError:
        process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        lines = stderr.decode(errors="replace").strip().splitlines()
        log.warning(
            "trainer: building the %s catalogue in a child process failed (%s)",
            band_set,
            lines[-1] if lines else f"exit status {process.returncode}",
        )
        return False
    log.info("trainer: %s catalogue ready in %.1fs", band_set, time.perf_counter() - started)
    return True


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("trainer: the consumer stopped", exc_info=task.exception())


def component(context: EmbeddedContext) -> TrainerComponent:
    """Entry point of the ``eostream.components`` group: the settings and adapters (the
    context's shared bus, a tracker on the context's MLflow) are picked here."""
    settings = embedded_settings(context)
    return TrainerComponent(
        settings,
        from_settings(settings, bus=context.bus),
        stop_grace_seconds=stop_grace_seconds(context),
    )
