"""Starting the bridge never blocks its event loop on MLflow: while the webhook registration
waits for an MLflow that accepts connections and never answers, /livez answers."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from types import TracebackType

import httpx
import pytest
from pydantic import SecretStr

from eostream.registry_bridge.settings import BridgeSettings
from eostream.shared.bus.memory import InMemoryBus

from .conftest import make_service


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts connections and never answers, until closed."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.connected = threading.Event()
        self._accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self._listener.accept()
                self._accepted.append(conn)
                self.connected.set()

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop listening and drop every connection: MLflow is gone."""
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for conn in self._accepted:
            conn.close()
        self._thread.join(10)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


async def test_livez_answers_while_the_webhook_registration_waits_for_mlflow(
    bridge_settings: BridgeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # bounded, should the registration block the loop (it must not): one try, 20 s timeout
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    with SilentServer() as mlflow_server:
        settings = bridge_settings.model_copy(
            update={
                "mlflow_tracking_uri": mlflow_server.url,
                "webhook_url": "http://127.0.0.1:9/webhooks/mlflow",
                "webhook_secret": SecretStr("webhook-secret-0001"),
                "retry_attempts": 1,
            }
        )
        service = make_service(settings, InMemoryBus(service="registry-bridge"))
        starting = asyncio.create_task(service.start())
        try:
            assert await asyncio.to_thread(mlflow_server.connected.wait, 60)
            async with httpx.AsyncClient(base_url=service.server.url, timeout=10) as http:
                live = await http.get("/livez")
            assert live.status_code == 200
            assert not starting.done(), "start() returned only after MLflow answered"
        finally:
            mlflow_server.close()  # the registration fails at once; the start goes on
            await starting
            await service.stop()
