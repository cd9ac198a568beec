"""The process supervisor behind `eostream up --stack local`, on real child processes (small HTTP
servers answering /livez and /readyz); the services' own factories are checked for what they
hand their processes."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from eostream.runner.processes import (
    ProcessGroup,
    StartInterrupted,
    discover_process_factories,
    parse_exports,
)
from eostream.shared.deployment import STACK_VARIABLES, Deployment, LocalStack, ProcessSpec
from eostream.shared.errors import ConfigError

SERVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path in ("/livez", "/readyz") else 404)
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""

STACK = LocalStack(
    kafka_bootstrap="127.0.0.1:19092",
    s3_endpoint="127.0.0.1:19000",
    s3_access_key="key",
    s3_secret_key="secret",  # noqa: S106 - not a credential: nothing connects
    pg_dsn="postgresql://u:p@127.0.0.1:15432",
    mlflow_uri="http://127.0.0.1:15000",
    stac_api_url="http://127.0.0.1:18082",
)
#: how long ProcessGroup.supervise waits before a process's first restart
FIRST_RESTART_BACKOFF_SECONDS = 1.0


def tiny(name: str, job: str = ""):  # type: ignore[no-untyped-def]
    def factory(stack: LocalStack, deployment: Deployment, port: int) -> ProcessSpec:
        args = (sys.executable, "-c", SERVER, str(port))
        return ProcessSpec(name, args, {"TINY": name}, port, job=job)

    return factory


@pytest.fixture
def group(tmp_path: Path) -> ProcessGroup:
    stack = LocalStack(**{**STACK.__dict__, "prometheus_targets_dir": tmp_path / "targets"})
    return ProcessGroup(
        stack,
        Deployment(name="unit", home=tmp_path / "home"),
        factories={"one": tiny("one"), "two": tiny("two", job="eostream-2")},
    )


def test_start_registers_targets_and_stop_removes_them(group: ProcessGroup) -> None:
    with group.running(ready_timeout=30):
        assert all(p.alive for p in group.processes.values())
        assert httpx.get(f"{group['one'].ops_url}/livez", timeout=5).status_code == 200
        assert group.targets_file is not None
        targets = json.loads(group.targets_file.read_text())
        jobs = {t["labels"]["job"]: t["targets"] for t in targets}
        assert jobs == {
            "eostream-one": [f"127.0.0.1:{group['one'].spec.port}"],
            "eostream-2": [f"127.0.0.1:{group['two'].spec.port}"],
        }
        # a `service` target label would rename the metrics' own service label
        assert all("service" not in t["labels"] for t in targets)
    assert not any(p.alive for p in group.processes.values())
    assert not group.targets_file.exists()


def test_the_supervisor_restarts_a_killed_process_but_not_a_stopped_one(
    group: ProcessGroup,
) -> None:
    stopping = threading.Event()
    polls: list[float] = []  # when each of the supervisor's rounds began (it asks stop() first)

    def stop() -> bool:
        polls.append(time.monotonic())
        return stopping.is_set()

    def wait_for_polls(count: int, since: float) -> list[float]:
        deadline = time.monotonic() + 60
        while len(after := [p for p in polls if p >= since]) < count:
            assert time.monotonic() < deadline, f"the supervisor polled {len(after)} times"
            time.sleep(0.05)
        return after

    with group.running(ready_timeout=30):
        supervisor = threading.Thread(target=group.supervise, args=(stop,), kwargs={"poll": 0.1})
        supervisor.start()
        try:
            group["one"].kill()
            deadline = time.monotonic() + 30
            while group["one"].starts < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert group["one"].starts == 2
            group["one"].wait_ready(30)
            group["two"].stop()
            # a supervisor that took the stopped process for a dead one would see it in the
            # first round after the stop, and restart it in the first round that began a
            # backoff later; wait until that round is over (the next one has begun), so the
            # check rests on rounds the supervisor ran, not on a sleep
            second = wait_for_polls(2, since=time.monotonic())[1]
            wait_for_polls(2, since=second + FIRST_RESTART_BACKOFF_SECONDS)
            assert not group["two"].alive and group["two"].starts == 1
        finally:
            stopping.set()
            supervisor.join(10)
    assert "=== start 2" in group["one"].log_path.read_text()


def test_env_overrides_reach_the_process(tmp_path: Path) -> None:
    group = ProcessGroup(
        STACK,
        Deployment(home=tmp_path),
        env={"one": {"EXTRA": "1"}},
        factories={"one": tiny("one")},
    )
    assert group["one"].spec.env == {"TINY": "one", "EXTRA": "1"}
    with pytest.raises(ConfigError, match="unknown service"):
        ProcessGroup(STACK, Deployment(home=tmp_path), only=("nope",), factories={})


def test_a_process_that_dies_at_start_says_why(tmp_path: Path) -> None:
    def broken(stack: LocalStack, deployment: Deployment, port: int) -> ProcessSpec:
        args = (sys.executable, "-c", "import sys; print('no config'); sys.exit(2)")
        return ProcessSpec("broken", args, {}, port)

    group = ProcessGroup(STACK, Deployment(home=tmp_path), factories={"broken": broken})
    with pytest.raises(RuntimeError, match=r"(?s)exited with status 2.*no config"):
        group.start(ready_timeout=30)


def test_a_stop_asked_during_the_readiness_wait_stops_what_started(tmp_path: Path) -> None:
    """`eostream up --stack local` passes its Ctrl-C flag: the wait (minutes for a real service)
    ends at once, and the processes already started are stopped."""

    def never_ready(stack: LocalStack, deployment: Deployment, port: int) -> ProcessSpec:
        return ProcessSpec("slow", (sys.executable, "-c", "import time; time.sleep(600)"), {}, port)

    group = ProcessGroup(STACK, Deployment(home=tmp_path), factories={"slow": never_ready})
    with pytest.raises(StartInterrupted):
        group.start(ready_timeout=600, stop=lambda: group["slow"].alive)  # asked once it runs
    assert group["slow"].starts == 1
    assert not group["slow"].alive


def test_the_stack_addresses_come_from_stack_env() -> None:
    printed = "export EOSTREAM_KAFKA_BOOTSTRAP=127.0.0.1:19092\nexport A='b c'\nnot an export\n"
    assert parse_exports(printed) == {"EOSTREAM_KAFKA_BOOTSTRAP": "127.0.0.1:19092", "A": "b c"}
    with pytest.raises(ConfigError, match=r"EOSTREAM_S3_ENDPOINT.*deploy/local/stack up"):
        LocalStack.from_environ({"EOSTREAM_KAFKA_BOOTSTRAP": "127.0.0.1:19092"})


def test_every_service_offers_a_process_in_its_own_namespace(tmp_path: Path) -> None:
    factories = discover_process_factories()
    assert list(factories) == ["registry-bridge", "inference", "trainer", "ingest"]
    deployment = Deployment(
        name="ns", home=tmp_path, data_dir=tmp_path, topic_prefix="ns.", model_name="m"
    )
    prefixes = {
        "registry-bridge": "BRIDGE_",
        "inference": "INFERENCE_",
        "trainer": "TRAINER_",
        "ingest": "INGEST_",
    }
    for name, factory in factories.items():
        spec = factory(STACK, deployment, 12345)
        p = prefixes[name]
        assert spec.env[f"{p}KAFKA__TOPIC_PREFIX"] == "ns."
        assert spec.env[f"{p}HTTP_PORT"] == "12345"
        assert spec.env[f"{p}STORE"] == "s3" and spec.env[f"{p}BUS"] == "kafka"
        assert spec.env["EOSTREAM_DATA_DIR"] == str(tmp_path)
    bridge = factories["registry-bridge"](STACK, deployment, 1)
    assert bridge.job == "eostream-bridge"  # what dashboards and alert rules select
    assert json.loads(bridge.env["BRIDGE_MODEL_NAMES"]) == ["m"]
    inference = factories["inference"](STACK, deployment, 1)
    assert inference.env["INFERENCE_MODEL_NAME"] == "m"
    assert len(inference.env["INFERENCE_API_KEY"]) >= 24
    # secrets are made once per deployment and kept
    assert (
        factories["inference"](STACK, deployment, 2).env["INFERENCE_API_KEY"]
        == (inference.env["INFERENCE_API_KEY"])
    )


def test_children_do_not_outlive_a_killed_supervisor(tmp_path: Path) -> None:
    """SIGKILL the supervising process: its service processes get SIGTERM and go (no orphans)."""
    import os
    import signal
    import subprocess

    pid_file = tmp_path / "child.pid"
    script = f"""
import sys, time
from pathlib import Path
from eostream.runner.processes import ProcessGroup
from eostream.shared.deployment import STACK_VARIABLES, Deployment, LocalStack, ProcessSpec
SERVER = {SERVER!r}
def factory(stack, deployment, port):
    return ProcessSpec("one", (sys.executable, "-c", SERVER, str(port)), {{}}, port)
stack = LocalStack("k", "s", "a", "b", "p", "m", "st")
group = ProcessGroup(stack, Deployment(home=Path({str(tmp_path)!r})), factories={{"one": factory}})
group.start(ready_timeout=30)
Path({str(pid_file)!r} + ".tmp").write_text(str(group["one"].pid))
Path({str(pid_file)!r} + ".tmp").replace({str(pid_file)!r})  # the test never reads it empty
time.sleep(600)
"""
    supervisor = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    child = int(pid_file.read_text())
    os.kill(child, 0)  # alive
    supervisor.send_signal(signal.SIGKILL)
    supervisor.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the service process outlived its killed supervisor")


def test_one_service_runs_by_hand_with_the_settings_up_prints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service README's `eostream trainer run` failed on a fresh checkout (TRAINER_KAFKA__...
    not set), and `stack env`'s names are not the services': `up --stack local --env SERVICE`
    prints the settings `up --stack local` runs it with, which its own settings then load."""
    from typer.testing import CliRunner

    from eostream.runner.cli import app
    from eostream.trainer.settings import TrainerSettings

    for field, var in STACK_VARIABLES.items():
        monkeypatch.setenv(var, str(getattr(STACK, field)))
    args = ["up", "--stack", "local", "--env", "trainer", "--home", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    exported = parse_exports(result.output)
    assert len(exported) == len(result.output.strip().splitlines())  # nothing but exports
    for name in list(os.environ):
        if name.startswith("TRAINER_"):
            monkeypatch.delenv(name)
    for name, value in exported.items():
        monkeypatch.setenv(name, value)
    settings = TrainerSettings()
    assert settings.bus == "kafka" and settings.kafka is not None
    assert settings.kafka.bootstrap_servers == STACK.kafka_bootstrap
    assert settings.mlflow_tracking_uri == STACK.mlflow_uri
    wrong = CliRunner().invoke(app, ["up", "--stack", "local", "--env", "nope"])
    assert isinstance(wrong.exception, ConfigError)  # the command prints it as one line
    assert "unknown service 'nope'" in str(wrong.exception)
