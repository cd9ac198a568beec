"""The broker stops exactly while inference publishes a SceneClassified (the publish is held at a
gate until the broker is down): inference recovers by itself, and the scene ends classified once.

Two ways back: the publish retries until the broker returns (the default), or, when the outage
outlasts the publish's retries, the consumer stops without committing, its supervisor starts it
again and the redelivered scene is found done and announced again with the same event id.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from eostream.inference import testing
from eostream.inference.results import ResultQuery
from eostream.inference.settings import InferenceSettings
from eostream.inference.wiring import build_service
from eostream.shared import topics
from eostream.shared.bus.kafka import KafkaBus
from eostream.shared.codec import decode
from eostream.shared.events import SceneClassified, SceneDiscovered
from eostream.shared.settings import ConsumerSupervision, KafkaSettings

from .conftest import API_KEY

pytestmark = [pytest.mark.stack, pytest.mark.alone, pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.mark.parametrize("way_back", ["publish retried", "consumer restarted"])
async def test_a_broker_outage_during_the_publish_ends_with_the_scene_classified_once(
    way_back: str, kafka_bootstrap: str, rkh_item: Path, tmp_path: Path, outage: Any
) -> None:
    run = uuid.uuid4().hex[:8]
    card = testing.model_card("rgb")
    blob = testing.build_onnx(card, seed=3)
    model = tmp_path / "model.onnx"
    model.write_bytes(blob)
    kafka = KafkaSettings(
        bootstrap_servers=kafka_bootstrap,
        topic_prefix=f"outage{run}.",  # fresh topics: nobody else's scenes
        publish_retry_seconds=600 if way_back == "publish retried" else 1,
    )
    settings = InferenceSettings(
        api_key=SecretStr(API_KEY),
        bus="kafka",
        kafka=kafka,
        consumers=ConsumerSupervision(restart_backoff_max_seconds=2),
        store="local",
        local_store_root=tmp_path / "objects",
        results_db=f"sqlite:///{tmp_path}/results.db",
        intra_op_threads=1,
        allow_coarse_scenes=True,  # the 29RKH tile is downsampled to 100 m
        initial_model_uri=model.as_uri(),
        initial_model_sha256=hashlib.sha256(blob).hexdigest(),
        scenes_group=f"scenes-{run}",
        models_group=f"models-{run}",
        _env_file=None,
    )
    bus = KafkaBus(kafka, service="inference")
    await bus.start()
    gated = outage.gate(bus, topics.SCENES_CLASSIFIED)
    service = build_service(settings, bus=gated)
    await service.start()
    scene = SceneDiscovered(
        item_id="S2A_29RKH_20200219_0_L2A",  # the id inside the item
        item_href=str(rkh_item),
        datetime="2020-02-19T11:21:00Z",
        processing_level="L2A",
        processing_baseline="02.14",
        bands=("B02", "B03", "B04"),
        source_name="outage-test",
    )
    try:
        await bus.publish(topics.SCENES_DISCOVERED, scene)
        await outage.during(gated, "inference", restarts=way_back == "consumer restarted")
        scenes = service.consumers.members[1]
        await outage.wait_for(
            lambda: scenes.ready and scenes.progress is not None and scenes.progress.records > 0,
            "the scene's record to be handled after the outage",
        )
        announced = [decode(m) for m in await bus.read_topic(topics.SCENES_CLASSIFIED, timeout=60)]
        assert announced, "no SceneClassified after the broker came back"
        assert {e.id for e in announced} == {announced[0].id}  # one event (maybe sent twice)
        [event] = {e.id: e for e in announced}.values()
        assert isinstance(event, SceneClassified) and event.item_id == scene.item_id
        rows, total = service.results.search(ResultQuery(limit=10))
        assert total == 1 and rows[0].scene_id == scene.item_id  # classified once
        assert service.readiness()[0] and service.liveness()[0]
        if way_back == "consumer restarted":
            assert scenes.restarts >= 1
        else:
            assert scenes.restarts == 0
    finally:
        gated.release.set()
        await service.stop()
        await bus.close()
