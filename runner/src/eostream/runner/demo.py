"""``eostream up`` and ``eostream demo``: the whole system in one process, no external service.

The embedded home (``.eostream/`` by default) holds everything that persists: the local object
store, the bus log (``bus.sqlite``: every event, and what each consumer group has handled, so a
crash loses nothing; ADR 0014), the MLflow database (sqlite) and artifacts, each service's state.
An MLflow server on that sqlite database runs beside the system, so people get the MLflow UI and
the services talk to MLflow exactly as they do on the full stack.

The demo is event-driven like the real pipeline: it asks for a model only when no champion is
announced, lets ingest discover the scenes of a static catalogue, and waits until inference has
classified each of them. A second run finds the champion and the scenes already done, and only
does what is new.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from eostream.runner.datasets import DEMO, MIRROR_ENV, default_data_dir
from eostream.runner.processes import DIE_WITH_PARENT
from eostream.runner.provision import ensure_data
from eostream.shared import topics
from eostream.shared.bus.base import Delivery, parse_dead_letter
from eostream.shared.bus.sqlite import SqliteBus
from eostream.shared.embedded import EmbeddedContext, EmbeddedSystem, embedded_bus
from eostream.shared.errors import ConfigError
from eostream.shared.events import (
    Event,
    ModelPromoted,
    SceneClassified,
    SceneDiscovered,
    TrainingRequested,
    TrainingStarted,
)
from eostream.shared.storage.local import LocalObjectStore

log = logging.getLogger(__name__)
console = Console(stderr=False)

WATCHED = (
    topics.TRAINING_EVENTS,
    topics.MODELS_REGISTERED,
    topics.MODELS_PROMOTED,
    topics.SCENES_DISCOVERED,
    topics.SCENES_CLASSIFIED,
)
#: The demo's scene: the real 29RKH tile in the data folder. Its STAC item names the public
#: Earth Search bucket; inference reads the same files from the data folder, as from a mirror.
DEMO_SCENE_DIR = "sentinel2_scenes/S2A_29RKH_20200219_0_L2A_cog_downsampled"
DEMO_SCENE_BUCKET = (
    "https://sentinel-cogs.s3.us-west-2.amazonaws.com/sentinel-s2-l2a-cogs/"
    "29/R/KH/2020/2/S2A_29RKH_20200219_0_L2A/"
)


def free_port(host: str, preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind((host, preferred))
        except OSError:
            s.bind((host, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def mlflow_server(home: Path, host: str, port: int) -> Iterator[str]:
    """An MLflow tracking server (and UI) on the embedded sqlite database."""
    (home / "mlartifacts").mkdir(parents=True, exist_ok=True)
    log_path = home / "mlflow.log"
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
        "--artifacts-destination", str(home / "mlartifacts"),
        "--serve-artifacts", "--host", host, "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter, fixed arguments
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            # a SIGKILLed demo must not leave its MLflow server running
            preexec_fn=DIE_WITH_PARENT,  # prctl only; resolved before the fork
        )
    url = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise ConfigError(f"the MLflow server did not start; see {log_path}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise ConfigError(f"the MLflow server did not answer within 120 s; see {log_path}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@dataclass
class Observer:
    """Watches the pipeline's events on the embedded bus and tells a person what happens."""

    started: float = field(default_factory=time.monotonic)
    promoted: list[ModelPromoted] = field(default_factory=list)
    discovered: dict[str, SceneDiscovered] = field(default_factory=dict)
    classified: dict[str, SceneClassified] = field(default_factory=dict)
    dead_lettered: dict[str, str] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def say(self, text: str) -> None:
        console.print(f"[dim]{time.monotonic() - self.started:7.1f}s[/dim]  {text}")

    async def __call__(self, event: Event, delivery: Delivery) -> None:
        if isinstance(event, TrainingStarted):
            self.say(f"training started: MLflow run {event.run_url}")
        elif isinstance(event, ModelPromoted):
            self.promoted.append(event)
            self.say(f"model {event.name} v{event.version} is {event.alias} ({event.sha256[:12]})")
        elif isinstance(event, SceneDiscovered):
            self.discovered[event.item_id] = event
            self.say(f"scene discovered: {event.item_id} ({event.processing_level})")
        elif isinstance(event, SceneClassified):
            self.classified[event.item_id] = event
            top = max(event.class_shares.items(), key=lambda kv: kv[1], default=("?", 0.0))
            self.say(
                f"scene classified: {event.item_id} by v{event.model_version} in "
                f"{event.duration_seconds:.1f}s, mostly {top[0]} ({top[1]:.0%})"
            )
        else:
            self.say(f"{event.event_type}: {event.key}")
        self.changed.set()

    def note_dead_letters(self, bus: SqliteBus, seen: int) -> int:
        """Report dead letters added since ``seen``; the records are read, never consumed."""
        records = bus.records(topics.DEAD_LETTER)
        for record in records[seen:]:
            letter = parse_dead_letter(record)
            key = letter.original_key or "?"
            self.dead_lettered[key] = letter.reason
            self.say(f"[red]dead-lettered[/red] {key} by {letter.service}: {letter.reason}")
            self.changed.set()
        return len(records)

    async def wait(self, done: Callable[[], object], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout=min(remaining, 5))
        return True


def demo_data_dir(data_dir: Path | None) -> Path:
    """The demo's data folder: the one set (``--data-dir`` / ``EOSTREAM_DATA_DIR``) if it exists,
    else the download cache, filled from the official sources (or ``EOSTREAM_DATA_MIRROR``) and
    checked by sha256. Says in one line where the data comes from."""
    data_dir = data_dir or (Path(p) if (p := os.environ.get("EOSTREAM_DATA_DIR")) else None)
    if data_dir is not None and data_dir.is_dir():
        console.print(f"data: {data_dir} (the data folder setting)", soft_wrap=True)
        return data_dir
    mirror = os.environ.get(MIRROR_ENV) or None
    target = default_data_dir()
    console.print(
        f"data: {'no data folder set' if data_dir is None else f'{data_dir} does not exist'}; "
        f"using {target}, downloaded once ({DEMO.size / 1e6:.0f} MB) from "
        f"{mirror or 'the official sources'} and checked by sha256",
        soft_wrap=True,
    )
    return ensure_data(target, mirror=mirror)


def demo_options(data_dir: Path | None) -> Mapping[str, Mapping[str, Any]]:
    mirror = {DEMO_SCENE_BUCKET: f"{data_dir / DEMO_SCENE_DIR}/"} if data_dir else {}
    return {
        "ingest": {"poll_interval_seconds": 5.0},
        "trainer": {},
        "registry-bridge": {"reconcile_interval_seconds": 5.0},
        "inference": {"asset_href_rewrites": mirror},
    }


async def run(
    home: Path,
    data_dir: Path | None,
    *,
    demo: bool,
    train_timeout: float = 900,
    host: str = "127.0.0.1",
    mlflow_port: int = 5000,
) -> None:
    home = home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    # on the loop's thread, before anything runs on it: Ctrl-C stops it at once
    data_dir = demo_data_dir(data_dir)
    port = free_port(host, mlflow_port)
    console.print(f"[bold]eostream[/bold] embedded mode, state in {home}")
    with mlflow_server(home, host, port) as mlflow_url:
        console.print(f"MLflow UI: {mlflow_url}")
        bus = embedded_bus(home)  # durable: a crash loses no event (ADR 0014)
        store = LocalObjectStore(home / "objects", "eostream")
        store.check()
        context = EmbeddedContext(
            bus=bus, store=store, home=home, mlflow_tracking_uri=mlflow_url,
            data_dir=data_dir, http_host=host, options=demo_options(data_dir),
        )  # fmt: skip
        observer = Observer()
        watcher = bus.consumer(list(WATCHED), "embedded-observer", observer)
        watch_task = asyncio.create_task(watcher.run())
        letters_task = asyncio.create_task(watch_dead_letters(observer, bus))
        try:
            async with EmbeddedSystem(context) as system:
                for label, url in system.urls().items():
                    console.print(f"{label}: {url}")
                if demo:
                    await scenario(observer, bus, train_timeout=train_timeout)
                    await print_results(observer, system.urls())
                else:
                    await asyncio.Event().wait()  # until SIGINT/SIGTERM cancels us
        finally:
            letters_task.cancel()
            await watcher.stop()
            await watch_task


async def watch_dead_letters(observer: Observer, bus: SqliteBus) -> None:
    seen = await bus.call(lambda db: db.end(topics.DEAD_LETTER))  # earlier runs' were told then
    while True:
        seen = observer.note_dead_letters(bus, seen)
        await asyncio.sleep(0.5)


class DemoFailed(Exception):
    """The demo could not finish; the message says what did not happen."""


async def scenario(observer: Observer, bus: SqliteBus, *, train_timeout: float) -> None:
    # The bridge re-announces a champion shipped by an earlier run before its start() returns.
    if await observer.wait(lambda: observer.promoted, timeout=3):
        observer.say("a champion from an earlier run is live: no training needed")
    else:
        request = request_training()
        observer.say(
            f"no champion yet: asking for a {request.architecture} on {request.band_set} "
            f"({request.epochs} epochs, {request.samples_per_class} patches per class)"
        )
        await bus.publish(topics.TRAINING_REQUESTS, request)
        if not await observer.wait(lambda: observer.promoted, timeout=train_timeout):
            raise DemoFailed(f"no model was promoted within {train_timeout:.0f} s")
    # Ingest polls its catalogue at start; anything new is classified by the live model.
    await observer.wait(lambda: observer.discovered, timeout=20)
    if not observer.discovered:
        observer.say("no new scenes: every scene of the catalogue was announced before")
        return

    def pending() -> set[str]:
        return set(observer.discovered) - set(observer.classified) - set(observer.dead_lettered)

    if not await observer.wait(lambda: not pending(), timeout=900):
        raise DemoFailed(f"scenes not classified within 15 minutes: {sorted(pending())}")
    failed = set(observer.discovered) & set(observer.dead_lettered)
    if failed:
        raise DemoFailed(f"scenes dead-lettered: {sorted(failed)}; see the reasons above")


async def print_results(observer: Observer, urls: Mapping[str, str]) -> None:
    """The table of every result the inference API knows, this run's and earlier runs'."""
    api = urls.get("inference REST API")
    if api is None:
        console.print("[yellow]no inference API in this system: nothing to list[/yellow]")
        return
    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        response = await client.get("/results", params={"limit": 100})
        response.raise_for_status()
        found = response.json()
    table = Table(title=f"Classified scenes ({found['total']})")
    for column in ("scene", "model", "top classes", "quicklook"):
        table.add_column(column, overflow="fold")
    for result in found["results"]:
        shares = sorted(result["class_shares"].items(), key=lambda kv: -kv[1])[:3]
        table.add_row(
            result["scene_id"],
            f"{result['model_name']} v{result['model_version']}",
            ", ".join(f"{name} {share:.0%}" for name, share in shares),
            result["links"]["quicklook"],
        )
    console.print(table)
    console.print("REST: " + ", ".join(f"{api}{path}" for path in ("/docs", "/results", "/stac")))


def request_training() -> TrainingRequested:
    return TrainingRequested(
        band_set="rgb", architecture="small_cnn", epochs=3, samples_per_class=300,
        requested_by="eostream demo", reason="no champion yet",
    )  # fmt: skip
