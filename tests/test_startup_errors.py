"""A malformed environment stops a service at start with one clear line, not a stack trace:
started as its container image starts it (``python -m eostream.<package>``) and through the
runner's ``eostream`` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SERVICES = [
    ("INGEST", ["ingest", "run"]),
    ("TRAINER", ["trainer", "run"]),
    ("BRIDGE", ["bridge", "run"]),
    ("INFERENCE", ["inference", "serve"]),
]
#: The package each service starts from on its own (its ``__main__``), by env prefix.
PACKAGES = {
    "INGEST": "eostream.ingest",
    "TRAINER": "eostream.trainer",
    "BRIDGE": "eostream.registry_bridge",
    "INFERENCE": "eostream.inference",
}
#: Settings a service requires besides the ones under test (secrets with no default).
REQUIRED = {"INFERENCE": {"INFERENCE_API_KEY": "a-key-for-the-test"}}
EOSTREAM = [sys.executable, "-c", "from eostream.runner.cli import main; main()"]


def clean_env(tmp_path: Path) -> dict[str, str]:
    prefixes = tuple(f"{prefix}_" for prefix, _ in SERVICES)
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env["HOME"] = str(tmp_path)  # nothing picked up from a developer's dotfiles
    for values in REQUIRED.values():
        env.update(values)
    return env


def start(
    command: list[str], env: dict[str, str], cwd: Path, *, alone: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``eostream COMMAND...``, or with ``alone`` (a package) ``python -m PACKAGE COMMAND[1:]``."""
    args = [*EOSTREAM, *command] if alone is None else [sys.executable, "-m", alone, *command[1:]]
    return subprocess.run(
        args,
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


@pytest.mark.parametrize(("prefix", "command"), SERVICES, ids=[c[0] for _, c in SERVICES])
def test_missing_bootstrap_servers_is_one_line_naming_the_variable(
    prefix: str, command: list[str], tmp_path: Path
) -> None:
    env = clean_env(tmp_path)
    env[f"{prefix}_BUS"] = "kafka"
    for alone in (None, PACKAGES[prefix]):
        done = start(command, env, tmp_path, alone=alone)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert f"{prefix}_KAFKA__BOOTSTRAP_SERVERS" in lines[0]
        assert "Traceback" not in done.stderr


@pytest.mark.stack
@pytest.mark.parametrize(("prefix", "command"), SERVICES, ids=[c[0] for _, c in SERVICES])
def test_bad_s3_credentials_are_one_line_naming_the_problem(
    prefix: str, command: list[str], tmp_path: Path, s3_endpoint: str, kafka_bootstrap: str
) -> None:
    env = clean_env(tmp_path)
    env.update(
        {
            f"{prefix}_BUS": "kafka",
            f"{prefix}_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
            f"{prefix}_STORE": "s3",
            f"{prefix}_S3__ENDPOINT": s3_endpoint,
            f"{prefix}_S3__ACCESS_KEY": "not-a-user",
            f"{prefix}_S3__SECRET_KEY": "not-the-secret",
        }
    )
    done = start(command, env, tmp_path, alone=PACKAGES[prefix])  # as its image starts it
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "rejected the credentials" in lines[0]
    assert "Traceback" not in done.stderr


def test_a_published_default_secret_stops_a_service_in_one_line(tmp_path: Path) -> None:
    """Listening on the network (as in a container) with the API key docker-compose.yml once
    published as a default: inference refuses to start (issue #20)."""
    env = clean_env(tmp_path)
    env.update(
        {
            "INFERENCE_BUS": "memory",
            "INFERENCE_HTTP_HOST": "0.0.0.0",  # noqa: S104
            "INFERENCE_API_KEY": "eostream-local-api-key",
        }
    )
    done = start(["inference", "serve"], env, tmp_path, alone="eostream.inference")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "INFERENCE_API_KEY holds a published default secret" in lines[0]
    assert "eostream-local-api-key" not in lines[0] and "Traceback" not in done.stderr
