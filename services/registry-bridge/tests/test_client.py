"""``eostream.client.BridgeClient`` against the real bridge app served by uvicorn on 127.0.0.1
(its MLflow on sqlite): a registered version read back with its gate verdict, and the writes'
credentials enforced, each refusal one ApiError with the server's code and description."""

from __future__ import annotations

import asyncio

import pytest
from torch import nn

from eostream.client import ApiError, BridgeClient
from eostream.registry_bridge.settings import BridgeSettings
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.ops import OpsServer

from .conftest import CREDENTIALS, MODEL_NAME, Register, TinyCNN, make_service


def read_and_try_writes(url: str, version: str) -> None:
    with BridgeClient(url) as anonymous:
        [row] = anonymous.versions(MODEL_NAME)
        assert (row.version, row.aliases, row.gate, row.shipped) == (version, [], None, False)
        assert anonymous.champion(MODEL_NAME) is None
        with pytest.raises(ApiError) as unauthenticated:
            anonymous.promote(MODEL_NAME, version, reason="try")
        assert (unauthenticated.value.status, unauthenticated.value.code) == (
            401,
            "unauthenticated",
        )
    with BridgeClient(url, api_key=CREDENTIALS["vic"][0]) as viewer:
        with pytest.raises(ApiError) as forbidden:
            viewer.promote(MODEL_NAME, version, reason="try")
        assert forbidden.value.status == 403
        assert "promoter" in forbidden.value.description
    with BridgeClient(url, api_key=CREDENTIALS["alice"][0]) as promoter:
        with pytest.raises(ApiError) as conflict:
            promoter.promote(MODEL_NAME, "9", reason="no such version")
        assert (conflict.value.status, conflict.value.code) == (409, "cannot_promote")


async def test_the_client_reads_versions_and_its_writes_need_a_promoter_key(
    bridge_settings: BridgeSettings, register: Register
) -> None:
    model: nn.Module = TinyCNN()
    version = await asyncio.to_thread(register, model)
    service = make_service(bridge_settings, InMemoryBus(service="registry-bridge"), webhooks=False)
    server = OpsServer(service.app, "127.0.0.1", 0)
    await server.start()
    try:
        await asyncio.to_thread(read_and_try_writes, server.url, version)
    finally:
        await server.stop()
