"""The REST API's contract: every route documents its response body and its error statuses with
the one error body, and errors answer ``{"code", "description"}`` at the top level."""

from __future__ import annotations

from typing import Any

import httpx

from eostream.registry_bridge.settings import BridgeSettings
from eostream.shared.bus.memory import InMemoryBus

from .conftest import MODEL_NAME, as_, make_service


def _ref(content: dict[str, Any]) -> str:
    schema = content["application/json"]["schema"]
    return str(schema.get("$ref") or schema.get("items", {}).get("$ref", ""))


async def test_openapi_documents_every_response_and_every_error_body(
    bridge_settings: BridgeSettings,
) -> None:
    service = make_service(bridge_settings, InMemoryBus(service="registry-bridge"))
    spec = service.app.openapi()
    expected = {
        ("get", "/models/{name}"): ("VersionRow", {"503"}),
        ("post", "/models/{name}/promote"): ("ModelPromoted", {"401", "403", "409", "503"}),
        ("post", "/models/{name}/rollback"): ("ModelPromoted", {"401", "403", "409", "503"}),
        ("get", "/models/{name}/audit"): ("AuditEntry", {"401", "503"}),
        ("post", "/webhooks/mlflow"): ("WebhookAck", {"400", "401", "503"}),
    }
    for (method, path), (model, errors) in expected.items():
        responses = spec["paths"][path][method]["responses"]
        ok = responses.get("200") or responses["202"]
        assert _ref(ok["content"]).endswith(f"/{model}"), (path, ok)
        for status in errors:
            assert _ref(responses[status]["content"]).endswith("/ErrorBody"), (path, status)


async def test_errors_answer_code_and_description_at_the_top_level(
    bridge_settings: BridgeSettings,
) -> None:
    service = make_service(bridge_settings, InMemoryBus(service="registry-bridge"))
    transport = httpx.ASGITransport(app=service.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as http:
        answers = [
            await http.post(
                f"/models/{MODEL_NAME}/promote",
                json={"version": "9", "reason": "x"},
                headers=as_("alice"),
            ),
            await http.post(f"/models/{MODEL_NAME}/rollback", json={}, headers=as_("alice")),
            await http.post("/webhooks/mlflow", content=b"{}"),  # no webhook secret set
        ]
    assert [(r.status_code, r.json()["code"]) for r in answers] == [
        (409, "cannot_promote"),
        (422, "invalid_request"),
        (503, "webhooks_disabled"),
    ]
    for r in answers:
        assert set(r.json()) == {"code", "description"} and r.json()["description"]
