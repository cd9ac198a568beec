"""Fixtures every test suite in the repo can use: the data folder and the real local stack.

The stack's addresses come from `deploy/local/stack env` (the Makefile exports them). A test that
needs the stack and finds its variable missing fails with a message saying how to start it: it
never skips silently.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def require_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(
            f"{name} is not set: start the real stack with `deploy/local/stack up` and export "
            'its addresses with `eval "$(deploy/local/stack env)"` (`make test` does both)',
            pytrace=False,
        )
    return value


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(require_env("EOSTREAM_DATA_DIR"))
    if not path.is_dir():
        pytest.fail(f"EOSTREAM_DATA_DIR={path} is not a directory", pytrace=False)
    return path


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    return require_env("EOSTREAM_KAFKA_BOOTSTRAP")


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    return require_env("EOSTREAM_S3_ENDPOINT")


@pytest.fixture(scope="session")
def s3_credentials() -> tuple[str, str]:
    return require_env("EOSTREAM_S3_ACCESS_KEY"), require_env("EOSTREAM_S3_SECRET_KEY")


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    return require_env("EOSTREAM_PG_DSN")


@pytest.fixture(scope="session")
def mlflow_uri() -> str:
    return require_env("EOSTREAM_MLFLOW_URI")


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised sqlite MLflow database, copied per test: creating one runs MLflow's schema
    migrations, 2-10 s of CPU each time."""
    import mlflow

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def sqlite_mlflow(mlflow_template: Path, tmp_path: Path) -> str:
    """The tracking URI of this test's own sqlite MLflow database (``<tmp_path>/mlflow.db``)."""
    import shutil

    db = tmp_path / "mlflow.db"
    shutil.copyfile(mlflow_template, db)
    return f"sqlite:///{db}"


@pytest.fixture(scope="module")
def stack_mlflow_globals(mlflow_uri: str) -> Iterator[str]:
    """Point MLflow's process-wide tracking and registry URIs at the stack's server for a module.

    The trainer and the bridge set those globals to whatever server they last worked with
    (``mlflow.models.evaluate`` logs to the global URI); a test that calls ``mlflow.*`` functions
    (``models:/`` and ``runs:/`` URIs) must not inherit the one an earlier test left behind.
    """
    import mlflow

    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_registry_uri(mlflow_uri)
    yield mlflow_uri
    mlflow.set_tracking_uri(previous[0])
    mlflow.set_registry_uri(previous[1])


@pytest.fixture(autouse=True)
def root_logging() -> Iterator[None]:
    """Every test: a CLI invoked through typer's CliRunner points the root logger at CliRunner's
    stream (configure_logging), closed after the command; put the handlers back, so later code
    (in this test or the next: rasterio's warnings inside another CLI's captured output) does
    not log into a closed file."""
    import logging

    handlers, level = logging.root.handlers[:], logging.root.level
    yield
    logging.root.handlers[:] = handlers
    logging.root.setLevel(level)


MLFLOW_CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
#: the worker's MLflow account as the session started (``deploy/local/stack env``'s admin)
_STARTING_CREDENTIALS = {name: os.environ.get(name) for name in MLFLOW_CREDENTIALS}


def _put_back_credentials(when: str) -> None:
    """MLflow's account variables as the session started, with a warning naming ``when`` if
    they had changed."""
    import warnings

    now = {name: os.environ.get(name) for name in MLFLOW_CREDENTIALS}
    if now == _STARTING_CREDENTIALS:
        return
    for name, value in _STARTING_CREDENTIALS.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    changed = [name for name in MLFLOW_CREDENTIALS if now[name] != _STARTING_CREDENTIALS[name]]
    warnings.warn(f"{', '.join(changed)} found changed {when}; put back", stacklevel=2)


@pytest.fixture(autouse=True)
def mlflow_credentials_kept(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test starts and ends with MLflow's account as the session started. MLflow's clients
    read it from the environment, process-wide, and an embedded session logs its home's account
    in there (``runner.mlflow_server.logged_in``): clean-clone runs 115 and 116 had the stack's
    MLflow answer 401 to every later test of a worker once another account was left behind."""
    _put_back_credentials(f"before {request.node.nodeid}")
    yield
    _put_back_credentials(f"after {request.node.nodeid}")


@pytest.fixture(scope="session")
def stac_api_url() -> str:
    return require_env("EOSTREAM_STAC_API_URL")


@pytest.fixture(scope="session")
def prometheus_url() -> str:
    return require_env("EOSTREAM_PROMETHEUS_URL")


# -- a broker outage exactly while a service publishes ------------------------------------------

STACK_SCRIPT = Path(__file__).resolve().parent / "deploy" / "local" / "stack"


class GatedBus:
    """The real Kafka bus of a service, with its publishes to one topic held at a gate.

    The test decides when the held publish goes on to the broker: after it has stopped the broker.
    So the outage lands on the publish by construction, not by luck of timing. Everything else
    (consumers, other topics, dead letters) goes straight to the real bus.
    """

    def __init__(self, inner: Any, topic: str) -> None:
        self.inner = inner
        self.topic = topic
        self.held = asyncio.Event()
        self.release = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def _gate(self, topic: str) -> None:
        if topic == self.topic and not self.release.is_set():
            self.held.set()
            await self.release.wait()

    async def publish(self, topic: str, event: Any) -> None:
        await self._gate(topic)
        await self.inner.publish(topic, event)

    async def publish_many(self, topic: str, events: Any) -> None:
        await self._gate(topic)
        await self.inner.publish_many(topic, events)

    async def publish_raw(self, topic: str, message: Any) -> None:
        await self._gate(topic)
        await self.inner.publish_raw(topic, message)

    def consumer(self, topics: Any, group: str, handler: Any, *, dead_letter: bool = True) -> Any:
        return self.inner.consumer(topics, group, handler, dead_letter=dead_letter)


def sample(name: str, labels: dict[str, str]) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


async def wait_for(done: Any, what: str, seconds: float = 300) -> None:
    """Wait until ``done()``; the limit only ends a test that would otherwise hang."""
    try:
        async with asyncio.timeout(seconds):
            while not done():
                await asyncio.sleep(0.1)
    except TimeoutError:
        pytest.fail(f"still waiting for {what} after {seconds:.0f}s", pytrace=False)


async def kafka(action: str) -> None:
    """``deploy/local/stack down|up kafka`` (up waits until the broker is healthy)."""
    await asyncio.to_thread(
        subprocess.run, [str(STACK_SCRIPT), action, "kafka"], check=True, capture_output=True
    )


async def broker_outage_during(gated: GatedBus, service: str, *, restarts: bool = False) -> None:
    """Hold until the service publishes to the gated topic, stop the broker, let the publish meet
    the stopped broker (seen in the service's own metrics: a publish retried, or with
    ``restarts`` its consumer restarted), then start the broker again."""
    await wait_for(gated.held.is_set, f"{service} to publish to {gated.topic}")
    retries = {"service": service, "topic": gated.topic}
    before = sample("eostream_publish_retries_total", retries)
    restarted = sum_restarts(service)
    await kafka("down")
    try:
        gated.release.set()
        if restarts:
            await wait_for(lambda: sum_restarts(service) > restarted, f"{service} to restart")
        else:
            await wait_for(
                lambda: sample("eostream_publish_retries_total", retries) > before,
                f"{service}'s publish to meet the stopped broker",
            )
    finally:
        await kafka("up")


def sum_restarts(service: str) -> float:
    from prometheus_client import REGISTRY

    return sum(
        s.value
        for metric in REGISTRY.collect()
        if metric.name == "eostream_consumer_restarts"
        for s in metric.samples
        if s.name == "eostream_consumer_restarts_total" and s.labels.get("service") == service
    )


@pytest.fixture
def outage() -> Any:
    """The broker-outage helpers: ``outage.gate(bus, topic)``, ``await outage.during(...)``."""

    class Outage:
        gate = GatedBus
        during = staticmethod(broker_outage_during)
        wait_for = staticmethod(wait_for)

    return Outage


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that stops the broker must say so (``pytest.mark.alone``): `make test` runs the
    others on parallel workers first, where a stopped broker would fail a neighbour's test."""
    unmarked = [
        item.nodeid
        for item in items
        if "outage" in getattr(item, "fixturenames", ())
        and item.get_closest_marker("alone") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests stop the broker (the outage fixture) but lack pytest.mark.alone: "
            + ", ".join(unmarked)
        )


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """On `make test`'s parallel workers (pytest-xdist): a test file goes to one worker whole, so
    its module fixtures are set up once; the notebooks/ all go to one worker, in order, as they
    share one home and its MLflow server (notebooks/conftest.py)."""
    from xdist.scheduler import LoadFileScheduling  # type: ignore[import-untyped]

    class FileScheduling(LoadFileScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.startswith("notebooks/"):
                return "notebooks"
            return str(super()._split_scope(nodeid))

    return FileScheduling(config, log)


# Topics a test session creates on the shared local Kafka are deleted when the session ends. Every
# test uses its own random topic prefix, so without this the broker keeps thousands of partitions
# from earlier runs and each (re)start, including the broker-outage tests', spends minutes loading
# them. Topics that existed before the session are never touched. EOSTREAM_TEST_KEEP_TOPICS=1 keeps
# them (e.g. to inspect a failed run, or while another test session shares the broker). Under
# pytest-xdist only the controller does this, before the first worker starts and after the last
# ends: a worker that finished first would delete the topics its neighbours still use.
_topics_before_session: set[str] | None = None


def _xdist_worker(session: pytest.Session) -> bool:
    return hasattr(session.config, "workerinput")


async def _kafka_topics(bootstrap: str) -> set[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def _delete_kafka_topics(bootstrap: str, names: list[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=60_000)
    await admin.start()
    try:
        for start in range(0, len(names), 200):
            await admin.delete_topics(names[start : start + 200], timeout_ms=60_000)
    finally:
        await admin.close()


def pytest_sessionstart(session: pytest.Session) -> None:
    global _topics_before_session
    bootstrap = os.environ.get("EOSTREAM_KAFKA_BOOTSTRAP")
    if not bootstrap or os.environ.get("EOSTREAM_TEST_KEEP_TOPICS") or _xdist_worker(session):
        return
    try:
        _topics_before_session = asyncio.run(_kafka_topics(bootstrap))
    except Exception:  # no broker: the stack tests will say so themselves
        _topics_before_session = None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    bootstrap = os.environ.get("EOSTREAM_KAFKA_BOOTSTRAP")
    if not bootstrap or _topics_before_session is None:
        return
    try:
        created = sorted(
            name
            for name in asyncio.run(_kafka_topics(bootstrap)) - _topics_before_session
            if not name.startswith("__")
        )
        if created:
            asyncio.run(_delete_kafka_topics(bootstrap, created))
    except Exception as error:  # cleanup must never fail a finished run
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"left this session's Kafka topics in place: {error}")


def stac_validator_problems(data: dict[str, Any]) -> list[str]:
    """What stac-validator (the ``stac-valid`` package) says about a STAC object: [] when valid.

    It checks the core STAC schemas offline: the schema URLs map to the copies pystac ships,
    so no test reaches schemas.stacspec.org or geojson.org. Extensions are not checked here (their
    schemas are online); the MLM fields are checked with stac-model where items are built.
    """
    import pystac.validation.jsonschemas as bundled
    from stac_validator.validate import StacValidate  # type: ignore[import-untyped]

    root = Path(bundled.__file__).parent
    version = str(data.get("stac_version", ""))
    spec = root / "stac-spec" / f"v{version}"
    if not spec.is_dir():
        return [f"stac_version {version!r}: no offline core schemas (pystac has {_bundled(root)})"]
    kinds = {"catalog.json": "catalog-spec", "collection.json": "collection-spec"}
    schema_map = {
        f"https://schemas.stacspec.org/v{version}/{kinds.get(f.name, 'item-spec')}/json-schema/"
        f"{f.name}": str(f)
        for f in spec.glob("*.json")
    } | {f"https://geojson.org/schema/{f.name}": str(f) for f in (root / "geojson").glob("*.json")}
    validator = StacValidate(core=True, schema_map=schema_map)
    if validator.validate_dict(data):
        return []
    return [
        f"{m.get('error_type')}: {m.get('error_message')}"
        for m in validator.message
        if not m.get("valid_stac")
    ]


def _bundled(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "stac-spec").iterdir())


@pytest.fixture(scope="session")
def stac_validator() -> Any:
    """``stac_validator(data) -> problems`` ([] when valid); core schemas offline."""
    return stac_validator_problems


def openapi_fuzz(
    url: str, headers: dict[str, str], examples: int, *, negative: bool
) -> tuple[list[str], set[tuple[str, str, int]]]:
    """Every operation of the API at ``url`` with ``headers``, in schemathesis' positive and
    negative modes: the failures (one line each) and the (method, path, status) answered."""
    import schemathesis
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hsettings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import not_a_server_error
    from schemathesis.core.failures import FailureGroup
    from schemathesis.core.result import Ok
    from schemathesis.generation import GenerationMode
    from schemathesis.specs.openapi.checks import status_code_conformance

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    failures: list[str] = []
    seen: set[tuple[str, str, int]] = set()
    operations = []
    for result in schema.get_all_operations():
        if not isinstance(result, Ok):
            pytest.fail(f"the schema has an operation schemathesis cannot read: {result}")
        operations.append(result.ok())
    modes = list(GenerationMode) if negative else [GenerationMode.POSITIVE]
    for operation, mode in itertools.product(operations, modes):
        if mode == GenerationMode.NEGATIVE and not (len(operation.query) or len(operation.body)):
            continue  # path segments only: routed or 404, slow to make invalid

        @given(case=operation.as_strategy(mode))
        @hsettings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: schemathesis.Case[Any]) -> None:
            response = case.call(base_url=url, headers=headers, timeout=60)
            seen.add((case.method, case.operation.path, response.status_code))
            try:
                case.validate_response(
                    response, checks=[not_a_server_error, status_code_conformance]
                )
            except (AssertionError, FailureGroup) as exc:
                failures.append(
                    f"{case.method} {case.formatted_path}: {response.status_code} "
                    f"{response.text[:160]!r} ({type(exc).__name__})"
                )

        try:
            run()
        except Unsatisfiable:  # no negative case for an operation without inputs
            if mode != GenerationMode.NEGATIVE:
                raise
    return failures, seen


@pytest.fixture(scope="session")
def fuzz() -> Any:
    """``fuzz(url, headers, examples, negative=...) -> (failures, seen)``: schemathesis over every
    operation of a running API (never a 5xx, every answered status documented)."""
    return openapi_fuzz
