"""The CLI: registered under eostream.commands, `serve` runs the API until SIGTERM, and a missing
API key is one clear configuration error."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

import httpx
import pytest

from eostream.inference.cli import app
from eostream.shared.errors import ConfigError


def test_registered_as_an_eostream_command() -> None:
    names = {ep.name: ep.value for ep in entry_points(group="eostream.commands")}
    assert names.get("inference") == "eostream.inference.cli:app"


def test_missing_api_key_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    monkeypatch.delenv("INFERENCE_API_KEY", raising=False)
    monkeypatch.setenv("INFERENCE_BUS", "memory")
    result = CliRunner().invoke(app, ["serve"])
    assert isinstance(result.exception, ConfigError)
    assert "INFERENCE_API_KEY is not set" in str(result.exception)


def test_serve_answers_and_stops_on_sigterm(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(
        os.environ,
        INFERENCE_API_KEY="k",
        INFERENCE_BUS="memory",
        INFERENCE_HTTP_PORT=str(port),
        INFERENCE_LOCAL_STORE_ROOT=str(tmp_path / "o"),
        INFERENCE_RESULTS_DB=f"sqlite:///{tmp_path}/r.db",
        INFERENCE_INTRA_OP_THREADS="1",
    )
    code = "from eostream.inference.cli import app; app(['serve'])"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                live = httpx.get(f"http://127.0.0.1:{port}/livez", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline, "serve did not answer within 60 s"
                time.sleep(0.2)
        assert live.json()["service"] == "inference"
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert ready.status_code == 503 and "no model" in ready.json()["detail"]
        assert httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=5).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode()[-2000:]
