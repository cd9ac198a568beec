"""The embedded mode's MLflow server (and UI) on its sqlite database, a child process."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from eostream.runner.processes import DIE_WITH_PARENT
from eostream.shared.errors import ConfigError


def free_port(host: str, preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind((host, preferred))
        except OSError:
            s.bind((host, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def mlflow_server(home: Path, host: str, port: int, *, timeout: float = 120) -> Iterator[str]:
    """An MLflow tracking server (and UI) on the embedded sqlite database; ConfigError when it
    does not answer within ``timeout`` seconds."""
    (home / "mlartifacts").mkdir(parents=True, exist_ok=True)
    log_path = home / "mlflow.log"
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
        "--artifacts-destination", str(home / "mlartifacts"),
        "--serve-artifacts", "--host", host, "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter, fixed arguments
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            # a SIGKILLed demo must not leave its MLflow server running
            preexec_fn=DIE_WITH_PARENT,  # prctl only; resolved before the fork
        )
    url = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise ConfigError(f"the MLflow server did not start; see {log_path}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"the MLflow server did not answer within {timeout:.0f} s; see {log_path}"
                )
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
