"""The embedded component: the bridge on a shared in-process bus and local store; a restart on a
fresh bus re-announces the champion of the earlier run without gating or shipping it again."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from eostream.registry_bridge.embedded import component, embedded_settings
from eostream.shared import topics
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.codec import decode
from eostream.shared.embedded import EmbeddedContext, EmbeddedSystem
from eostream.shared.errors import ConfigError
from eostream.shared.events import ModelPromoted
from eostream.shared.storage.local import LocalObjectStore

from .conftest import (
    HOLDOUT_PER_CLASS,
    HOLDOUT_SALT,
    MODEL_NAME,
)

OPTIONS = {
    "reconcile_interval_seconds": 0.3,
    "holdout": {"per_class": HOLDOUT_PER_CLASS, "salt": HOLDOUT_SALT},
    "gate": {"min_accuracy": 0.2, "max_class_drop": 0.5, "min_improvement": 0.0},
    "registration_grace_seconds": 0,
    "retry_attempts": 2,
    "retry_backoff_seconds": 0.05,
}


def promoted(bus: InMemoryBus) -> list[ModelPromoted]:
    events = [decode(m) for m in bus._logs[topics.MODELS_PROMOTED]]
    return [e for e in events if isinstance(e, ModelPromoted)]


def shipped_count() -> float:
    return (
        REGISTRY.get_sample_value(
            "eostream_bridge_ship_duration_seconds_count", {"outcome": "shipped"}
        )
        or 0.0
    )


def context_for(bus: InMemoryBus, tmp_path: Path, tracking_uri: str, data_dir: Path) -> Any:
    return EmbeddedContext(
        bus=bus,
        store=LocalObjectStore(tmp_path / "objects", "eostream"),
        home=tmp_path / "home",
        mlflow_tracking_uri=tracking_uri,
        data_dir=data_dir,
        options={"registry-bridge": OPTIONS},
    )


async def wait_for(bus: InMemoryBus, count: int, timeout: float = 60) -> list[ModelPromoted]:
    for _ in range(int(timeout / 0.1)):
        events = promoted(bus)
        if len(events) >= count:
            return events
        await asyncio.sleep(0.1)
    raise AssertionError(f"fewer than {count} ModelPromoted after {timeout}s")


async def test_champion_is_promoted_then_re_announced_on_a_fresh_bus(
    tmp_path: Path, tracking_uri: str, data_dir: Path, register: Any, models: Any
) -> None:
    v1 = register(models.better)
    store = LocalObjectStore(tmp_path / "objects", "eostream")
    store.check()

    bus = InMemoryBus(service="embedded")
    async with EmbeddedSystem(
        context_for(bus, tmp_path, tracking_uri, data_dir), {"registry-bridge": component}
    ) as system:
        [first] = await wait_for(bus, 1)
        assert (first.name, first.version, first.alias) == (MODEL_NAME, v1, "champion")
        model_key = f"models/{MODEL_NAME}/{v1}/model.onnx"
        model_file = Path(first.artifact_uri.removeprefix("file://"))
        assert store.exists(model_key) and model_file.is_file()
        assert hashlib.sha256(store.get_bytes(model_key)).hexdigest() == first.sha256
        url = system.urls()["registry-bridge REST API"]
        async with httpx.AsyncClient(base_url=url) as http:
            rows = (await http.get(f"/models/{MODEL_NAME}")).json()
            assert [(r["version"], r["aliases"]) for r in rows] == [(v1, ["champion"])]
            assert (await http.post("/webhooks/mlflow", content=b"{}")).status_code == 404
    written = {p: p.stat().st_mtime_ns for p in model_file.parent.iterdir()}
    shipped_before = shipped_count()

    # a new process: same MLflow and store, a fresh in-memory bus that knows nothing
    bus2 = InMemoryBus(service="embedded")
    second = component(context_for(bus2, tmp_path, tracking_uri, data_dir))
    await second.start()
    try:
        [again] = promoted(bus2)  # announced before start() returned
        assert (again.name, again.version, again.sha256) == (MODEL_NAME, v1, first.sha256)
        assert (again.artifact_uri, again.mlm_item_href) == (
            first.artifact_uri,
            first.mlm_item_href,
        )
        assert await second.announce_current_champion() == []  # idempotent
        assert second.service is not None
        passes = second.service.worker.reconcile_passes
        while second.service.worker.reconcile_passes < passes + 2:
            await asyncio.sleep(0.1)
        assert len(promoted(bus2)) == 1  # the reconcile loop does not announce it again
    finally:
        await second.stop()
    assert {p: p.stat().st_mtime_ns for p in model_file.parent.iterdir()} == written
    assert shipped_count() == shipped_before


def test_embedded_settings_take_options_but_not_the_embedded_adapters(
    tmp_path: Path, data_dir: Path
) -> None:
    def context(options: dict[str, Any]) -> EmbeddedContext:
        return EmbeddedContext(
            bus=InMemoryBus(service="embedded"),
            store=LocalObjectStore(tmp_path / "objects", "eostream"),
            home=tmp_path / "home",
            mlflow_tracking_uri="http://127.0.0.1:5999",
            data_dir=data_dir,
            http_host="127.0.0.2",
            options={"registry-bridge": options},
        )

    settings = embedded_settings(context({"reconcile_interval_seconds": 2.5}))
    assert settings.reconcile_interval_seconds == 2.5
    assert (settings.bus, settings.mlflow_tracking_uri) == ("memory", "http://127.0.0.1:5999")
    assert (settings.data_dir, settings.http_host) == (data_dir, "127.0.0.2")
    assert embedded_settings(context({})).reconcile_interval_seconds == 5.0
    # a promoter credential of its own, kept owner-only under the home, the same on every start
    keys = settings.api_keys
    assert list(keys) == ["operator"] and keys["operator"].role == "promoter"
    kept = tmp_path / "home" / "registry-bridge" / "api-key"
    assert kept.read_text().strip() == keys["operator"].key.get_secret_value()
    assert kept.stat().st_mode & 0o077 == 0
    assert embedded_settings(context({})).api_keys == keys
    given = {"ci": {"key": "a-key-given-as-an-option", "role": "viewer"}}
    assert list(embedded_settings(context({"api_keys": given})).api_keys) == ["ci"]
    with pytest.raises(ConfigError, match="bus, mlflow_tracking_uri"):
        embedded_settings(context({"bus": "kafka", "mlflow_tracking_uri": "x"}))
