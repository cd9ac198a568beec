"""Webhook signatures as MLflow 3.17 makes them (its own signing function), and the endpoint."""

from __future__ import annotations

import json
import time

from fastapi import FastAPI
from fastapi.testclient import TestClient
from mlflow.webhooks.delivery import _generate_hmac_signature

from eostream.registry_bridge.webhook import sign, verify_signature, webhook_router
from eostream.shared import http_errors

SECRET = "s3cret"  # noqa: S105 - a test fixture


def headers(body: str, secret: str = SECRET, ts: int | None = None) -> dict[str, str]:
    stamp = str(ts if ts is not None else int(time.time()))
    return {
        "X-MLflow-Delivery-Id": "d-1",
        "X-MLflow-Timestamp": stamp,
        "X-MLflow-Signature": _generate_hmac_signature(secret, "d-1", stamp, body),
        "Content-Type": "application/json",
    }


def test_our_signature_is_mlflows() -> None:
    assert sign(SECRET, "id", "1", "{}") == _generate_hmac_signature(SECRET, "id", "1", "{}")


def test_verification() -> None:
    body = '{"a": 1}'
    h = headers(body)
    ok = verify_signature(
        SECRET,
        body=body.encode(),
        signature=h["X-MLflow-Signature"],
        delivery_id="d-1",
        timestamp=h["X-MLflow-Timestamp"],
        tolerance_seconds=60,
    )
    assert ok is None
    tampered = verify_signature(
        SECRET,
        body=b'{"a": 2}',
        signature=h["X-MLflow-Signature"],
        delivery_id="d-1",
        timestamp=h["X-MLflow-Timestamp"],
        tolerance_seconds=60,
    )
    assert tampered == "the signature does not match"
    old = headers(body, ts=int(time.time()) - 3600)
    assert "too old" in str(
        verify_signature(
            SECRET,
            body=body.encode(),
            signature=old["X-MLflow-Signature"],
            delivery_id="d-1",
            timestamp=old["X-MLflow-Timestamp"],
            tolerance_seconds=60,
        )
    )
    assert "missing" in str(
        verify_signature(
            SECRET, body=b"", signature=None, delivery_id=None, timestamp=None, tolerance_seconds=60
        )
    )


def test_endpoint_queues_created_versions_and_alias_changes_only_when_signed() -> None:
    queued: list[tuple[str, str | None, str]] = []

    async def enqueue(name: str, version: str | None, source: str) -> None:
        queued.append((name, version, source))

    app = FastAPI()
    app.include_router(webhook_router(SECRET, 300, enqueue))
    client = TestClient(app)
    created = json.dumps(
        {
            "entity": "model_version",
            "action": "created",
            "timestamp": "2026-11-21T00:00:00Z",
            "data": {
                "name": "m",
                "version": "4",
                "source": "models:/x",
                "run_id": "r",
                "tags": {},
                "description": None,
            },
        }
    )
    alias = json.dumps(
        {
            "entity": "model_version_alias",
            "action": "created",
            "data": {"name": "m", "alias": "champion", "version": "2"},
        }
    )
    for body in (created, alias):
        response = client.post("/webhooks/mlflow", content=body, headers=headers(body))
        assert response.status_code == 202
    forged = client.post("/webhooks/mlflow", content=created, headers=headers(created, "wrong"))
    assert forged.status_code == 401
    # timestamps int() reads but no clock is: 400 digits overflowed into a 500, unsigned
    for stamp in ("9" * 400, "-" + "9" * 400, "+1", "1_000", "0x10"):
        refused = client.post(
            "/webhooks/mlflow",
            content=created,
            headers={**headers(created), "X-MLflow-Timestamp": stamp},
        )
        assert refused.status_code == 401, stamp
        assert "not a Unix time" in refused.text, stamp
    assert queued == [("m", "4", "webhook"), ("m", None, "webhook")]


def test_a_signed_delivery_that_is_not_a_webhook_payload_is_a_400_and_queues_nothing() -> None:
    """A sender holding the secret may still send nonsense: each gets a 400 naming what is
    wrong, never a 500 (a missing version and a deeply nested body were 500s)."""
    queued: list[tuple[str, str | None, str]] = []

    async def enqueue(name: str, version: str | None, source: str) -> None:
        queued.append((name, version, source))

    app = FastAPI()
    http_errors.install(app)
    app.include_router(webhook_router(SECRET, 300, enqueue))
    client = TestClient(app, raise_server_exceptions=False)
    created = {"entity": "model_version", "action": "created"}
    bodies = {
        "no version": json.dumps({**created, "data": {"name": "m"}}),
        "a version not a number": json.dumps({**created, "data": {"name": "m", "version": "4/x"}}),
        "data not an object": json.dumps({**created, "data": ["m", "4"]}),
        "a list": json.dumps([created]),
        "no name": json.dumps({**created, "data": {"version": "4"}}),
        "nested too deeply": "[" * 100_000 + "]" * 100_000,
        "not JSON": "entity=model_version",
    }
    for case, body in bodies.items():
        response = client.post("/webhooks/mlflow", content=body, headers=headers(body))
        assert response.status_code == 400, (case, response.text)
        assert response.json()["code"] == "bad_payload", case
    # a number as MLflow's REST gives it is still a version
    body = json.dumps({**created, "data": {"name": "m", "version": 7}})
    assert client.post("/webhooks/mlflow", content=body, headers=headers(body)).status_code == 202
    assert queued == [("m", "7", "webhook")]
