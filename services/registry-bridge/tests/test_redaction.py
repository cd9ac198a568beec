"""An MLflow URI's user and password never reach a client or a log: ``GET /models/{name}`` is
public, and its 503 names MLflow without them; so do the bridge's logs and the catalogue's link."""

from __future__ import annotations

import asyncio
import logging
import socket

import httpx
import pytest

from eostream.registry_bridge.settings import BridgeSettings
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.redaction import redact_urls, without_userinfo

from .conftest import MODEL_NAME, make_service

PASSWORD = "Sup3rSecret-pw"  # noqa: S105 - a test fixture


def test_urls_lose_their_user_and_password() -> None:
    text = (
        f"MLflow at http://bridge:{PASSWORD}@127.0.0.1:5000 failed: API request to "
        f"http://bridge:{PASSWORD}@127.0.0.1:5000/api/2.0/x failed; "
        f"postgresql://mlflow:p@ss:{PASSWORD}@db:5432/mlflow?sslmode=require"
    )
    shown = redact_urls(text)
    assert PASSWORD not in shown and "p@ss" not in shown
    assert "http://***@127.0.0.1:5000/api/2.0/x" in shown
    assert "postgresql://***@db:5432/mlflow?sslmode=require" in shown
    assert redact_urls("sqlite:///tmp/mlflow.db") == "sqlite:///tmp/mlflow.db"
    assert without_userinfo(f"https://u:{PASSWORD}@mlflow:5000/x") == "https://mlflow:5000/x"
    assert without_userinfo("http://mlflow:5000") == "http://mlflow:5000"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_an_unreachable_mlflow_is_named_without_its_password(
    bridge_settings: BridgeSettings,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's own retries: none
    uri = f"http://bridge:{PASSWORD}@127.0.0.1:{closed_port()}"
    settings = bridge_settings.model_copy(update={"mlflow_tracking_uri": uri})
    caplog.set_level(logging.INFO)
    service = make_service(settings, InMemoryBus(service="registry-bridge"), webhooks=False)
    await service.start()
    try:
        async with httpx.AsyncClient(base_url=service.server.url, timeout=60) as http:
            answer = await http.get(f"/models/{MODEL_NAME}")  # public: no credential
            for _ in range(200):  # the reconcile loop's first pass fails too, and logs why
                if "reconcile failed" in caplog.text:
                    break
                await asyncio.sleep(0.05)
    finally:
        await service.stop()
    assert answer.status_code == 503
    body = answer.json()
    assert body["code"] == "registry_unavailable"
    assert body["description"].startswith("MLflow at http://***@127.0.0.1:")
    assert "did not answer" in body["description"]
    assert "reconcile failed" in caplog.text and "registry-bridge watching" in caplog.text
    assert PASSWORD not in answer.text
    assert PASSWORD not in caplog.text
