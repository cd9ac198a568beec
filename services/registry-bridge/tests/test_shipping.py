"""Shipping is idempotent on (name, version) and never half-done (local store, sqlite MLflow)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from eostream.registry_bridge.errors import RefusedError
from eostream.registry_bridge.settings import BridgeSettings
from eostream.registry_bridge.shipping import Shipper
from eostream.shared.storage import build_object_store

from .conftest import make_bridge

NAME = "eurosat-landcover"


async def test_ship_twice_crash_between_uploads_and_changed_bytes(
    bridge_settings: BridgeSettings, register: Any, models: Any
) -> None:
    store = build_object_store(bridge_settings)
    bridge = make_bridge(bridge_settings, store=store)
    promoter = bridge.promoter  # the shipping step of the promotion transactions
    version = register(models.better)
    verified = promoter.gate.verify(bridge.registry.get_version(NAME, version), wait_for_tags=False)

    first = promoter.ship(NAME, verified)
    assert not first.already_shipped
    model_key, item_key = bridge.shipper.keys(NAME, version)
    assert sorted(o.key for o in store.list("models/")) == sorted([model_key, item_key])
    item_bytes = store.get_bytes(item_key)

    second = promoter.ship(NAME, verified)
    assert second.already_shipped
    assert (second.artifact_uri, second.sha256, second.mlm_item_href) == (
        first.artifact_uri,
        first.sha256,
        first.mlm_item_href,
    )
    assert store.get_bytes(item_key) == item_bytes  # nothing rewritten

    # a crash after the model upload but before the item (the commit marker): not shipped yet,
    # and the next attempt completes it with the same result
    store.delete(item_key)
    assert bridge.shipper.existing(NAME, version) is None
    third = promoter.ship(NAME, verified)
    assert not third.already_shipped and third.sha256 == first.sha256
    assert json.loads(store.get_bytes(item_key))["properties"]["eostream:sha256"] == first.sha256

    # the same (name, version) with different bytes is refused, and the shipped files stay
    with pytest.raises(RefusedError, match="already shipped"):
        Shipper(store).ship(
            NAME,
            version,
            verified.onnx_bytes + b"\0",
            verified.card,
            lambda *_: pytest.fail("must not describe"),
        )
    assert store.get_bytes(model_key) == verified.onnx_bytes
