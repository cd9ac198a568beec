"""The whole loop on the real local stack, each service its own process.

One deployment per test module: the four services started by the same
:class:`~eostream.runner.processes.ProcessGroup` that ``eostream up --stack local`` runs, in a
namespace of their own (topic prefix, consumer groups, model name, STAC collection, bucket
prefix), so other tests on the same stack neither see nor disturb them. A supervisor thread
restarts a process that dies, as an orchestrator would; tests kill processes on purpose and watch
the system recover.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from eostream.runner.driver import (
    DeploymentDriver,
    create_collection,
    stage_scene,
    watch_collection,
)
from eostream.runner.processes import ProcessGroup
from eostream.shared.deployment import Deployment, LocalStack
from eostream.shared.events import (
    Event,
    ModelPromoted,
)
from eostream.shared.storage.s3 import S3ObjectStore

log = logging.getLogger(__name__)
logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
REPO = Path(__file__).resolve().parents[2]

E = TypeVar("E", bound=Event)


System = DeploymentDriver


def _stack() -> LocalStack:
    try:
        return LocalStack.from_environ()
    except Exception as exc:  # the stack tests fail, never skip, without the stack
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def system(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    stack = _stack()
    run = uuid.uuid4().hex[:8]
    home = tmp_path_factory.mktemp(f"e2e-{run}")
    collection = f"e2e-{run}"
    store = S3ObjectStore(stack.s3_settings(), "eostream")
    # the real scene's COGs in MinIO; every test item points at them (s3:// hrefs)
    template = stage_scene(store, data_dir, f"e2e/{run}/scene")
    create_collection(stack, data_dir, collection)

    deployment = Deployment(
        name=f"e2e-{run}",
        home=home,
        data_dir=data_dir,
        topic_prefix=f"e2e-{run}.",
        model_name=f"e2e-{run}",
    )
    group = ProcessGroup(
        stack,
        deployment,
        env={
            "ingest": {
                "INGEST_SOURCES": watch_collection(stack, collection, "e2e"),
                "INGEST_POLL_INTERVAL_SECONDS": "1",
            },
            "trainer": {"TRAINER_NUM_THREADS": "2", "TRAINER_DEVICE": "cpu"},
            "registry-bridge": {
                # the first model is deliberately weak; later ones must beat it by 5 points
                "BRIDGE_GATE__MIN_ACCURACY": "0.15",
                "BRIDGE_GATE__MIN_IMPROVEMENT": "0.05",
                "BRIDGE_GATE__MAX_CLASS_DROP": "1.0",
                "BRIDGE_RECONCILE_INTERVAL_SECONDS": "5",
                "BRIDGE_REGISTRATION_GRACE_SECONDS": "60",
                "BRIDGE_CATALOG__COLLECTION": f"e2e-models-{run}",
            },
            "inference": {
                "INFERENCE_INTRA_OP_THREADS": "1",
                "INFERENCE_RESULTS_PREFIX": f"e2e-results-{run}",
                "INFERENCE_COLLECTION_ID": f"e2e-classifications-{run}",
                "INFERENCE_CATALOG__COLLECTION": f"e2e-results-{run}",
            },
        },
    )
    stopping = threading.Event()
    supervisor = threading.Thread(
        target=group.supervise, args=(stopping.is_set,), kwargs={"poll": 0.5}, daemon=True
    )
    group.start()
    supervisor.start()
    try:
        yield System(stack, group, run, collection, template, store)
    finally:
        stopping.set()
        supervisor.join(timeout=10)
        group.stop()
        # the run's collections in the stack's STAC API: scenes, result items, model items
        for name in (collection, f"e2e-results-{run}", f"e2e-models-{run}"):
            httpx.delete(f"{stack.stac_api_url}/collections/{name}", timeout=30)


def restart_kafka() -> None:
    """Restart the stack's broker (the real one: stop, start, wait until healthy)."""
    subprocess.run([str(REPO / "deploy/local/stack"), "restart-kafka"], check=True)


@pytest.fixture(scope="module")
def first_champion(system: System) -> ModelPromoted:
    """A deliberately weak first model (2 epochs on 40 patches a class), gated and promoted."""
    promoted = system.train_and_promote(epochs=2, samples_per_class=40, reason="e2e first")
    system.wait_for_champion(promoted.version)
    return promoted
