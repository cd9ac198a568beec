"""The embedded mode: every service in one process, on one durable bus and a local store.

The bus is :func:`embedded_bus`: a SQLite log under the embedded home (ADR 0014), so what was
published survives a crash or a Ctrl-C and what was not handled yet is delivered again at the
next start. (The in-process :class:`~eostream.shared.bus.memory.InMemoryBus` remains for tests
that want a throwaway bus.)

Each service offers an embedded component through the ``eostream.components`` entry-point group:
a callable taking an :class:`EmbeddedContext` and returning a :class:`Component`. This module
finds them (it never imports a service by name), starts them side by side and stops them in
reverse order. ``eostream up`` and ``eostream demo`` are built on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from eostream.shared.bus.base import Bus
from eostream.shared.errors import ConfigError
from eostream.shared.storage.base import ObjectStore

if TYPE_CHECKING:
    from eostream.shared.bus.sqlite import SqliteBus

log = logging.getLogger(__name__)

#: The bus log's file under the embedded home.
BUS_FILE = "bus.sqlite"
ENTRY_POINT_GROUP = "eostream.components"
#: Start order; components not listed here start after these, by name.
START_ORDER = ("registry-bridge", "inference", "trainer", "ingest")


@dataclass(frozen=True)
class EmbeddedContext:
    """What the embedded runner hands every component: shared adapters and where state lives."""

    bus: Bus
    store: ObjectStore
    home: Path
    mlflow_tracking_uri: str
    data_dir: Path | None = None
    http_host: str = "127.0.0.1"
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def fixed_settings(self) -> dict[str, Any]:
        """Settings the embedded system decides for every service: a bus that is not Kafka (the
        context's, handed in; the kind "memory" says only that), the local store under its home
        (built once, by the system), its HTTP host and its data folder."""
        fixed: dict[str, Any] = {
            "bus": "memory",
            "store": "local",
            "local_store_root": self.home / "objects",
            "http_host": self.http_host,
        }
        if self.data_dir is not None:  # else the service's own *_DATA_DIR / EOSTREAM_DATA_DIR
            fixed["data_dir"] = self.data_dir
        return fixed

    def options_for(self, component: str) -> Mapping[str, Any]:
        return self.options.get(component, {})

    def settable_options(self, component: str, fixed: Iterable[str]) -> dict[str, Any]:
        """The component's options, refusing those the embedded system decides itself."""
        options = dict(self.options_for(component))
        refused = sorted(set(fixed) & options.keys())
        if refused:
            raise ConfigError(
                f"{component} option(s) {', '.join(refused)} cannot be set in embedded mode "
                "(the embedded system provides them)"
            )
        return options


def embedded_bus(home: Path, *, service: str = "embedded") -> SqliteBus:
    """The embedded system's bus: the durable log at ``<home>/bus.sqlite``."""
    from eostream.shared.bus.sqlite import SqliteBus

    return SqliteBus(home / BUS_FILE, service=service)


class Component(Protocol):
    name: str

    async def start(self) -> None:
        """Start the component's work in the background; return once it is ready."""

    async def stop(self) -> None:
        """Stop taking work, finish what is in flight, release resources."""

    @property
    def urls(self) -> Mapping[str, str]:
        """Addresses a person may want (REST API, docs, ...), by label."""


ComponentFactory = Callable[[EmbeddedContext], Component]


def discover_components() -> dict[str, ComponentFactory]:
    found: dict[str, ComponentFactory] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name] = ep.load()
    return dict(sorted(found.items(), key=lambda kv: _order(kv[0])))


def _order(name: str) -> tuple[int, str]:
    return (START_ORDER.index(name) if name in START_ORDER else len(START_ORDER), name)


class EmbeddedSystem:
    """Starts the discovered components on one context; an async context manager."""

    def __init__(
        self, context: EmbeddedContext, factories: Mapping[str, ComponentFactory] | None = None
    ) -> None:
        self.context = context
        self._factories = dict(factories) if factories is not None else discover_components()
        self.components: list[Component] = []

    async def __aenter__(self) -> EmbeddedSystem:
        await self.context.bus.start()
        try:
            for name, factory in self._factories.items():
                component = factory(self.context)
                await component.start()
                self.components.append(component)
                log.info("embedded: %s started", name)
        except BaseException:
            await self._stop_all()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stop_all()

    async def _stop_all(self) -> None:
        for component in reversed(self.components):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(component.stop(), timeout=60)
        self.components.clear()
        await self.context.bus.close()

    def urls(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for component in self.components:
            merged.update({f"{component.name} {k}": v for k, v in component.urls.items()})
        return merged
