"""EmbeddedSession.start in a notebook: a start that fails or takes too long leaves nothing
running behind (the caller gets no session to stop) and says why in one ConfigError, with no
traceback from its thread. Fake components on the real embedded bus and store; no MLflow (the
components named here use none)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from eostream.runner import session as session_module
from eostream.runner.session import EmbeddedSession
from eostream.shared.embedded import ComponentFactory, EmbeddedContext
from eostream.shared.errors import ConfigError

HANG_GUARD = 60.0  # seconds; only so that a regression fails instead of hanging the suite


class Worker:
    """Starts a real child process and stops it, as a component with a server would."""

    name = "worker"

    def __init__(self) -> None:
        self.child: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])

    async def stop(self) -> None:
        if self.child is not None:
            self.child.terminate()
            self.child.wait()

    @property
    def urls(self) -> Mapping[str, str]:
        return {}


class NeverReady:
    """A component whose start never returns (waits on something that never answers)."""

    name = "never-ready"

    async def start(self) -> None:
        await asyncio.Event().wait()

    async def stop(self) -> None:
        return None

    @property
    def urls(self) -> Mapping[str, str]:
        return {}


@pytest.fixture
def thread_errors(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """What a thread's uncaught exception would print ("Exception in thread ...")."""
    seen: list[str] = []
    monkeypatch.setattr(
        threading, "excepthook", lambda args: seen.append(f"{args.thread}: {args.exc_value!r}")
    )
    yield seen


def _components(monkeypatch: pytest.MonkeyPatch, found: dict[str, ComponentFactory]) -> None:
    monkeypatch.setattr(session_module, "discover_components", lambda: found)


def _embedded_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "eostream-embedded" and t.is_alive()]


def test_a_start_that_times_out_stops_what_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, thread_errors: list[str]
) -> None:
    worker = Worker()
    _components(monkeypatch, {"worker": lambda _: worker, "never-ready": lambda _: NeverReady()})
    with pytest.raises(ConfigError, match="did not start within 1 s"):
        EmbeddedSession.start(tmp_path, components=("worker", "never-ready"), timeout=1)
    assert worker.child is not None
    try:
        worker.child.wait(timeout=HANG_GUARD)  # stopped by the failed start, not left running
    except subprocess.TimeoutExpired:
        worker.child.kill()
        pytest.fail("the worker a timed-out start had started still runs")
    assert not _embedded_threads()
    assert thread_errors == []


def test_a_component_that_fails_to_start_is_one_config_error_and_no_thread_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, thread_errors: list[str]
) -> None:
    def broken(context: EmbeddedContext) -> Worker:
        raise ConfigError("INFERENCE_X is invalid")

    _components(monkeypatch, {"inference": broken})
    with pytest.raises(ConfigError, match="did not start: INFERENCE_X is invalid"):
        EmbeddedSession.start(tmp_path, components=("inference",), timeout=HANG_GUARD)
    assert thread_errors == []
    assert not _embedded_threads()
