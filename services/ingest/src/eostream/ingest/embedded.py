"""The ingest component of the embedded mode (``eostream up``): the watcher and its replay
consumer on the shared in-process bus, with its state in sqlite under the embedded home (and the
same leader lock as a service, so two systems on one home do not both announce).

Options (``EmbeddedContext.options["ingest"]``): ``sources`` (a list of source objects, as in
INGEST_SOURCES) and ``poll_interval_seconds``. Without sources, and with a data folder, it watches
the one full scene of the data folder (the 29RKH tile's item), so a demo has a scene to classify.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pydantic import TypeAdapter

from eostream.ingest.settings import (
    IngestSettings,
    LabelsSettings,
    SourceConfig,
    StacApiSource,
    StaticSource,
)
from eostream.ingest.watcher import Watcher
from eostream.shared.embedded import EmbeddedContext

if TYPE_CHECKING:
    from eostream.ingest.service import IngestAdapters, IngestRunner

log = logging.getLogger(__name__)

DEMO_SCENE = (
    "sentinel2_scenes/S2A_29RKH_20200219_0_L2A_cog_downsampled/S2A_29RKH_20200219_0_L2A.json"
)


def embedded_settings(context: EmbeddedContext) -> IngestSettings:
    options = context.options_for("ingest")
    adapter: TypeAdapter[list[StacApiSource | StaticSource]] = TypeAdapter(list[SourceConfig])
    sources = adapter.validate_python(list(options.get("sources", [])))
    # no sources given: the 29RKH scene of the data folder (an explicit [] watches labels only)
    data_dir = context.data_dir
    if "sources" not in options and data_dir is not None and (data_dir / DEMO_SCENE).is_file():
        sources = [StaticSource(name="demo-29rkh", href=str(data_dir / DEMO_SCENE))]
    return IngestSettings(
        bus="memory",
        sources=tuple(sources),
        state="sqlite",
        sqlite_path=context.home / "ingest" / "state.sqlite",
        poll_interval_seconds=float(options.get("poll_interval_seconds", 30.0)),
        # the labels `eostream labels import --home` writes: announced when they change
        labels=LabelsSettings.model_validate(
            {"catalog": str(context.home / "labels"), "poll_interval_seconds": 30.0}
            | dict(options.get("labels", {}))
        ),
        backoff_max_seconds=60.0,
        http_host=context.http_host,
    )


class IngestComponent:
    name = "ingest"

    def __init__(self, settings: IngestSettings, adapters: IngestAdapters) -> None:
        self.settings = settings
        self._adapters = adapters
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.watcher: Watcher | None = None
        self.runner: IngestRunner | None = None

    @property
    def urls(self) -> Mapping[str, str]:
        return {}

    async def start(self) -> None:
        from eostream.ingest.service import build_ingest

        adapters = self._adapters
        await adapters.state.open()
        self.runner = build_ingest(
            self.settings,
            bus=adapters.bus,
            state=adapters.state,
            lock=adapters.lock,
            sources=adapters.sources,
            labels=adapters.labels,
        )
        self.watcher = self.runner.watcher
        self._task = asyncio.create_task(self.runner.run(self._stop), name="ingest-watcher")
        log.info(
            "ingest: watching %s", ", ".join(s.name for s in self.settings.sources) or "nothing"
        )

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self._adapters.state.close()


def component(context: EmbeddedContext) -> IngestComponent:
    """Entry point of the ``eostream.components`` group: the settings and adapters (the
    context's shared bus; sqlite state and file lock under the home) are picked here."""
    from eostream.ingest.service import from_settings

    settings = embedded_settings(context)
    return IngestComponent(settings, from_settings(settings, bus=context.bus))
