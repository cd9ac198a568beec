"""A session reuses the MLflow server advertised on its home only while that server lives: a
state file left by a killed run, or naming a pid the system gave to another program since, is
ignored (the session then starts its own server)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eostream.runner.mlflow_server import STATE_FILE, advertised, wait_healthy
from eostream.shared.errors import ConfigError


def write_state(home: Path, pid: int) -> None:
    (home / STATE_FILE).write_text(json.dumps({"url": "http://127.0.0.1:9", "pid": pid}))


def test_no_state_file_or_a_broken_one_advertises_nothing(tmp_path: Path) -> None:
    assert advertised(tmp_path) is None
    (tmp_path / STATE_FILE).write_text("{not json")
    assert advertised(tmp_path) is None


def test_a_dead_or_recycled_pid_is_no_server(tmp_path: Path) -> None:
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    write_state(tmp_path, ended.pid)
    assert advertised(tmp_path) is None
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        write_state(tmp_path, other.pid)  # alive, but no MLflow server
        assert advertised(tmp_path) is None
    finally:
        other.kill()
        other.wait()


def test_a_live_mlflow_process_is_advertised(tmp_path: Path) -> None:
    # identity is the command line (`python -m mlflow server ...`); a sleeper carrying the word
    # stands in for the server, whose start-up would cost this test half a minute
    live = subprocess.Popen(
        [sys.executable, "-c", "import time; print(flush=True); time.sleep(30)", "mlflow"],
        stdout=subprocess.PIPE,
    )
    try:
        assert live.stdout is not None
        live.stdout.readline()  # until then the child may still be the forked test process
        write_state(tmp_path, live.pid)
        assert advertised(tmp_path) == ("http://127.0.0.1:9", live.pid)
    finally:
        live.kill()
        live.wait()
    assert advertised(tmp_path) is None


def test_the_wait_for_a_server_ends_when_its_session_is_stopped(tmp_path: Path) -> None:
    """A notebook's start that gave up stops the wait for MLflow (minutes) at once."""
    with pytest.raises(ConfigError, match="stopped while waiting for the MLflow server"):
        wait_healthy(
            "http://127.0.0.1:9", lambda: True, tmp_path / "mlflow.log", 600, cancelled=lambda: True
        )


def test_the_embedded_server_takes_no_request_without_the_homes_account(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It ran without authentication: any local process could register a version, move the
    champion alias and write the tags the bridge read (a review made a gate-failed version live
    with two requests). Now it is MLflow's basic-auth app, with one account per home."""
    import os

    import httpx
    import mlflow

    from eostream.runner.mlflow_server import PASSWORD_FILE, USERNAME, free_port, mlflow_server

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    home = tmp_path / "home"
    with mlflow_server(home, "127.0.0.1", free_port("127.0.0.1", 0)) as url:
        assert httpx.get(f"{url}/health", timeout=30).status_code == 200
        create = f"{url}/api/2.0/mlflow/registered-models/create"
        assert httpx.post(create, json={"name": "forged"}, timeout=30).status_code == 401
        wrong = (USERNAME, "not-the-password")
        assert httpx.post(create, json={"name": "x"}, auth=wrong, timeout=30).status_code == 401
        # this process's MLflow clients are logged in while the server runs
        assert os.environ["MLFLOW_TRACKING_USERNAME"] == USERNAME
        client = mlflow.MlflowClient(tracking_uri=url, registry_uri=url)
        assert client.create_registered_model("ours").name == "ours"
    assert "MLFLOW_TRACKING_PASSWORD" not in os.environ
    assert (home / PASSWORD_FILE).stat().st_mode & 0o777 == 0o600


def test_sessions_of_a_home_ending_in_any_order_keep_the_account_while_one_is_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two sessions of one home in a process (two notebooks' EmbeddedSession), the first ending
    first, left the second with no credentials (each restored what it found)."""
    import contextlib
    import os

    from eostream.runner.mlflow_server import credentials, logged_in

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    home = tmp_path / "home"
    first, second = contextlib.ExitStack(), contextlib.ExitStack()
    first.enter_context(logged_in(home))
    second.enter_context(logged_in(home))
    try:
        first.close()
        assert os.environ["MLFLOW_TRACKING_PASSWORD"] == credentials(home)[1] != ""
    finally:
        second.close()
    assert "MLFLOW_TRACKING_PASSWORD" not in os.environ
    # a password made anew starts a new account store (MLflow keeps an admin's first password)
    (home / "mlflow-auth.db").write_text("an account store of an older password")
    (home / "mlflow-password").unlink()
    assert credentials(home)[1] and not (home / "mlflow-auth.db").exists()
