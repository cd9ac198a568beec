"""Hostile path and body inputs: a model name or version of the wrong form is a 422 with the one
error body (never a 500), and never reaches an MLflow search filter."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from eostream.registry_bridge.cli import models_app
from eostream.registry_bridge.registry import (
    InvalidNameError,
    MlflowRegistry,
    check_version,
    name_filter,
)
from eostream.registry_bridge.settings import BridgeSettings
from eostream.shared.bus.memory import InMemoryBus

from .conftest import MODEL_NAME, as_, make_service

BAD_NAMES = ["a'b", "a:b", "x" * 300, "' OR name LIKE '%", "-leading-dash", "a b", 'a"b']
FUZZ_EXAMPLES = 20  # per operation and credential, derandomised
BAD_VERSIONS = ["abc", "0", "-1", "1.5", "1' OR '1'='1", "", " 1", "99999999999999999999"]


def _assert_invalid(r: httpx.Response, what: str) -> None:
    assert r.status_code == 422, f"{what}: {r.status_code} {r.text}"
    body = r.json()
    assert set(body) == {"code", "description"} and body["code"] == "invalid_request", (what, body)


async def test_bad_names_and_versions_are_422_with_the_error_body(
    bridge_settings: BridgeSettings,
) -> None:
    service = make_service(bridge_settings, InMemoryBus(service="registry-bridge"))
    transport = httpx.ASGITransport(app=service.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as http:
        for name in BAD_NAMES:
            path = f"/models/{quote(name, safe='')}"
            _assert_invalid(await http.get(path), f"GET {name!r}")
            _assert_invalid(await http.get(f"{path}/audit", headers=as_("alice")), name)
            promote = await http.post(
                f"{path}/promote", json={"version": "1", "reason": "x"}, headers=as_("alice")
            )
            _assert_invalid(promote, f"promote {name!r}")
            rollback = await http.post(
                f"{path}/rollback", json={"reason": "x"}, headers=as_("alice")
            )
            _assert_invalid(rollback, f"rollback {name!r}")
        for version in BAD_VERSIONS:
            r = await http.post(
                f"/models/{MODEL_NAME}/promote",
                json={"version": version, "reason": "x"},
                headers=as_("alice"),
            )
            _assert_invalid(r, f"version {version!r}")
        # a good name with no versions is an empty list, read through the checked filter
        empty = await http.get("/models/no-such-model.v2_x")
        assert empty.status_code == 200 and empty.json() == []


def test_filters_are_built_from_checked_names_only(tracking_uri: str) -> None:
    assert name_filter("eurosat-landcover") == "name = 'eurosat-landcover'"
    registry = MlflowRegistry(tracking_uri, attempts=1)
    for name in BAD_NAMES:
        with pytest.raises(InvalidNameError):
            name_filter(name)
        with pytest.raises(InvalidNameError):
            registry.versions(name)
    for version in BAD_VERSIONS:
        with pytest.raises(InvalidNameError):
            check_version(version)
    assert check_version("12") == "12"


def test_the_cli_refuses_bad_names_and_versions_in_one_line() -> None:
    runner = CliRunner()
    for args in (
        ["list", "a'b"],
        ["audit", "a:b"],
        ["rollback", "x" * 300, "--by", "alice"],
        ["promote", MODEL_NAME, "abc", "--by", "alice", "--reason", "x"],
    ):
        result = runner.invoke(models_app, args)
        assert result.exit_code == 1, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


async def test_openapi_fuzz_of_the_whole_api_with_and_without_credentials(
    bridge_settings: BridgeSettings,
    fuzz: Any,
) -> None:
    """schemathesis over every route of the running bridge (models, webhook, ops), as a
    promoter and as nobody: never a 5xx, every status answered documented."""
    # as deployed: webhooks on (without a secret the receiver answers 503 "disabled")
    settings = bridge_settings.model_copy(
        update={"webhook_secret": SecretStr("fuzz-webhook-secret-0001")}
    )
    bus = InMemoryBus(service="registry-bridge")
    service = make_service(settings, bus)
    await bus.start()
    await service.start()
    try:
        # fuzz the service once it is ready: before its first MLflow round trip /readyz answers
        # 503 (documented, but a server error to schemathesis), which a busy machine can show
        async with httpx.AsyncClient(base_url=service.server.url) as http:
            for _ in range(600):
                if (await http.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail("the bridge was not ready within 60 s")
        for headers in (as_("alice"), {}):
            failures, seen = await asyncio.to_thread(
                fuzz, service.server.url, headers, FUZZ_EXAMPLES, negative=bool(headers)
            )
            assert not failures, "\n".join(failures[:10])
            assert len(seen) >= 6, seen
            if not headers:  # the write routes refuse nobody
                assert ("POST", "/models/{name}/promote", 401) in seen, seen
    finally:
        await service.stop()
        await bus.close()
