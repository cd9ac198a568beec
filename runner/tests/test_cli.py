"""The `eostream` command: a configuration error anywhere is one line and exit status 2; `up
--stack local` stops when asked, and says in one line which service did not start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def test_the_cli_turns_a_config_error_into_one_line() -> None:
    code = (
        "from eostream.runner.cli import app, run\n"
        "from eostream.shared.errors import ConfigError\n"
        "@app.command()\n"
        "def boom() -> None:\n"
        "    raise ConfigError('configuration error: DEMO_X is not set; it is required')\n"
        "import sys; sys.argv = ['eostream', 'boom']\n"
        "run(app)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "eostream: configuration error: DEMO_X is not set; it is required"
    ]


def test_the_cli_turns_any_of_eostreams_own_errors_into_one_line() -> None:
    """A command that lets a domain error through (``inference classify`` with a model that
    does not load printed 68 to 1,013 lines of traceback): one line, credentials masked."""
    code = (
        "from eostream.runner.cli import app, run\n"
        "from eostream.shared.errors import RetryableError\n"
        "@app.command()\n"
        "def boom() -> None:\n"
        "    raise RetryableError('MLflow at http://alice:s3cret@127.0.0.1:1 did not answer')\n"
        "import sys; sys.argv = ['eostream', 'boom']\n"
        "run(app)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 1  # not a usage error (2)
    assert done.stderr.strip().splitlines() == [
        "eostream: MLflow at http://***@127.0.0.1:1 did not answer"
    ]


# -- `eostream up --stack local` while its services start -------------------------------------
# The command runs as a child process, as a person runs it, with one fake service (a small
# python child) in place of the real ones and made-up stack addresses (nothing connects to them).

UP_LOCAL = """
import sys
from eostream.runner import processes
from eostream.runner.cli import app, run
from eostream.shared.deployment import ProcessSpec
CHILD = {child!r}
def factory(stack, deployment, port):
    return ProcessSpec("fake", (sys.executable, "-c", CHILD), {{}}, port)
processes.discover_process_factories = lambda: {{"fake": factory}}
sys.argv = ["eostream", "up", "--stack", "local", "--home", {home!r}, *{extra!r}]
run(app)
"""

FAKE_STACK = {
    "EOSTREAM_KAFKA_BOOTSTRAP": "127.0.0.1:19092",
    "EOSTREAM_S3_ENDPOINT": "127.0.0.1:19000",
    "EOSTREAM_S3_ACCESS_KEY": "key",
    "EOSTREAM_S3_SECRET_KEY": "secret",
    "EOSTREAM_PG_DSN": "postgresql://u:p@127.0.0.1:15432",
    "EOSTREAM_MLFLOW_URI": "http://127.0.0.1:15000",
    "EOSTREAM_STAC_API_URL": "http://127.0.0.1:18082",
}

HANG_GUARD = 60  # seconds; only so that a regression fails instead of hanging the suite


def _env(stack: dict[str, str]) -> dict[str, str]:
    """This environment without the real stack's addresses (no Prometheus targets written)."""
    mine = {k: v for k, v in os.environ.items() if not k.startswith("EOSTREAM_")}
    return {**mine, **stack}


def _up_local(
    tmp_path: Path, child: str, *extra: str, new_session: bool = False
) -> subprocess.Popen[str]:
    code = UP_LOCAL.format(child=child, home=str(tmp_path / "home"), extra=list(extra))
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=_env(FAKE_STACK),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=new_session,
    )


def _finish(command: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        _, stderr = command.communicate(timeout=HANG_GUARD)
    except subprocess.TimeoutExpired:
        command.kill()
        command.communicate()
        pytest.fail("`eostream up --stack local` went on after it was asked to stop")
    return command.returncode, stderr


def _fake_log(tmp_path: Path) -> Path:
    return (tmp_path / "home").resolve() / "local" / "logs" / "fake.log"


@pytest.mark.parametrize(
    ("sig", "whole_group"),
    [(signal.SIGINT, True), (signal.SIGTERM, False)],
    ids=["ctrl-c", "sigterm"],
)
def test_up_local_stops_when_asked_while_a_service_starts(
    tmp_path: Path, sig: signal.Signals, whole_group: bool
) -> None:
    """Ctrl-C (the terminal signals the command and its children) or SIGTERM (the command only)
    while a service is not ready yet: the command stops it and ends, with no traceback."""
    pid_file = tmp_path / "child.pid"
    never_ready = (
        "import os, time; from pathlib import Path\n"
        f"Path({str(pid_file)!r} + '.tmp').write_text(str(os.getpid()))\n"
        f"Path({str(pid_file)!r} + '.tmp').replace({str(pid_file)!r})\n"
        "time.sleep(600)\n"
    )
    command = _up_local(tmp_path, never_ready, new_session=whole_group)
    try:
        deadline = time.monotonic() + HANG_GUARD
        while not pid_file.exists() and command.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pid_file.exists(), command.communicate()
        child = int(pid_file.read_text())
        if whole_group:
            os.killpg(command.pid, sig)
        else:
            command.send_signal(sig)
        status, stderr = _finish(command)
    finally:
        if command.poll() is None:
            command.kill()
    assert status == 0, stderr
    assert "Traceback" not in stderr
    with pytest.raises(ProcessLookupError):  # stopped (and reaped) by the command
        os.kill(child, 0)


def test_up_local_says_in_one_line_which_service_exited_before_it_was_ready(
    tmp_path: Path,
) -> None:
    status, stderr = _finish(
        _up_local(tmp_path, "import sys; print('FAKE_X is not set'); sys.exit(3)")
    )
    assert status == 2
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        "eostream: fake exited with status 3 before it was ready; "
        f"see its log {_fake_log(tmp_path)}"
    )
    assert "FAKE_X is not set" in _fake_log(tmp_path).read_text()


def test_up_local_says_in_one_line_which_service_was_not_ready_in_time(tmp_path: Path) -> None:
    never_ready = "import time; time.sleep(600)"
    status, stderr = _finish(_up_local(tmp_path, never_ready, "--ready-timeout", "1"))
    assert status == 2
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        f"eostream: fake /livez not answering within 1 s; see its log {_fake_log(tmp_path)}"
    )


def test_up_local_says_in_one_line_that_the_stack_did_not_start(tmp_path: Path) -> None:
    """In a checkout without the stack's addresses set, the command runs `deploy/local/stack up`;
    when that fails, one line says so (the script's own output is above it)."""
    script = tmp_path / "deploy" / "local" / "stack"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\necho 'docker: not running' >&2\nexit 4\n")
    script.chmod(0o755)
    code = "from eostream.runner.cli import app, run\nimport sys\n"
    code += f"sys.argv = ['eostream', 'up', '--stack', 'local', '--home', {str(tmp_path)!r}]\n"
    code += "run(app)\n"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=_env({}),
        capture_output=True,
        text=True,
        check=False,
        timeout=HANG_GUARD,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1] == (
        "eostream: `deploy/local/stack up` failed with status 4 (its output is above); "
        "fix that, then try again"
    )
    assert "docker: not running" in lines[:-1]
