"""``eostream train``'s other half: publish a TrainingRequested and follow it to its run and
its registered version, or to its refusal (a dead letter naming the request).

With ``TRAINER_BUS=memory`` (embedded mode) there is no other process to train, so the
submission runs the worker itself, with a progress bar.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from eostream.shared import topics
from eostream.shared.events import TrainingRequested, TrainingStarted
from eostream.shared.provenance import run_reference
from eostream.trainer.progress import progress_bar

if TYPE_CHECKING:
    from eostream.shared.bus import Bus
    from eostream.shared.events import DeadLetter
    from eostream.trainer.settings import TrainerSettings

T = TypeVar("T")
log = logging.getLogger(__name__)

#: seconds between two reads of the dead letters while a submission waits (on Kafka, of the
#: letters written since the request was published)
LETTERS_EVERY = 1.0
KAFKA_LETTERS_EVERY = 5.0

LetterReader = Callable[[], Awaitable["list[DeadLetter]"]]


def run_line(event: TrainingStarted) -> str:
    """What a submission prints once its run began (or was found done already)."""
    if event.reused:
        return (
            f"already trained by request {event.request_id}: "
            f"MLflow run {run_reference(event.run_url)}"
        )
    return f"MLflow run: {run_reference(event.run_url)}"


class RequestFailed(Exception):
    """The trainer refused the request (dead-lettered it), or the embedded worker stopped."""


async def watched(
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


async def letters_since_now(bus: Bus) -> LetterReader:
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


async def submit_request(
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
        letters = await letters_since_now(bus)  # before the request: its refusal comes after
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
                event = await watched(started, running, letters, request.request_id, timeout)
                typer.echo(run_line(event))
                registered = await watched(done, running, letters, request.request_id, None)
        else:  # the trainer is a service: it may refuse the request before or after starting
            every = KAFKA_LETTERS_EVERY
            event = await watched(
                started, None, letters, request.request_id, timeout, letters_every=every
            )
            typer.echo(run_line(event))
            if not wait:
                return
            registered = await watched(
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
