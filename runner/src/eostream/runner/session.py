"""The embedded system in the background of this process, for notebooks and scripts.

``eostream up`` runs the embedded system in the foreground until Ctrl-C. A notebook wants the
same system beside its own code: :meth:`EmbeddedSession.start` runs it (the MLflow server on its
sqlite database, the durable bus, the local store and the chosen components) on an event loop of
its own in a daemon thread, waits until every REST API answers, and hands back typed clients
(``eostream.client``) with the API keys the embedded system keeps under its home:

    session = EmbeddedSession.start(".eostream/notebooks")
    api = session.inference()                      # InferenceClient, with the writing key
    submitted = session.train(TrainingRequested(epochs=2, samples_per_class=20))
    print(submitted.run_url)                       # the MLflow run, live while it trains
    session.stop()

State stays under the home between sessions, as with ``eostream up``: a second session finds
the models, results and MLflow runs of the first. A session uses the MLflow server advertised
on its home when one runs (the notebooks' pytest run starts one for all of them), else starts
its own and stops it in :meth:`stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Coroutine, Iterable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from eostream.client import (
    ApiError,
    BridgeClient,
    InferenceClient,
    ModelVersion,
    Submission,
    TrainingClient,
)
from eostream.runner.mlflow_server import home_mlflow_server
from eostream.shared.embedded import EmbeddedContext, EmbeddedSystem, discover_components
from eostream.shared.embedded import embedded_bus as open_bus
from eostream.shared.errors import ConfigError
from eostream.shared.events import ModelVersionRegistered, TrainingRequested
from eostream.shared.storage.local import LocalObjectStore

T = TypeVar("T")
#: Without ingest: a notebook names its scenes itself (OGC processes), nothing is watched.
COMPONENTS = ("registry-bridge", "inference", "trainer")
MLFLOW_USERS = frozenset(("registry-bridge", "trainer"))
INFERENCE_KEY = Path("inference") / "api-key"
BRIDGE_KEY = Path("registry-bridge") / "api-key"
#: Seconds :meth:`EmbeddedSession.start` waits, on a failed start, for what started to stop.
STOP_AFTER_TIMEOUT = 120.0


class EmbeddedSession:
    """A running embedded system; build it with :meth:`start`, end it with :meth:`stop`."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.urls: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._stop_asked = threading.Event()  # seen before the loop runs, and by MLflow's wait
        self._task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._bus: Any = None
        self._thread: threading.Thread | None = None
        self._timeout = 300.0

    @classmethod
    def start(
        cls,
        home: str | Path,
        data_dir: str | Path | None = None,
        *,
        components: Iterable[str] = COMPONENTS,
        options: Mapping[str, Mapping[str, Any]] | None = None,
        host: str = "127.0.0.1",
        timeout: float = 600,
    ) -> EmbeddedSession:
        """Start the components (default: registry-bridge, inference, trainer) on the home; the
        data folder defaults to ``EOSTREAM_DATA_DIR``."""
        session = cls(Path(home).resolve())
        session.home.mkdir(parents=True, exist_ok=True)
        session._timeout = timeout
        folder = Path(data_dir) if data_dir is not None else None
        wanted = tuple(components)
        thread = threading.Thread(
            target=lambda: asyncio.run(session._serve(folder, wanted, options or {}, host)),
            name="eostream-embedded",
            daemon=True,
        )
        session._thread = thread
        thread.start()
        if not session._ready.wait(timeout):
            # no session reaches the caller: stop what did start (MLflow, components) here
            session.stop(timeout=STOP_AFTER_TIMEOUT)
            raise ConfigError(f"the embedded system did not start within {timeout:g} s")
        if session._failure is not None:
            session.stop(timeout=STOP_AFTER_TIMEOUT)  # the thread is ending: let it finish
            raise ConfigError(f"the embedded system did not start: {session._failure}")
        return session

    async def _serve(
        self,
        data_dir: Path | None,
        components: tuple[str, ...],
        options: Mapping[str, Mapping[str, Any]],
        host: str,
    ) -> None:
        self._stop = asyncio.Event()
        self._task = asyncio.current_task()
        self._loop = asyncio.get_running_loop()  # last: stop() reads it to reach the others
        try:
            if self._stop_asked.is_set():  # stop() came before the loop ran
                return
            # MLflow only for the components that use it (inference alone needs none)
            tracking = (
                contextlib.nullcontext("")
                if not MLFLOW_USERS & set(components)
                else home_mlflow_server(
                    self.home,
                    host,
                    timeout=self._timeout,
                    meanwhile=discover_components,
                    cancelled=self._stop_asked.is_set,
                )
            )
            with tracking as mlflow_url:
                store = LocalObjectStore(self.home / "objects", "eostream")
                store.check()
                self._bus = open_bus(self.home)
                context = EmbeddedContext(
                    bus=self._bus, store=store, home=self.home, mlflow_tracking_uri=mlflow_url,
                    data_dir=data_dir, http_host=host, options=options,
                )  # fmt: skip
                found = discover_components()
                factories = {name: found[name] for name in components if name in found}
                async with EmbeddedSystem(context, factories) as system:
                    self.urls = {"MLflow UI": mlflow_url} if mlflow_url else {}
                    self.urls.update(system.urls())
                    self._ready.set()
                    await self._stop.wait()
        except asyncio.CancelledError:  # stop() while the components were starting
            pass
        except Exception as exc:  # start() raises it, as one line; the thread prints nothing
            self._failure = exc
        finally:
            self._ready.set()

    # -- where things are ---------------------------------------------------------------------
    @property
    def mlflow_url(self) -> str:
        return self.urls["MLflow UI"]

    @property
    def inference_url(self) -> str:
        return self.urls["inference REST API"]

    @property
    def bridge_url(self) -> str:
        return self.urls["registry-bridge REST API"]

    def inference(self) -> InferenceClient:
        """A client of the inference API with the key of its writing endpoints."""
        return InferenceClient(self.inference_url, api_key=self._key(INFERENCE_KEY))

    def bridge(self) -> BridgeClient:
        """A client of the registry-bridge API as its embedded ``operator`` (role promoter)."""
        return BridgeClient(self.bridge_url, api_key=self._key(BRIDGE_KEY))

    def _key(self, path: Path) -> str | None:
        file = self.home / path
        return file.read_text(encoding="utf-8").strip() if file.is_file() else None

    # -- training -----------------------------------------------------------------------------
    def train(self, request: TrainingRequested, *, wait_started: float = 300) -> Submission:
        """Ask the trainer for ``request``; returns once its MLflow run started (``run_url``)."""
        return self._call(TrainingClient(self._bus).submit(request, wait_started=wait_started))

    def registered(self, submission: Submission, *, timeout: float = 900) -> ModelVersionRegistered:
        """Wait until the submission's model is registered in MLflow."""
        return self._call(TrainingClient(self._bus).registered(submission, timeout=timeout))

    def champion(
        self, name: str, *, version: str | None = None, timeout: float = 300
    ) -> ModelVersion:
        """Wait until ``name`` has a champion (``version`` itself, when given) and return it;
        ConfigError with the gate's reasons when the bridge refused that version."""
        deadline = time.monotonic() + timeout
        with self.bridge() as bridge:
            while True:
                try:
                    rows = bridge.versions(name)
                except ApiError as exc:  # unanswered: the gate may hold the registry; ask again
                    if exc.status:
                        raise
                    rows = []
                for row in rows:
                    wanted = version is None or row.version == version
                    if wanted and "champion" in row.aliases:
                        return row
                    if version == row.version and row.gate in ("failed", "refused"):
                        raise ConfigError(f"the gate {row.gate} {name} v{version}: {row.reasons}")
                if time.monotonic() > deadline:
                    raise ConfigError(f"no champion {name} {version or ''} within {timeout:.0f} s")
                time.sleep(1)

    def _call(self, job: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            raise ConfigError("the embedded system is not running")
        future: Future[T] = asyncio.run_coroutine_threadsafe(job, self._loop)
        return future.result()

    # -- the end ------------------------------------------------------------------------------
    def stop(self, timeout: float = 120) -> None:
        """Stop every component (each finishes its work in flight) and the MLflow server this
        session started (one advertised on the home by another process stays)."""
        self._stop_asked.set()
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended already
                self._loop.call_soon_threadsafe(self._wake)
        if self._thread is not None:
            self._thread.join(timeout)

    def _wake(self) -> None:
        """On the loop: end the serving wait, or the start when it is still under way."""
        if self._stop is not None:
            self._stop.set()
        if not self._ready.is_set() and self._task is not None:
            self._task.cancel()
