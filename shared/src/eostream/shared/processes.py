"""Each service as its own process against the real local stack (``eostream up --stack local``).

The embedded mode (:mod:`eostream.shared.embedded`) runs every service in one process on an
in-process bus. This module runs them as operators do: one process per service, talking through
Kafka, MinIO, PostgreSQL and the MLflow server that ``deploy/local/stack up`` started. The
end-to-end tests and the latency benchmark use the same :class:`ProcessGroup`, so what they
measure is what ``eostream up --stack local`` runs.

Each service offers a process factory through the ``eostream.processes`` entry-point group: a
callable ``(stack, deployment, port) -> ProcessSpec`` that knows its own settings' variable
names. This module knows none of them beyond the shared ones (:func:`service_env`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from importlib.metadata import entry_points
from pathlib import Path

import httpx

from eostream.shared.embedded import START_ORDER
from eostream.shared.errors import ConfigError
from eostream.shared.settings import S3Settings

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "eostream.processes"


#: The variables ``deploy/local/stack env`` prints, by field of :class:`LocalStack`.
STACK_VARIABLES = {
    "kafka_bootstrap": "EOSTREAM_KAFKA_BOOTSTRAP",
    "s3_endpoint": "EOSTREAM_S3_ENDPOINT",
    "s3_access_key": "EOSTREAM_S3_ACCESS_KEY",
    "s3_secret_key": "EOSTREAM_S3_SECRET_KEY",
    "pg_dsn": "EOSTREAM_PG_DSN",
    "mlflow_uri": "EOSTREAM_MLFLOW_URI",
    "stac_api_url": "EOSTREAM_STAC_API_URL",
}


@dataclass(frozen=True)
class LocalStack:
    """The servers of the real local stack, as ``deploy/local/stack env`` exports them."""

    kafka_bootstrap: str
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str
    pg_dsn: str
    mlflow_uri: str
    stac_api_url: str
    prometheus_url: str | None = None
    prometheus_targets_dir: Path | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> LocalStack:
        env = os.environ if environ is None else environ
        missing = [var for var in STACK_VARIABLES.values() if not env.get(var)]
        if missing:
            raise ConfigError(
                f"{', '.join(missing)} not set: start the stack with `deploy/local/stack up` and "
                'export its addresses with `eval "$(deploy/local/stack env)"`'
            )
        targets = env.get("EOSTREAM_PROMETHEUS_TARGETS_DIR")
        return cls(
            **{name: env[var] for name, var in STACK_VARIABLES.items()},
            prometheus_url=env.get("EOSTREAM_PROMETHEUS_URL") or None,
            prometheus_targets_dir=Path(targets) if targets else None,
        )

    @classmethod
    def from_script(cls, script: Path, *, start: bool = True) -> LocalStack:
        """Start the stack with its script (idempotent) and read the addresses it exports."""
        if start:
            subprocess.run([str(script), "up"], check=True)  # noqa: S603 - the repo's own script
        printed = subprocess.run(  # noqa: S603
            [str(script), "env"], check=True, capture_output=True, text=True
        ).stdout
        return cls.from_environ(parse_exports(printed))

    def s3_settings(self) -> S3Settings:
        return S3Settings.model_validate(
            {
                "endpoint": self.s3_endpoint,
                "access_key": self.s3_access_key,
                "secret_key": self.s3_secret_key,
            }
        )

    def client_env(self) -> dict[str, str]:
        """What MLflow and S3 clients in every service read (artifacts go to MinIO)."""
        return {
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "MLFLOW_S3_ENDPOINT_URL": f"http://{self.s3_endpoint}",
            "AWS_ACCESS_KEY_ID": self.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": self.s3_secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }


def parse_exports(text: str) -> dict[str, str]:
    """``export NAME=VALUE`` lines (as ``stack env`` prints them) to a mapping."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, value = words[1].split("=", 1)
            found[name] = value
    return found


@dataclass(frozen=True)
class Deployment:
    """What the processes of one deployment share. Two deployments on one stack stay apart:
    their topics, consumer groups, bucket prefixes and model names do not meet."""

    name: str = "local"
    home: Path = Path(".eostream/local")
    data_dir: Path | None = None
    topic_prefix: str = ""
    model_name: str = "eurosat-landcover"
    bucket: str = "eostream"
    host: str = "127.0.0.1"
    log_level: str = "INFO"

    def secret(self, name: str) -> str:
        """A secret of this deployment, made once and kept in its home (0600)."""
        path = self.home / "secrets" / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(secrets.token_urlsafe(24))
        return path.read_text().strip()


@dataclass(frozen=True)
class ProcessSpec:
    """How to run one service: its command line, its environment and its operator port."""

    name: str
    args: tuple[str, ...]
    env: Mapping[str, str]
    port: int
    host: str = "127.0.0.1"
    urls: Mapping[str, str] = field(default_factory=dict)
    #: Prometheus job name; dashboards and alert rules select services by it
    job: str = ""

    def with_env(self, extra: Mapping[str, str]) -> ProcessSpec:
        return replace(self, env={**self.env, **extra})


ProcessFactory = Callable[[LocalStack, Deployment, int], ProcessSpec]


def eostream_command(*words: str) -> tuple[str, ...]:
    """``eostream WORDS...`` run by this interpreter (no PATH assumption)."""
    return (sys.executable, "-c", "from eostream.shared.cli import main; main()", *words)


def service_env(
    prefix: str, stack: LocalStack, deployment: Deployment, port: int
) -> dict[str, str]:
    """The settings every service has (bus, store, HTTP), for the variable prefix ``prefix``."""
    env = {
        f"{prefix}LOG_LEVEL": deployment.log_level,
        f"{prefix}HTTP_HOST": deployment.host,
        f"{prefix}HTTP_PORT": str(port),
        f"{prefix}BUS": "kafka",
        f"{prefix}KAFKA__BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        f"{prefix}KAFKA__TOPIC_PREFIX": deployment.topic_prefix,
        f"{prefix}STORE": "s3",
        f"{prefix}S3__ENDPOINT": stack.s3_endpoint,
        f"{prefix}S3__ACCESS_KEY": stack.s3_access_key,
        f"{prefix}S3__SECRET_KEY": stack.s3_secret_key,
        f"{prefix}BUCKET": deployment.bucket,
        **stack.client_env(),
    }
    if deployment.data_dir is not None:
        env["EOSTREAM_DATA_DIR"] = str(deployment.data_dir)
    return env


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

    def wait_ready(self, timeout: float = 180.0, *, probe: str = "/readyz") -> None:
        """Wait until ``probe`` answers: /livez (serving) or /readyz (doing its work)."""
        deadline = time.monotonic() + timeout
        while not self.answers(probe):
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with status {self._process.returncode} before it was "
                    f"ready; last lines of {self.log_path}:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name} {probe} not answering within {timeout:.0f} s; last lines of "
                    f"{self.log_path}:\n{self.tail()}"
                )
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

    def start(self, *, ready_timeout: float = 240.0) -> None:
        """Start every process and wait until each serves /livez (inference is ready only once a
        model is live, so readiness is the caller's to wait for)."""
        self.deployment.home.mkdir(parents=True, exist_ok=True)
        try:
            for process in self.processes.values():
                process.start()
            for process in self.processes.values():
                process.wait_ready(ready_timeout, probe="/livez")
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
