"""Running a long-lived worker: signals, graceful drain, one clear line on a bad environment."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from eostream.shared.errors import ConfigError
from eostream.shared.settings import ServiceSettings

log = logging.getLogger(__name__)


def install_stop_signals(stop: Callable[[], None]) -> None:
    """SIGTERM and SIGINT call ``stop`` once: stop taking work, finish in-flight, commit, close."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)


def run_service(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main`` in a fresh event loop; a ConfigError ends the process with one line."""
    try:
        asyncio.run(main())
    except ConfigError as exc:
        print(f"eostream: {exc}", file=sys.stderr)  # noqa: T201 - the one line a user sees
        raise SystemExit(2) from None


async def preflight(settings: ServiceSettings) -> None:
    """Check the backends a service needs before it starts work: a bad environment fails here,
    with one line naming the problem (raised as ConfigError), not later in a stack trace.

    The object store is checked (credentials, bucket); Kafka is checked by the bus's start().
    """
    from eostream.shared.storage import build_object_store

    await asyncio.to_thread(build_object_store(settings).check)
