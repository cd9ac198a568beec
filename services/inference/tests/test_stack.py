"""The real scene end to end on the real stack: Kafka, MinIO (COGs read over /vsis3) and
PostgreSQL (results index). Needs `deploy/local/stack up`; fails (does not skip) without it."""

from __future__ import annotations

import asyncio
import io
import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import morecantile
import numpy as np
import pytest
from PIL import Image
from pydantic import SecretStr
from rasterio.io import MemoryFile

from eostream.inference import testing
from eostream.inference.api.app import create_app
from eostream.inference.settings import InferenceSettings
from eostream.inference.wiring import build_service
from eostream.shared import topics
from eostream.shared.bus import Delivery, build_bus
from eostream.shared.events import Event, ModelPromoted, SceneClassified, SceneDiscovered
from eostream.shared.settings import KafkaSettings, S3Settings
from eostream.shared.storage.s3 import S3ObjectStore

from .conftest import API_KEY, RKH

pytestmark = pytest.mark.stack
BUCKET = "eostream-inference-tests"


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(
            f"{name} is not set: run `deploy/local/stack up` and export `deploy/local/stack env`"
        )
    return value


async def _skip_history(bootstrap: str, group: str, topic: str, timeout: float = 30) -> None:
    """Start the group at the topic's end, as a fresh deployment would (others' events stay out).
    The group's own consumer joins, is given every partition and commits their ends (asked for
    the partitions without subscribing, aiokafka answered none, and this committed nothing)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not consumer.assignment() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        tps = sorted(consumer.assignment())
        if not tps:  # the topic does not exist yet: no history to skip
            assert topic not in await consumer.topics(), f"{group} was given no partition"
            return
        ends = await consumer.end_offsets(tps)
        await consumer.commit(ends)
        committed = {tp: await consumer.committed(tp) for tp in tps}
        assert committed == ends, (committed, ends)
    finally:
        await consumer.stop()


async def test_real_tile_on_the_stack(data_dir: Path, tmp_path: Path) -> None:
    bootstrap = _env("EOSTREAM_KAFKA_BOOTSTRAP")
    s3 = S3Settings(
        endpoint=_env("EOSTREAM_S3_ENDPOINT"),
        access_key=SecretStr(_env("EOSTREAM_S3_ACCESS_KEY")),
        secret_key=SecretStr(_env("EOSTREAM_S3_SECRET_KEY")),
    )
    dsn = _env("EOSTREAM_PG_DSN").rstrip("/") + "/results"
    run = uuid.uuid4().hex[:10]
    store = S3ObjectStore(s3, BUCKET)
    store.check()

    # the scene in MinIO: COGs and an item whose hrefs are s3:// URLs
    folder = data_dir / RKH
    item: dict[str, Any] = json.loads((folder / "S2A_29RKH_20200219_0_L2A.json").read_text())
    item["id"] = f"S2A_29RKH_20200219_0_L2A-{run}"
    for key in ("red", "green", "blue", "scl"):
        name = item["assets"][key]["href"].rsplit("/", 1)[-1]
        store.put_file(f"scenes/{run}/{name}", folder / name, "image/tiff")
        item["assets"][key]["href"] = store.uri(f"scenes/{run}/{name}")
    store.put_bytes(f"scenes/{run}/item.json", json.dumps(item).encode(), "application/json")
    card = testing.model_card("rgb")
    blob = testing.build_onnx(card, seed=7)
    store.put_bytes(f"models/{run}/model.onnx", blob)
    import hashlib

    promoted = ModelPromoted(
        name=f"eurosat-stack-{run}",
        version=run,
        alias="champion",
        artifact_uri=store.uri(f"models/{run}/model.onnx"),
        sha256=hashlib.sha256(blob).hexdigest(),
        mlm_item_href=store.uri(f"models/{run}/mlm.json"),
        run_id=f"run-{run}",
    )

    settings = InferenceSettings(
        api_key=SecretStr(API_KEY),
        bus="kafka",
        kafka=KafkaSettings(bootstrap_servers=bootstrap),
        store="s3",
        s3=s3,
        bucket=BUCKET,
        results_db=dsn,
        intra_op_threads=1,
        scenes_group=f"inference-test-scenes-{run}",
        models_group=f"inference-test-models-{run}",
        results_prefix=f"results-{run}",
        model_name=f"eurosat-stack-{run}",  # other teams promote their models on the same topic
        allow_coarse_scenes=True,  # the 29RKH tile is 100 m
        _env_file=None,
    )
    for group, topic in (
        (settings.scenes_group, topics.SCENES_DISCOVERED),
        (settings.models_group, topics.MODELS_PROMOTED),
    ):
        await _skip_history(bootstrap, group, topic)

    service = build_service(settings)
    await service.start()
    seen: list[SceneClassified] = []

    async def collect(event: Event, _delivery: Delivery) -> None:
        if isinstance(event, SceneClassified) and event.item_id == item["id"]:
            seen.append(event)

    listener_bus = build_bus(settings, service="inference-test")
    await listener_bus.start()
    listener = listener_bus.consumer(
        [topics.SCENES_CLASSIFIED], f"inference-test-listen-{run}", collect
    )
    listen_task = asyncio.create_task(listener.run())
    try:
        assert service.bus is not None
        await service.bus.publish(topics.MODELS_PROMOTED, promoted)
        await service.bus.publish(
            topics.SCENES_DISCOVERED,
            SceneDiscovered(
                item_id=item["id"],
                item_href=store.uri(f"scenes/{run}/item.json"),
                datetime=datetime(2020, 2, 19, tzinfo=UTC),
                processing_level="L2A",
                processing_baseline="02.14",
                bands=("B02", "B03", "B04"),
                source_name="stack-test",
            ),
        )
        for _ in range(1200):
            if seen:
                break
            await asyncio.sleep(0.1)
        assert seen, "no SceneClassified for our scene within 120 s"
        event = seen[0]
        assert (event.model_version, event.run_id) == (run, f"run-{run}")
        assert (
            event.cog_href
            == f"s3://{BUCKET}/results-{run}/{item['id']}/eurosat-stack-{run}/v{run}/classification.tif"
        )
        with (
            MemoryFile(store.get_bytes(event.cog_href.split(f"{BUCKET}/", 1)[1])) as mem,
            mem.open() as cog,
        ):
            labels = cog.read(1)
            assert cog.shape == (1098, 1098) and cog.crs.to_epsg() == 32629
        assert ((labels < 10) | (labels == 255)).all() and (labels < 10).mean() > 0.9

        # the results index is PostgreSQL; the API answers from it
        transport = httpx.ASGITransport(app=create_app(settings, service))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            r = await client.get(f"/results/{item['id']}")
            assert r.status_code == 200 and r.json()["model_version"] == run
            stats = (await client.get(f"/results/{item['id']}/statistics")).json()
            assert stats["pixels"] == 1098 * 1098
            found = (
                await client.get(
                    "/stac/search", params={"ids": f"{item['id']}__eurosat-stack-{run}__v{run}"}
                )
            ).json()
            assert found["numberReturned"] == 1
            # map tiles read the COG and the scene's bands from MinIO with the service's keys
            for kind in ("results", "scenes"):
                base = f"/tiles/{kind}/{item['id']}/WebMercatorQuad"
                tj = (await client.get(f"{base}/tilejson.json")).json()
                west, south, east, north = tj["bounds"]
                tile = morecantile.tms.get("WebMercatorQuad").tile(
                    (west + east) / 2, (south + north) / 2, tj["maxzoom"]
                )
                png = await client.get(f"/tiles/{kind}/{item['id']}/tiles/WebMercatorQuad/"
                                       f"{tile.z}/{tile.x}/{tile.y}.png")  # fmt: skip
                assert png.status_code == 200, png.text
                with Image.open(io.BytesIO(png.content)) as image:
                    assert (np.asarray(image.convert("RGBA"))[..., 3] == 255).mean() > 0.9
        assert type(service.results).__name__ == "PostgresResultsStore"
    finally:
        await listener.stop()
        await asyncio.wait_for(listen_task, 30)
        await listener_bus.close()
        await service.stop()
