"""Governance: credentials on every write, the promoter's name from the credential, the alias
guard (a gate-failed version moved to champion in MLflow is undone, not shipped), the audit log.

sqlite MLflow, local object store, in-process bus; the REST API through its ASGI app.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import mlflow
import pytest

from eostream.registry_bridge.audit import moves
from eostream.registry_bridge.auth import authenticate, presented_key
from eostream.registry_bridge.errors import NotAuthenticatedError, PromotionError
from eostream.registry_bridge.policy import champion_refusal
from eostream.registry_bridge.service import BridgeService
from eostream.registry_bridge.settings import BridgeSettings, Credential
from eostream.shared import tags, topics
from eostream.shared.bus import Bus
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.codec import decode
from eostream.shared.errors import ConfigError
from eostream.shared.events import ModelPromoted
from eostream.shared.settings import load_settings
from eostream.shared.storage import build_object_store

from .conftest import (
    CREDENTIALS,
    MODEL_NAME,
    as_,
    make_service,
)

WEBHOOK = "/webhooks/mlflow"  # HMAC-signed by MLflow instead (see test_webhook.py)


def promoted(bus: Bus) -> list[ModelPromoted]:
    assert isinstance(bus, InMemoryBus)
    events = [decode(m) for m in bus._logs[topics.MODELS_PROMOTED]]
    return [e for e in events if isinstance(e, ModelPromoted)]


def champion() -> str | None:
    try:
        return str(mlflow.MlflowClient().get_model_version_by_alias(MODEL_NAME, "champion").version)
    except mlflow.exceptions.MlflowException:
        return None


def version_tags(version: str) -> dict[str, str]:
    return dict(mlflow.MlflowClient().get_model_version(MODEL_NAME, version).tags)


@pytest.fixture
async def service(bridge_settings: BridgeSettings) -> AsyncIterator[BridgeService]:
    service = make_service(bridge_settings, InMemoryBus(service="registry-bridge"))
    await service.bus.start()
    yield service
    await service.bus.close()


def client(service: BridgeService) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=service.app), base_url="http://bridge"
    )


def write_routes(service: BridgeService) -> list[tuple[str, str]]:
    """Every (method, path) of the app that is not a read, the webhook receiver excepted."""
    found = [
        (method.upper(), path)
        for path, operations in service.app.openapi()["paths"].items()
        if path != WEBHOOK
        for method in operations
        if method.upper() not in ("GET", "HEAD", "OPTIONS")
    ]
    assert {("POST", "/models/{name}/promote"), ("POST", "/models/{name}/rollback")} <= set(found)
    return found


# ---- pure pieces ---------------------------------------------------------------------------


def test_the_alias_guard_lets_only_passed_or_overridden_versions_be_champion() -> None:
    assert champion_refusal("passed", overridden=False) is None
    assert champion_refusal("failed", overridden=True) is None
    assert "failed the promotion gate" in (champion_refusal("failed", overridden=False) or "")
    assert "refused" in (champion_refusal("refused", overridden=True) or "")
    assert "no gate verdict" in (champion_refusal(None, overridden=False) or "")


def test_a_key_names_its_principal_and_role() -> None:
    keys = {
        name: Credential.model_validate({"key": k, "role": r})
        for name, (k, r) in CREDENTIALS.items()
    }
    assert presented_key(None, "Bearer  abc ") == "abc"
    assert presented_key("xyz", "Bearer abc") == "xyz"
    assert presented_key(None, "Basic abc") is None
    alice = authenticate(keys, CREDENTIALS["alice"][0])
    assert (alice.name, alice.may_promote) == ("alice", True)
    assert not authenticate(keys, CREDENTIALS["vic"][0]).may_promote
    for given in (None, "", "alice", CREDENTIALS["alice"][0] + "x"):
        with pytest.raises(NotAuthenticatedError):
            authenticate(keys, given)
    with pytest.raises(NotAuthenticatedError, match="BRIDGE_API_KEYS"):
        authenticate({}, CREDENTIALS["alice"][0])


def test_credentials_are_checked_at_start_without_echoing_keys(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
) -> None:
    monkeypatch.setenv("BRIDGE_BUS", "memory")
    monkeypatch.setenv("BRIDGE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv(
        "BRIDGE_API_KEYS", json.dumps({"ci": {"key": "short-secret", "role": "promoter"}})
    )
    with pytest.raises(ConfigError, match="at least 16 characters") as err:
        load_settings(BridgeSettings)
    assert "short-secret" not in str(err.value)
    monkeypatch.setenv("BRIDGE_API_KEYS", "")  # compose's unset ${BRIDGE_API_KEYS:-}
    assert load_settings(BridgeSettings).api_keys == {}


def test_the_bridge_listens_on_loopback_unless_a_deployment_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
) -> None:
    monkeypatch.delenv("BRIDGE_HTTP_HOST", raising=False)
    assert BridgeSettings(bus="memory", data_dir=tmp_path).http_host == "127.0.0.1"


# ---- REST ----------------------------------------------------------------------------------


async def test_every_write_answers_401_without_a_credential_and_403_for_a_viewer(
    service: BridgeService,
) -> None:
    routes = write_routes(service)
    async with client(service) as http:
        for method, path in routes:
            url = path.replace("{name}", MODEL_NAME)
            body = {"version": "1", "reason": "try"}
            for headers in (
                {},
                {"X-API-Key": "not-a-key-of-this-bridge"},
                {"Authorization": "Bearer not-a-key-of-this-bridge"},
            ):
                r = await http.request(method, url, json=body, headers=headers)
                assert r.status_code == 401, (method, path, headers, r.text)
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
                assert r.json()["code"] == "unauthenticated"
                assert "X-API-Key" in r.json()["description"] or "not valid" in r.text
            r = await http.request(method, url, json={**body, "force": True}, headers=as_("vic"))
            assert r.status_code == 403, (method, path, r.text)
            assert r.json()["code"] == "forbidden"
            assert "promoter" in r.json()["description"]
        # a promoter gets past the door (and is told what is wrong with the request itself)
        r = await http.post(
            f"/models/{MODEL_NAME}/promote",
            json={"version": "9", "reason": "x"},
            headers={"Authorization": f"Bearer {CREDENTIALS['alice'][0]}"},
        )
        assert r.status_code == 409 and "no version 9" in r.text
        # the audit log is an authenticated read; the version list stays public
        assert (await http.get(f"/models/{MODEL_NAME}/audit")).status_code == 401
        assert (await http.get(f"/models/{MODEL_NAME}/audit", headers=as_("vic"))).json() == []
    assert promoted(service.bus) == []


async def test_no_configured_credential_closes_the_writes(
    bridge_settings: BridgeSettings,
) -> None:
    closed = make_service(
        bridge_settings.model_copy(update={"api_keys": {}}),
        InMemoryBus(service="registry-bridge"),
    )
    async with client(closed) as http:
        r = await http.post(
            f"/models/{MODEL_NAME}/rollback", json={"reason": "x"}, headers=as_("alice")
        )
    assert r.status_code == 401 and "BRIDGE_API_KEYS" in r.text


async def test_promotions_record_the_credentials_name_and_a_force_is_an_audited_override(
    service: BridgeService,
    register: Any,
    models: Any,
) -> None:
    bridge, bus = service.bridge, service.bus
    v1, v2 = register(models.better), register(models.worse)
    async with client(service) as http:
        # v1 is gated on request and promoted: by the credential's name, not the body's "by"
        r = await http.post(
            f"/models/{MODEL_NAME}/promote",
            headers=as_("alice"),
            json={"version": v1, "reason": "first model", "by": "mallory"},
        )
        assert r.status_code == 200, r.text
        assert r.json()["promoted_by"] == "alice"
        t1 = version_tags(v1)
        assert (t1[tags.PROMOTED_BY], t1[tags.PROMOTED_REASON]) == ("alice", "first model")

        await bridge.handle_version(MODEL_NAME, v2, "event")
        assert version_tags(v2)[tags.GATE] == "failed"
        r = await http.post(
            f"/models/{MODEL_NAME}/promote",
            headers=as_("alice"),
            json={"version": v2, "reason": "want it"},
        )
        assert r.status_code == 409 and "failed the gate" in r.text
        r = await http.post(
            f"/models/{MODEL_NAME}/promote",
            headers=as_("vic"),
            json={"version": v2, "reason": "want it", "force": True},
        )
        assert r.status_code == 403
        r = await http.post(
            f"/models/{MODEL_NAME}/promote",
            headers=as_("bob"),
            json={"version": v2, "reason": "urgent: known-good offline", "force": True},
        )
        assert r.status_code == 200, r.text
        t2 = version_tags(v2)
        assert (t2[tags.PROMOTED_BY], t2[tags.OVERRIDE_BY]) == ("bob", "bob")
        assert t2[tags.OVERRIDE_REASON] == "urgent: known-good offline"

        r = await http.post(
            f"/models/{MODEL_NAME}/rollback",
            headers=as_("alice"),
            json={"reason": "the override misclassifies rivers"},
        )
        assert r.status_code == 200, r.text

        r = await http.get(f"/models/{MODEL_NAME}/audit", headers=as_("vic"))
        assert r.status_code == 200, r.text
        audit = [e for e in r.json() if e["action"] != "gated"]  # the gate's verdicts too
        assert [
            (e["action"], e["from_version"], e["to_version"], e["by"], e["via"]) for e in audit
        ] == [
            ("promote", None, v1, "alice", "rest"),
            ("override", v1, v2, "bob", "rest"),
            ("rollback", v2, v1, "alice", "rest"),
        ]
        assert audit[1]["reason"] == "urgent: known-good offline" and audit[0]["at"]
        r = await http.get(f"/models/{MODEL_NAME}/audit?limit=1", headers=as_("alice"))
        assert [e["action"] for e in r.json()] == ["rollback"]
    assert [(e.version, e.promoted_by) for e in promoted(bus)] == [
        (v1, "alice"),
        (v2, "bob"),
        (v1, "alice"),
    ]

    # the force ended with its rollback: moving the alias back to the forced version in MLflow
    # is undone (anyone with MLflow write access could do it), and audited
    mlflow.MlflowClient().set_registered_model_alias(MODEL_NAME, "champion", v2)
    assert await bridge.sync_champion(MODEL_NAME) is None
    assert champion() == v1
    last = (await asyncio.to_thread(bridge.audit.entries, MODEL_NAME))[-1]
    assert (last.action, last.to_version, last.via) == ("alias_undone", v1, "mlflow")
    # while a force is in force, an alias move to its version is accepted
    async with client(service) as http:
        r = await http.post(
            f"/models/{MODEL_NAME}/promote",
            headers=as_("bob"),
            json={"version": v2, "reason": "again: rivers fixed upstream", "force": True},
        )
        assert r.status_code == 200, r.text
    assert champion() == v2


async def test_champion_alias_moved_to_a_gate_failed_version_is_undone_and_audited(
    service: BridgeService,
    register: Any,
    models: Any,
) -> None:
    bridge, bus = service.bridge, service.bus
    client_ = mlflow.MlflowClient()
    store = build_object_store(bridge.settings)

    # no champion yet: a failed version moved to champion loses the alias altogether
    v1 = register(models.worse)
    assert (await bridge.handle_version(MODEL_NAME, v1, "event")).state == "failed"
    client_.set_registered_model_alias(MODEL_NAME, "champion", v1)
    assert await bridge.sync_champion(MODEL_NAME) is None
    assert champion() is None

    v2 = register(models.better)
    assert (await bridge.handle_version(MODEL_NAME, v2, "event")).state == "promoted"
    assert champion() == v2

    # someone moves the alias in MLflow, even "signing" it with the bridge's override tag
    client_.set_model_version_tag(MODEL_NAME, v1, tags.OVERRIDE_BY, "mallory")
    client_.set_registered_model_alias(MODEL_NAME, "champion", v1)
    assert await bridge.sync_champion(MODEL_NAME) is None
    assert champion() == v2  # moved back to the version last shipped
    t1 = version_tags(v1)
    assert "failed the promotion gate" in t1[tags.ALIAS_UNDONE_REASON]
    assert tags.SHIPPED not in t1 and tags.PROMOTED_AT not in t1
    assert not any(f"/{v1}/" in o.key for o in store.list("models/"))  # never shipped
    assert [e.version for e in promoted(bus)] == [v2]  # not announced
    assert await bridge.sync_champion(MODEL_NAME) is None  # nothing left to do

    audit = moves(await asyncio.to_thread(bridge.audit.entries, MODEL_NAME))
    assert [(e.action, e.from_version, e.to_version, e.by, e.via) for e in audit] == [
        ("alias_undone", v1, None, "registry-bridge", "mlflow"),
        ("promote", None, v2, "registry-bridge", "auto"),
        ("alias_undone", v1, v2, "registry-bridge", "mlflow"),
    ]
    assert "failed the promotion gate" in audit[-1].reason

    # a forged previous-champion tag does not make a rollback ship the failed version either
    client_.set_model_version_tag(MODEL_NAME, v2, tags.PREVIOUS_CHAMPION, v1)
    with pytest.raises(PromotionError, match="may not be champion"):
        await bridge.rollback(MODEL_NAME, by="alice", reason="drill")
    assert champion() == v2


async def test_a_rollback_from_a_bad_version_to_a_forced_hotfix_is_one_command(
    service: BridgeService, register: Any, models: Any
) -> None:
    """A force ends when the champion moves on, but rolling back the promotion that moved it
    on restores it: v2 forced as a hotfix, v3 promoted after it, v3 misbehaves: back to v2."""
    bridge = service.bridge
    v1 = register(models.better)
    assert (await bridge.handle_version(MODEL_NAME, v1, "event")).state == "promoted"
    v2 = register(models.worse)
    assert (await bridge.handle_version(MODEL_NAME, v2, "event")).state == "failed"
    await bridge.promote(MODEL_NAME, v2, by="bob", reason="hotfix", force=True)
    v3 = register(models.better)  # fails on one class's recall against the hotfix: forced too
    await bridge.handle_version(MODEL_NAME, v3, "event")
    await bridge.promote(MODEL_NAME, v3, by="alice", reason="better overall", force=True)
    event = await bridge.rollback(MODEL_NAME, by="alice", reason="v3 misbehaves")
    assert event.version == v2 and champion() == v2
    # but an alias move back to v3 and then to v2 again would need a new force: only the
    # rollback of the very promotion that ended it restores it
