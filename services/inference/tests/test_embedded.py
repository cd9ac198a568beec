"""The embedded component: a scene announced before any model waits for one, is classified once
a model is promoted, and its result is served over real HTTP, also after a restart on a new bus."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

import httpx
import pytest

from eostream.inference.embedded import KEY_FILE, InferenceComponent, component
from eostream.shared import topics
from eostream.shared.bus.base import RetryPolicy
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.embedded import ENTRY_POINT_GROUP, EmbeddedContext
from eostream.shared.errors import ConfigError
from eostream.shared.events import ModelPromoted
from eostream.shared.storage.local import LocalObjectStore

from .test_end_to_end import classified, run_until, scene_event

SCENE = "S2A_29RKH_20200219_0_L2A"
# No grace period and no retries: a scene handled before a model is live would be dead-lettered.
OPTIONS = {"inference": {"intra_op_threads": 1, "stride": 64, "model_wait_seconds": 0}}


def context(tmp_path: Path, bus: InMemoryBus, **options: object) -> EmbeddedContext:
    mine = {**OPTIONS["inference"], "model_roots": (str(tmp_path),), **options}  # make_model's
    return EmbeddedContext(
        bus=bus,
        store=LocalObjectStore(tmp_path / "objects", "eostream"),
        home=tmp_path / "home",
        mlflow_tracking_uri="sqlite:///unused.db",
        options={"inference": mine},
    )


def new_bus() -> InMemoryBus:
    return InMemoryBus(service="embedded", policy=RetryPolicy(max_retries=0, backoff_seconds=0.01))


async def listed(url: str) -> list[str]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        response = await client.get("/results", params={"limit": 100})
    response.raise_for_status()
    return [r["scene_id"] for r in response.json()["results"]]


async def test_scene_before_model_is_classified_and_served_across_restarts(
    tmp_path: Path, rkh_item: Path, make_model: Callable[..., ModelPromoted]
) -> None:
    bus = new_bus()
    first = component(context(tmp_path, bus))
    await first.start()
    try:
        url = first.urls["REST API"]
        await bus.publish(topics.SCENES_DISCOVERED, scene_event(rkh_item, SCENE))
        await asyncio.sleep(0.5)  # no model yet: the scene must wait, not fail
        assert bus.size(bus.dead_letter_topic) == 0
        assert bus.size(topics.SCENES_CLASSIFIED) == 0
        await bus.publish(topics.MODELS_PROMOTED, make_model("1"))
        await run_until(bus, topics.SCENES_CLASSIFIED, 1, timeout=120)
        assert classified(bus).item_id == SCENE
        assert bus.size(bus.dead_letter_topic) == 0
        assert await listed(url) == [SCENE]
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            quicklook = await client.get(f"/results/{SCENE}/quicklook")
        assert quicklook.status_code == 200 and quicklook.content[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        await first.stop()
    assert first.urls == {}

    key_file = tmp_path / "home" / "inference" / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    bus2 = new_bus()  # the in-process bus forgets everything; the home and the store do not
    second = component(context(tmp_path, bus2))
    assert second.settings.api_key.get_secret_value() == key_file.read_text().strip()
    await second.start()
    try:
        assert await listed(second.urls["REST API"]) == [SCENE]
        async with httpx.AsyncClient(base_url=second.urls["REST API"], timeout=10) as client:
            ready = await client.get("/readyz")  # the last live model was reloaded
            quicklook = await client.get(f"/results/{SCENE}/quicklook")
        assert ready.status_code == 200, ready.text
        assert quicklook.status_code == 200
    finally:
        await second.stop()


def test_api_key_option_and_fixed_settings(tmp_path: Path) -> None:
    given = component(context(tmp_path, new_bus(), api_key="from-options-1234"))
    assert given.settings.api_key.get_secret_value() == "from-options-1234"
    assert not (tmp_path / "home" / "inference" / KEY_FILE).exists()
    assert given.settings.results_db.endswith("/home/inference/results.sqlite")
    with pytest.raises(ConfigError, match="results_db"):
        component(context(tmp_path, new_bus(), results_db="sqlite:///elsewhere.db"))


def test_registered_as_an_embedded_component() -> None:
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert found["inference"].load() is component
    assert InferenceComponent.name == "inference"
