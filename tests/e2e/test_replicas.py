"""Three inference replicas in one consumer group on the real stack, one killed mid-way.

Each replica is its own ``eostream inference serve`` process, as ``kubectl scale`` (or KEDA) would
run them: one scenes group shared by all (Kafka splits the topic's partitions among them), one
models group each (every replica must hear every promotion). 100 real scenes (copies of the 29RKH
tile in MinIO) are announced; once a replica has classified some of them it is SIGKILLed mid-work
and not restarted. Its partitions go to the other two, which classify what it left: every scene
ends with exactly one result and one SceneClassified event id, and every replica did some.

Delivery is at least once: a scene the killed replica was computing is computed again by its new
owner (same bytes, same result id, same event id), which is what "nothing repeated" means here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from eostream.inference import testing
from eostream.runner.driver import DeploymentDriver, stage_scene
from eostream.runner.processes import ProcessGroup
from eostream.shared import topics
from eostream.shared.deployment import Deployment, LocalStack
from eostream.shared.events import ModelPromoted, SceneClassified, SceneDiscovered
from eostream.shared.storage.s3 import S3ObjectStore

pytestmark = [pytest.mark.stack, pytest.mark.alone, pytest.mark.slow, pytest.mark.timeout(1200)]
log = logging.getLogger(__name__)

SCENES = 100
REPLICAS = ("inference", "inference-2", "inference-3")
CONSUMED_OK = re.compile(
    r'^eostream_events_consumed_total\{[^}]*outcome="ok"[^}]*'
    r'topic="eostream\.scenes\.discovered"[^}]*\} ([0-9.e+]+)$',
    re.M,
)


def scenes_done(url: str) -> int:
    """Scenes this replica has handled (its own /metrics; 0 if it does not answer)."""
    try:
        text = httpx.get(f"{url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return 0
    return int(sum(float(v) for v in CONSUMED_OK.findall(text)))


def test_three_replicas_classify_each_scene_once_with_one_killed_mid_way(
    data_dir: Path, tmp_path: Path
) -> None:
    try:
        stack = LocalStack.from_environ()
    except Exception as exc:  # the stack tests fail, never skip, without the stack
        pytest.fail(str(exc))
    run = uuid.uuid4().hex[:8]
    store = S3ObjectStore(stack.s3_settings(), "eostream")
    template = stage_scene(store, data_dir, f"replicas/{run}/scene")
    deployment = Deployment(
        name=f"replicas-{run}",
        home=tmp_path,
        data_dir=data_dir,
        topic_prefix=f"replicas-{run}.",
        model_name=f"replicas-{run}",
    )
    group = ProcessGroup(
        stack,
        deployment,
        only=("inference",),
        replicas={"inference": len(REPLICAS)},
        env={
            "inference": {
                "INFERENCE_INTRA_OP_THREADS": "1",
                "INFERENCE_RESULTS_PREFIX": f"replicas-results-{run}",
                "INFERENCE_COLLECTION_ID": f"replicas-classifications-{run}",
                "INFERENCE_CATALOG__COLLECTION": f"replicas-results-{run}",
            },
            **{
                name: {"INFERENCE_MODELS_GROUP": f"inference-models-{run}-{name}"}
                for name in REPLICAS[1:]
            },
        },
    )
    driver = DeploymentDriver(stack, group, run, "none", template, store)

    # the champion: a small real ONNX model in MinIO, announced before the replicas start
    card = testing.model_card("rgb")
    blob = testing.build_onnx(card, seed=11)
    store.put_bytes(f"replicas/{run}/model.onnx", blob)
    driver.publish(
        topics.MODELS_PROMOTED,
        ModelPromoted(
            name=deployment.model_name,
            version="1",
            alias="champion",
            artifact_uri=store.uri(f"replicas/{run}/model.onnx"),
            sha256=hashlib.sha256(blob).hexdigest(),
            mlm_item_href=store.uri(f"replicas/{run}/mlm.json"),
            run_id=f"run-{run}",
        ),
    )
    # 100 items, each its own copy of the real scene
    scenes: list[SceneDiscovered] = []
    for number in range(SCENES):
        item = driver.new_item(f"S2A_29RKH_20200219_0_L2A-{run}-{number:03d}")
        key = f"replicas/{run}/items/{item['id']}.json"
        store.put_bytes(key, json.dumps(item).encode(), "application/json")
        scenes.append(
            SceneDiscovered(
                item_id=item["id"],
                item_href=store.uri(key),
                datetime=datetime(2020, 2, 19, 11, 21, tzinfo=UTC),
                processing_level="L2A",
                processing_baseline="02.14",
                bands=("B02", "B03", "B04"),
                source_name="replicas",
            )
        )

    try:
        with group.running():
            for name in REPLICAS:  # ready: the model is live and both consumers run
                group[name].wait_ready(240)
            driver.publish_many(topics.SCENES_DISCOVERED, scenes)

            victim = group["inference-2"]
            driver.wait(
                "inference-2 to classify some scenes",
                lambda: scenes_done(victim.ops_url) >= 3,
                300,
                every=0.2,
            )
            killed_after = scenes_done(victim.ops_url)
            victim.kill()  # SIGKILL, mid-work: it had scenes in hand and more in its partitions
            log.info("killed inference-2 after it had classified %s scenes", killed_after)

            ids = [s.item_id for s in scenes]
            results = driver.wait_for_results(ids, 900)
            survivors = {n: scenes_done(group[n].ops_url) for n in REPLICAS if n != victim.name}
    finally:  # the result items the replicas published to the stack's STAC API
        httpx.delete(f"{stack.stac_api_url}/collections/replicas-results-{run}", timeout=30)

    assert set(results) == set(ids)
    assert all(r["model_version"] == "1" for r in results.values())
    classified = [e for e in driver.classified() if isinstance(e, SceneClassified)]
    ids_per_scene = Counter(scene for scene, _ in {(e.item_id, e.id) for e in classified})
    assert set(ids_per_scene) == set(ids)
    assert set(ids_per_scene.values()) == {1}, "a scene was announced under two event ids"
    assert not driver.dead_letters()
    # every replica did some: the victim before it died, the others throughout
    assert killed_after >= 3
    assert all(count > 0 for count in survivors.values()), survivors
    log.info("scenes per replica: inference-2 %s (killed), %s", killed_after, survivors)
