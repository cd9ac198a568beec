"""Each service as its own process against the real local stack (``eostream up --stack local``).

The embedded mode (:mod:`eostream.shared.embedded`) runs every service in one process on an
in-process bus. This module runs them as operators do: one process per service, talking through
Kafka, MinIO, PostgreSQL and the MLflow server that ``deploy/local/stack up`` started. The
end-to-end tests and the latency benchmark use the same :class:`ProcessGroup`, so what they
measure is what ``eostream up --stack local`` runs.

Each service offers a process factory through the ``eostream.processes`` entry-point group: a
callable ``(stack, deployment, port) -> ProcessSpec`` that knows its own settings' variable
names (described in :mod:`eostream.shared.deployment`). This module starts, supervises and
registers them; it knows no service.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from importlib.metadata import entry_points
from pathlib import Path

import httpx

from eostream.shared.deployment import (
    ENTRY_POINT_GROUP,
    Deployment,
    LocalStack,
    ProcessFactory,
    ProcessSpec,
)
from eostream.shared.embedded import START_ORDER
from eostream.shared.errors import ConfigError

log = logging.getLogger(__name__)


def parse_exports(text: str) -> dict[str, str]:
    """``export NAME=VALUE`` lines (as ``stack env`` prints them) to a mapping."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, value = words[1].split("=", 1)
            found[name] = value
    return found


def stack_from_script(script: Path, *, start: bool = True) -> LocalStack:
    """Start the local stack with its script (idempotent) and read the addresses it exports;
    ConfigError naming the command when the script fails."""
    if start:
        try:
            subprocess.run([str(script), "up"], check=True)  # noqa: S603 - the repo's own script
        except subprocess.CalledProcessError as exc:
            raise ConfigError(
                f"`{script} up` failed with status {exc.returncode} (its output is above); "
                f"fix that, then try again"
            ) from None
    try:
        printed = subprocess.run(  # noqa: S603
            [str(script), "env"], check=True, capture_output=True, text=True
        ).stdout
    except subprocess.CalledProcessError as exc:
        said = " ".join(exc.stderr.split()) if exc.stderr else "no message"
        raise ConfigError(f"`{script} env` failed with status {exc.returncode}: {said}") from None
    return LocalStack.from_environ(parse_exports(printed))


def discover_process_factories() -> dict[str, ProcessFactory]:
    found = {ep.name: ep.load() for ep in entry_points(group=ENTRY_POINT_GROUP)}
    order = {name: i for i, name in enumerate(START_ORDER)}
    return dict(sorted(found.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def _parent_death_signal() -> Callable[[], None] | None:
    """On Linux, a pre-exec hook that makes the child receive SIGTERM when the thread that started
    it dies: a supervisor killed with SIGKILL leaves no orphaned service behind (each drains and
    exits). Everything is looked up before the fork; the hook itself takes no Python lock."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig, sigterm = 1, int(signal.SIGTERM)

    def hook() -> None:
        prctl(pr_set_pdeathsig, sigterm)

    return hook


DIE_WITH_PARENT = _parent_death_signal()


class StartInterrupted(Exception):
    """The wait for readiness ended because a stop was asked (Ctrl-C, SIGTERM)."""


class NotReady(Exception):
    """A service process that exited, or did not answer, before it was ready. ``str()`` has the
    last lines of its log; :attr:`summary` is one line for a person (service and log file)."""

    def __init__(self, name: str, log_path: Path, reason: str, tail: str) -> None:
        super().__init__(f"{name} {reason}; last lines of {log_path}:\n{tail}")
        self.service = name
        self.log_path = log_path
        self.summary = f"{name} {reason}; see its log {log_path}"


class ExitedBeforeReadyError(NotReady, RuntimeError):
    """The process ended before it was ready."""


class NotReadyInTimeError(NotReady, TimeoutError):
    """The process did not answer within the readiness timeout."""


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ServiceProcess:
    """One service process: start, wait until ready, SIGTERM or SIGKILL, restart."""

    def __init__(self, spec: ProcessSpec, log_dir: Path) -> None:
        self.spec = spec
        self.log_path = log_dir / f"{spec.name}.log"
        self.starts = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()  # a supervisor thread and a person may both act
        self.stopped_on_purpose = False
        self._started_at = 0.0
        self._ended_at: float | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def uptime(self) -> float:
        """Seconds the current (or last) run lasted."""
        if self._process is None:
            return 0.0
        if self._process.poll() is not None and self._ended_at is None:
            self._ended_at = time.monotonic()
        return (self._ended_at or time.monotonic()) - self._started_at

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.poll()

    @property
    def ops_url(self) -> str:
        return f"http://{self.spec.host}:{self.spec.port}"

    def start(self) -> None:
        with self._lock:
            self._start()

    def _start(self) -> None:
        self.stopped_on_purpose = False
        if self.alive:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.spec.env, "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("ab") as out:
            out.write(f"\n=== start {self.starts + 1} at {time.ctime()} ===\n".encode())
            out.flush()
            self._process = subprocess.Popen(  # noqa: S603 - our interpreter, fixed arguments
                list(self.spec.args),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=DIE_WITH_PARENT,  # prctl only; resolved before the fork
            )
        self.starts += 1
        self._started_at, self._ended_at = time.monotonic(), None
        log.info("%s started (pid %d), log %s", self.name, self._process.pid, self.log_path)

    def answers(self, probe: str = "/readyz") -> bool:
        """True when the process is alive and its ops endpoint ``probe`` answers 200."""
        if not self.alive:
            return False
        try:
            return httpx.get(f"{self.ops_url}{probe}", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(
        self,
        timeout: float = 180.0,
        *,
        probe: str = "/readyz",
        stop: Callable[[], bool] | None = None,
    ) -> None:
        """Wait until ``probe`` answers: /livez (serving) or /readyz (doing its work).
        :class:`ExitedBeforeReadyError` when the process ends first, :class:`NotReadyInTimeError`
        after ``timeout`` seconds, :class:`StartInterrupted` as soon as ``stop()`` is true."""
        deadline = time.monotonic() + timeout
        while not self.answers(probe):
            # before the exit check: a Ctrl-C reaches the children too, and ends them
            if stop is not None and stop():
                raise StartInterrupted(f"stopped while {self.name} was starting")
            if self._process is not None and self._process.poll() is not None:
                status = self._process.returncode
                raise ExitedBeforeReadyError(
                    self.name, self.log_path, f"exited with status {status} before it was ready",
                    self.tail(),
                )  # fmt: skip
            if time.monotonic() > deadline:
                raise NotReadyInTimeError(
                    self.name, self.log_path, f"{probe} not answering within {timeout:g} s",
                    self.tail(),
                )  # fmt: skip
            time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would: no drain, no commit."""
        with self._lock:
            self._kill()

    def _kill(self) -> None:
        if self._process is not None and self.alive:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait()

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM and wait for the drain; SIGKILL after ``timeout``."""
        with self._lock:
            return self._stop(timeout)

    def _stop(self, timeout: float) -> int | None:
        self.stopped_on_purpose = True
        if self._process is None:
            return None
        if self.alive:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s: killing it", self.name, timeout)
                self._kill()
        return self._process.returncode

    def restart(self, *, ready_timeout: float = 180.0, probe: str = "/livez") -> None:
        self.stop()
        self.start()
        self.wait_ready(ready_timeout, probe=probe)

    def tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class ProcessGroup:
    """The services of one deployment, one process each, registered with Prometheus."""

    def __init__(
        self,
        stack: LocalStack,
        deployment: Deployment,
        *,
        env: Mapping[str, Mapping[str, str]] | None = None,
        only: tuple[str, ...] | None = None,
        factories: Mapping[str, ProcessFactory] | None = None,
        replicas: Mapping[str, int] | None = None,
    ) -> None:
        """``replicas``: more than one process of a service (``inference: 3`` starts inference,
        inference-2 and inference-3, each on its own port; ``env`` may name a replica to give it
        settings of its own, e.g. a consumer group that must not be shared)."""
        self.stack = stack
        self.deployment = deployment
        chosen = dict(factories) if factories is not None else discover_process_factories()
        if only is not None:
            unknown = sorted(set(only) - chosen.keys())
            if unknown:
                raise ConfigError(f"unknown service(s) {unknown}; known: {sorted(chosen)}")
            chosen = {k: v for k, v in chosen.items() if k in only}
        overrides = env or {}
        self.processes: dict[str, ServiceProcess] = {}
        for name, factory in chosen.items():
            for replica in range(1, (replicas or {}).get(name, 1) + 1):
                key = name if replica == 1 else f"{name}-{replica}"
                spec = factory(stack, deployment, free_port(deployment.host))
                spec = spec.with_env(overrides.get(name, {}))
                if replica > 1:
                    spec = replace(
                        spec.with_env(overrides.get(key, {})),
                        name=key,
                        job=spec.job or f"eostream-{name}",  # one job, several targets
                    )
                self.processes[key] = ServiceProcess(spec, deployment.home / "logs")

    def __getitem__(self, name: str) -> ServiceProcess:
        return self.processes[name]

    @property
    def targets_file(self) -> Path | None:
        folder = self.stack.prometheus_targets_dir
        return None if folder is None else folder / f"eostream-{self.deployment.name}.json"

    def start(
        self, *, ready_timeout: float = 240.0, stop: Callable[[], bool] | None = None
    ) -> None:
        """Start every process and wait until each serves /livez (inference is ready only once a
        model is live, so readiness is the caller's to wait for). On any failure, or
        :class:`StartInterrupted` once ``stop()`` is true, the processes started are stopped
        before the exception leaves."""
        self.deployment.home.mkdir(parents=True, exist_ok=True)
        try:
            for process in self.processes.values():
                process.start()
            for process in self.processes.values():
                process.wait_ready(ready_timeout, probe="/livez", stop=stop)
        except BaseException:
            self.stop()
            raise
        self.register_targets()

    def register_targets(self) -> None:
        """Tell the stack's Prometheus where each service's /metrics is (file_sd)."""
        path = self.targets_file
        if path is None:
            return
        groups = [
            {
                "targets": [f"{self.deployment.host}:{p.spec.port}"],
                # no `service` label here: the metrics carry their own, and a target label of the
                # same name would rename theirs to exported_service
                "labels": {
                    "job": p.spec.job or f"eostream-{name}",
                    "deployment": self.deployment.name,
                },
            }
            for name, p in self.processes.items()
        ]
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_suffix(".tmp")
        scratch.write_text(json.dumps(groups, indent=2))
        scratch.replace(path)  # Prometheus never reads half a file

    def unregister_targets(self) -> None:
        path = self.targets_file
        if path is not None:
            path.unlink(missing_ok=True)

    def stop(self, timeout: float = 60.0) -> None:
        for process in reversed(list(self.processes.values())):
            process.stop(timeout)
        self.unregister_targets()

    @contextlib.contextmanager
    def running(self, *, ready_timeout: float = 240.0) -> Iterator[ProcessGroup]:
        self.start(ready_timeout=ready_timeout)
        try:
            yield self
        finally:
            self.stop()

    def supervise(self, stop: Callable[[], bool], *, poll: float = 1.0) -> None:
        """Restart a process that exited on its own, with backoff, until ``stop()`` is true.
        The backoff doubles on each quick exit (up to a minute) and resets after a minute up."""
        backoff: dict[str, float] = dict.fromkeys(self.processes, 1.0)
        due: dict[str, float] = {}
        while not stop():
            now = time.monotonic()
            for name, process in self.processes.items():
                if process.alive or process.stopped_on_purpose:
                    continue
                if name not in due:
                    if process.uptime() > 60:
                        backoff[name] = 1.0
                    log.warning(
                        "%s exited (status %s); restarting in %.0f s. Last lines:\n%s",
                        name,
                        process.returncode,
                        backoff[name],
                        process.tail(10),
                    )
                    due[name] = now + backoff[name]
                elif now >= due[name]:
                    del due[name]
                    process.start()
                    backoff[name] = min(backoff[name] * 2, 60.0)
            time.sleep(poll)
