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
import json
import logging
import os
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from eostream.runner.datasets import DEMO, MIRROR_ENV, SCENE_DIR, default_data_dir
from eostream.runner.demo_scene import (
    AUGMENTATION,
    DEMO_GATE,
    INFERENCE_OPTIONS,
    SCENE_ID,
    Accuracy,
    Reference,
    build_reference,
    map_accuracy,
    read_accuracy,
    request_training,
)
from eostream.runner.download import DataFetchError
from eostream.runner.mlflow_server import PASSWORD_FILE, USERNAME, free_port, mlflow_server
from eostream.runner.provision import ensure_data
from eostream.shared import topics
from eostream.shared.bus.base import Delivery, parse_dead_letter
from eostream.shared.bus.sqlite import SqliteBus
from eostream.shared.embedded import (
    EmbeddedContext,
    EmbeddedSystem,
    discover_components,
    embedded_bus,
)
from eostream.shared.errors import ConfigError
from eostream.shared.events import (
    Event,
    ModelPromoted,
    ModelVersionRegistered,
    SceneClassified,
    SceneDiscovered,
    TrainingStarted,
)
from eostream.shared.provenance import run_reference
from eostream.shared.runtime import install_stop_signals
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


@dataclass
class Observer:
    """Watches the pipeline's events on the embedded bus and tells a person what happens."""

    started: float = field(default_factory=time.monotonic)
    promoted: list[ModelPromoted] = field(default_factory=list)
    registered: dict[str, ModelVersionRegistered] = field(default_factory=dict)
    discovered: dict[str, SceneDiscovered] = field(default_factory=dict)
    classified: dict[str, SceneClassified] = field(default_factory=dict)
    dead_lettered: dict[str, str] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def say(self, text: str) -> None:
        console.print(f"[dim]{time.monotonic() - self.started:7.1f}s[/dim]  {text}")

    async def __call__(self, event: Event, delivery: Delivery) -> None:
        if isinstance(event, TrainingStarted):
            done = "trained already" if event.reused else "training started"
            self.say(f"{done}: MLflow run {run_reference(event.run_url)}")
        elif isinstance(event, ModelPromoted):
            self.promoted.append(event)
            self.say(f"model {event.name} v{event.version} is {event.alias} ({event.sha256[:12]})")
        elif isinstance(event, ModelVersionRegistered):
            self.registered[event.key] = event
            self.say(f"model {event.name} v{event.version} registered; the gate scores it")
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
    if data_dir is not None:  # named: a typo is an error, not a 144 MB download
        if not data_dir.is_dir():
            raise ConfigError(
                f"the data folder {data_dir} (--data-dir / EOSTREAM_DATA_DIR) is not a folder; "
                "name the folder that holds the data, or set none to download it"
            )
        console.print(f"data: {data_dir} (the data folder setting)", soft_wrap=True)
        return data_dir
    mirror = os.environ.get(MIRROR_ENV) or None
    target = default_data_dir()
    console.print(
        f"data: no data folder set; using {target}, downloaded once ({DEMO.size / 1e6:.0f} MB) "
        f"from {mirror or 'the official sources'} and checked by sha256",
        soft_wrap=True,
    )
    try:
        return ensure_data(target, mirror=mirror)
    except DataFetchError as exc:  # what to do next, on the same line
        raise DataFetchError(
            f"{exc}; without internet, set EOSTREAM_DATA_DIR to a copy of the data folder, or "
            f"{MIRROR_ENV} to a mirror of its files (`eostream data urls` lists them)"
        ) from exc


#: ``eostream up``'s scene without sources: the 29RKH tile of the data folder, whose STAC item
#: names the public Earth Search bucket; inference reads the same files from the data folder.
RKH_SCENE_BUCKET = (
    "https://sentinel-cogs.s3.us-west-2.amazonaws.com/sentinel-s2-l2a-cogs/"
    "29/R/KH/2020/2/S2A_29RKH_20200219_0_L2A/"
)


def demo_options(
    data_dir: Path | None, reference: Reference | None = None
) -> Mapping[str, Mapping[str, Any]]:
    """Options of the embedded components. With the demo's reference set, ingest watches its
    scene item and the trainer and inference use the recipe of docs/maps-accuracy.md."""
    mirror = {RKH_SCENE_BUCKET: f"{data_dir / SCENE_DIR}/"} if data_dir else {}
    options: dict[str, dict[str, Any]] = {
        "ingest": {"poll_interval_seconds": 5.0},
        "trainer": {},
        "registry-bridge": {"reconcile_interval_seconds": 5.0},
        "inference": {"asset_href_rewrites": mirror},
    }
    if reference is not None:
        options["registry-bridge"]["gate"] = DEMO_GATE
        source = {"kind": "static", "name": "demo-boadella", "href": str(reference.scene_item)}
        options["ingest"]["sources"] = [source]
        options["trainer"]["input_augmentation"] = list(AUGMENTATION)
        options["inference"].update(INFERENCE_OPTIONS)
    return options


async def run(
    home: Path,
    data_dir: Path | None,
    *,
    demo: bool,
    exit_after: bool = False,
    train_timeout: float = 900,
    host: str = "127.0.0.1",
    mlflow_port: int = 5000,
) -> None:
    """The embedded system; with ``demo``, the demo's job first. It then serves until SIGINT or
    SIGTERM (``exit_after``: it stops once the job is done), and says so in one line."""
    home = home.resolve()
    if home.exists() and not home.is_dir():
        raise ConfigError(f"--home {home} is a file, not a folder")
    home.mkdir(parents=True, exist_ok=True)
    # on the loop's thread, before anything runs on it: Ctrl-C stops it at once
    data_dir = demo_data_dir(data_dir)
    stop = asyncio.Event()
    install_stop_signals(stop.set)
    reference = await build_reference(home, data_dir) if demo else None
    port = free_port(host, mlflow_port)
    console.print(f"[bold]eostream[/bold] embedded mode, state in {home}")
    # the services' imports (~8 s of CPU) while the MLflow server starts in its own process
    with mlflow_server(home, host, port, meanwhile=discover_components) as mlflow_url:
        console.print(
            f"MLflow UI: {mlflow_url} (user {USERNAME}, password in {home / PASSWORD_FILE})",
            soft_wrap=True,
        )
        bus = embedded_bus(home)  # durable: a crash loses no event (ADR 0014)
        store = LocalObjectStore(home / "objects", "eostream")
        store.check()
        context = EmbeddedContext(
            bus=bus, store=store, home=home, mlflow_tracking_uri=mlflow_url,
            data_dir=data_dir, http_host=host, options=demo_options(data_dir, reference),
        )  # fmt: skip
        observer = Observer()
        watcher = bus.consumer(list(WATCHED), "embedded-observer", observer)
        watch_task = asyncio.create_task(watcher.run())
        letters_task = asyncio.create_task(watch_dead_letters(observer, bus))
        try:
            async with EmbeddedSystem(context) as system:
                urls = {"MLflow UI": mlflow_url, **system.urls()}
                for label, url in system.urls().items():
                    console.print(f"{label}: {url}")
                if reference is not None:
                    job = job_of(observer, bus, reference, urls, home, train_timeout)
                    if not await until_stopped(job, stop):
                        console.print("eostream: stopped by a signal before the demo finished")
                        return
                if exit_after:
                    return
                console.print(
                    "[bold]Serving[/bold] until Ctrl-C: " + ", ".join(urls.values()), soft_wrap=True
                )
                await stop.wait()
                console.print(f"eostream: stopping (signal); state kept in {home}")
        finally:
            letters_task.cancel()
            await watcher.stop()
            await watch_task


async def until_stopped(job: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Run ``job`` unless ``stop`` is set first (then cancel it): whether it ran to its end."""
    task = asyncio.create_task(job)
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task.done():
        task.result()  # DemoFailed: one line and exit status 2
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


async def job_of(
    observer: Observer, bus: SqliteBus, reference: Reference, urls: Mapping[str, str],
    home: Path, train_timeout: float,
) -> None:  # fmt: skip
    """The demo's job: a champion, the scene classified by it, the results, the map's accuracy
    (measured beside inference's own classification of the scene, as soon as it is champion)."""
    bridge = urls.get("registry-bridge REST API")
    champion = await ensure_champion(observer, bus, bridge, train_timeout=train_timeout)
    measuring = asyncio.create_task(
        accuracy_of(observer, champion, reference, urls["MLflow UI"], home)
    )
    try:
        await scene_classified(observer, champion, urls)
        await print_results(observer, urls)
        accuracy = await measuring
    finally:
        measuring.cancel()
    console.print(accuracy.line(), soft_wrap=True)
    api = urls.get("inference REST API")
    if api:
        console.print(
            f"the map: {api}/results/{SCENE_ID}/quicklook (legend on the right), "
            f"COG {api}/results/{SCENE_ID}/cog",
            soft_wrap=True,
        )


async def accuracy_of(
    observer: Observer, champion: ModelPromoted, reference: Reference, mlflow_url: str, home: Path
) -> Accuracy:
    """The champion's map accuracy, measured once per model version (kept under the home)."""
    out = home / "accuracy" / f"{champion.name}-v{champion.version}"
    if _measured_as_served(out / "summary.json"):
        observer.say(f"map accuracy of v{champion.version}: measured in an earlier run ({out})")
        return read_accuracy(out / "summary.json")
    observer.say(f"measuring v{champion.version}'s map against the labels (eostream maps evaluate)")
    return await map_accuracy(reference, champion.mlm_item_href, mlflow_url, out)


def _measured_as_served(summary: Path) -> bool:
    """Whether an earlier run measured the map as served: its summary names the precision
    (earlier versions of the demo scored the fp32 file, whatever inference ran)."""
    try:
        return "precision" in json.loads(summary.read_text())
    except (OSError, ValueError):
        return False


async def watch_dead_letters(observer: Observer, bus: SqliteBus) -> None:
    seen = await bus.call(lambda db: db.end(topics.DEAD_LETTER))  # earlier runs' were told then
    while True:
        seen = observer.note_dead_letters(bus, seen)
        await asyncio.sleep(0.5)


class DemoFailed(ConfigError):
    """The demo could not finish; the message says what did not happen (one line, status 2)."""


async def ensure_champion(
    observer: Observer, bus: SqliteBus, bridge: str | None, *, train_timeout: float
) -> ModelPromoted:
    """The live champion: announced again from an earlier run, else trained, gated, promoted."""
    # The bridge re-announces a champion shipped by an earlier run before its start() returns.
    if await observer.wait(lambda: observer.promoted, timeout=3):
        observer.say("a champion from an earlier run is live: no training needed")
    else:
        request = request_training()
        observer.say(
            f"no champion yet: asking for a {request.architecture} on {request.band_set} "
            f"({request.epochs} epochs, augmentation {'+'.join(AUGMENTATION)})"
        )
        await bus.publish(topics.TRAINING_REQUESTS, request)
        deadline = time.monotonic() + train_timeout
        while not await observer.wait(lambda: observer.promoted, timeout=5):
            if time.monotonic() > deadline:
                raise DemoFailed(f"no model was promoted within {train_timeout:.0f} s")
            if bridge:
                await fail_if_refused(bridge, observer.registered)
    return observer.promoted[-1]


async def fail_if_refused(bridge: str, registered: Mapping[str, ModelVersionRegistered]) -> None:
    """Raise DemoFailed when the gate refused a version this run registered (no promotion will
    come), with the gate's reasons, as the bridge's REST API tells them."""
    for event in registered.values():
        try:
            async with httpx.AsyncClient(base_url=bridge, timeout=10) as client:
                response = await client.get(f"/models/{event.name}")
        except httpx.HTTPError:
            return
        if response.status_code != 200:
            return
        for row in response.json():
            if row.get("version") == event.version and row.get("gate") in ("failed", "refused"):
                reasons = "; ".join(json.loads(row.get("reasons") or "[]"))
                raise DemoFailed(
                    f"the gate {row['gate']} {event.name} v{event.version} ({reasons}); "
                    f"see the registry-bridge's /models/{event.name}"
                )


async def scene_classified(
    observer: Observer, champion: ModelPromoted, urls: Mapping[str, str]
) -> None:
    """Wait until the demo scene's map by the champion exists (made now, or in an earlier run)."""
    api = urls.get("inference REST API")
    if api and await classified_before(api, champion):
        observer.say(f"{SCENE_ID} was classified by v{champion.version} in an earlier run")
        return

    # Ingest polls its catalogue at start; the scene waits on the bus until a model is live.
    def done() -> bool:
        return SCENE_ID in observer.classified or SCENE_ID in observer.dead_lettered

    if not await observer.wait(done, timeout=900):
        raise DemoFailed(f"{SCENE_ID} was not classified within 15 minutes")
    if SCENE_ID in observer.dead_lettered:
        raise DemoFailed(f"{SCENE_ID} was dead-lettered: {observer.dead_lettered[SCENE_ID]}")


async def classified_before(api: str, champion: ModelPromoted) -> bool:
    """Whether the inference API already holds the demo scene's map by the champion."""
    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        response = await client.get("/results", params={"scene_id": SCENE_ID})
    if response.status_code != 200:
        return False
    return any(
        r.get("model_version") == champion.version and r.get("model_name") == champion.name
        for r in response.json().get("results", [])
    )


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
