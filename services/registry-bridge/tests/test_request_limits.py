"""A request costs the bridge nothing until it is allowed: oversized bodies answer 413 without
being read whole (declared or streamed), a write without a credential answers 401 and a webhook
without its signature headers 401, both before one byte of the body is read; free text is
bounded. Normal requests still work. Over HTTP on 127.0.0.1 (uvicorn), as deployed."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from pydantic import SecretStr

from eostream.registry_bridge.api import REASON_MAX_LENGTH
from eostream.registry_bridge.settings import BridgeSettings
from eostream.registry_bridge.webhook import sign
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.ops import OpsServer
from eostream.shared.testing import BodyRead, StreamedBody

from .conftest import MODEL_NAME, as_, make_service

LIMIT = 64 * 1024
SECRET = "webhook-secret-0001"  # noqa: S105 - a test fixture
WEBHOOK = "/webhooks/mlflow"
PROMOTE = f"/models/{MODEL_NAME}/promote"


def signed(body: bytes) -> dict[str, str]:
    stamp = str(int(time.time()))
    return {
        "X-MLflow-Delivery-Id": "d-1",
        "X-MLflow-Timestamp": stamp,
        "X-MLflow-Signature": sign(SECRET, "d-1", stamp, body.decode()),
        "Content-Type": "application/json",
    }


@asynccontextmanager
async def bridge_http(
    settings: BridgeSettings,
) -> AsyncIterator[tuple[httpx.AsyncClient, BodyRead]]:
    service = make_service(settings, InMemoryBus(service="registry-bridge"))
    body_read = BodyRead(service.app)
    server = OpsServer(body_read, "127.0.0.1", 0)  # type: ignore[arg-type]  # any ASGI app
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            yield client, body_read
    finally:
        await server.stop()


async def test_oversized_and_unauthenticated_bodies_are_refused_unread(
    bridge_settings: BridgeSettings,
) -> None:
    settings = bridge_settings.model_copy(
        update={"max_body_bytes": LIMIT, "webhook_secret": SecretStr(SECRET)}
    )
    async with bridge_http(settings) as (http, body_read):

        async def post(path: str, content: Any, headers: dict[str, str]) -> tuple[int, str, int]:
            body_read.read = 0
            r = await http.post(path, content=content, headers=headers)
            return r.status_code, r.json()["code"], body_read.read

        big = b"x" * (4 * LIMIT)
        # a declared length over the limit: refused before one byte is read
        assert await post(WEBHOOK, big, signed(big)) == (413, "too_large", 0)
        assert await post(PROMOTE, big, as_("alice")) == (413, "too_large", 0)
        # no length declared (chunked): cut off as soon as it passes the limit
        for path, headers in ((WEBHOOK, signed(b"{}")), (PROMOTE, as_("alice"))):
            streamed = StreamedBody(16 * LIMIT)
            status, code, read = await post(path, streamed, headers)
            assert (status, code) == (413, "too_large"), path
            assert LIMIT < read < 2 * LIMIT, f"{path}: read {read} of {streamed.total}"
        # no credential, no signature headers: 401 before the body, whatever its size
        assert await post(PROMOTE, big, {}) == (401, "unauthenticated", 0)
        assert await post(PROMOTE, StreamedBody(2 * LIMIT), {}) == (401, "unauthenticated", 0)
        assert await post(WEBHOOK, StreamedBody(2 * LIMIT), {}) == (401, "bad_signature", 0)
        stale = {**signed(b"{}"), "X-MLflow-Timestamp": str(int(time.time()) - 3600)}
        assert await post(WEBHOOK, StreamedBody(2 * LIMIT), stale) == (401, "bad_signature", 0)

        # free text is bounded
        long_reason = {"version": "1", "reason": "r" * (REASON_MAX_LENGTH + 1)}
        refused = await http.post(PROMOTE, json=long_reason, headers=as_("alice"))
        assert (refused.status_code, refused.json()["code"]) == (422, "invalid_request")

        # normal requests still work: a signed webhook is queued, a promotion reaches the bridge
        created = json.dumps(
            {"entity": "model_version", "action": "created", "data": {"name": "m", "version": "4"}}
        ).encode()
        queued = await http.post(WEBHOOK, content=created, headers=signed(created))
        assert (queued.status_code, queued.json()) == (202, {"status": "queued"})
        unknown = await http.post(
            PROMOTE, json={"version": "9", "reason": "x"}, headers=as_("alice")
        )
        assert (unknown.status_code, unknown.json()["code"]) == (409, "cannot_promote")
        viewer = await http.post(PROMOTE, json={"version": "9", "reason": "x"}, headers=as_("vic"))
        assert (viewer.status_code, viewer.json()["code"]) == (403, "forbidden")
        challenge = await http.post(PROMOTE, json={"version": "9", "reason": "x"})
        assert challenge.headers["www-authenticate"].startswith("Bearer")
