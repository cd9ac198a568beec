"""Latency of the whole loop: from a STAC item appearing in the STAC API to its classification
being queryable over REST, on the real local stack, each service its own process.

    eval "$(deploy/local/stack env)"
    EOSTREAM_DATA_DIR=../shared/data uv run python benchmarks/latency/bench_latency.py --scenes 20

It starts a throw-away deployment (the same ProcessGroup `eostream up --stack local` runs, in a
namespace of its own), trains and promotes a small first model, then inserts ``--scenes`` copies
of the real 29RKH scene (assets in MinIO) into the STAC API, one every ``--interval`` seconds, and
polls the REST API until each result is there. Each scene's latency is split with the events'
own timestamps:

* watcher lag: inserted -> SceneDiscovered (ingest's poll interval is most of it);
* queueing:    SceneDiscovered -> inference starts the scene (SceneClassified time - compute);
* compute:     inference's classification (SceneClassified.duration_seconds);
* indexing:    the rest, until GET /results/{id} answered 200 (poll step 0.2 s).

The baseline, measured in the same run: the same scene classified in this process by the same
pipeline code and model with no bus or service in between. The ratio end-to-end / baseline says
what the event-driven path costs on top of the work itself.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx

from eostream.runner.driver import (
    DeploymentDriver,
    create_collection,
    stage_scene,
    watch_collection,
)
from eostream.runner.processes import ProcessGroup
from eostream.shared.deployment import Deployment, LocalStack
from eostream.shared.storage.s3 import S3ObjectStore


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def baseline_seconds(driver: DeploymentDriver, repeats: int = 3) -> float:
    """The same scene (COGs in MinIO), model and pipeline code, results written to MinIO as the
    service does, but called in this process: no bus, no STAC API, no service in between."""
    from pydantic import SecretStr

    from eostream.inference.results import build_results_store
    from eostream.inference.settings import InferenceSettings
    from eostream.inference.wiring import build_service

    promoted = driver.promoted()[-1]
    stack = driver.stack
    with tempfile.TemporaryDirectory() as tmp:
        settings = InferenceSettings.model_validate(
            {
                "api_key": SecretStr("bench"),
                "bus": "memory",
                "store": "s3",
                "s3": stack.s3_settings(),
                "intra_op_threads": 1,
                "allow_coarse_scenes": True,  # the 29RKH tile is 100 m
                "results_prefix": f"latency-baseline-{driver.run}",
            }
        )
        results = build_results_store(f"sqlite:///{tmp}/results.db")
        service = build_service(settings, store=driver.store, results=results, consume=False)
        pipeline = service.pipeline
        service.deployment.deploy(promoted)
        item = driver.new_item(f"baseline-{driver.run}")
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            pipeline.classify_item(item, f"baseline-{driver.run}.json", replace=True)
            times.append(time.perf_counter() - started)
        results.close()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--interval", type=float, default=4.0, help="seconds between inserts")
    parser.add_argument("--poll", type=float, default=2.0, help="ingest's poll interval (s)")
    args = parser.parse_args()

    stack = LocalStack.from_environ()
    data_dir = Path(os.environ["EOSTREAM_DATA_DIR"])
    run = uuid.uuid4().hex[:8]
    home = Path(tempfile.mkdtemp(prefix=f"eostream-latency-{run}-"))
    collection = f"latency-{run}"
    store = S3ObjectStore(stack.s3_settings(), "eostream")
    template = stage_scene(store, data_dir, f"latency/{run}/scene")
    create_collection(stack, data_dir, collection)

    deployment = Deployment(
        name=f"latency-{run}",
        home=home,
        data_dir=data_dir,
        topic_prefix=f"latency-{run}.",
        model_name=f"latency-{run}",
    )
    group = ProcessGroup(
        stack,
        deployment,
        env={
            "ingest": {
                "INGEST_SOURCES": watch_collection(stack, collection, "latency"),
                "INGEST_POLL_INTERVAL_SECONDS": str(args.poll),
            },
            "registry-bridge": {"BRIDGE_GATE__MIN_ACCURACY": "0.15"},
            "inference": {"INFERENCE_INTRA_OP_THREADS": "1"},
        },
    )
    print(f"starting 4 service processes (logs in {home / 'logs'}) ...")
    with group.running():
        driver = DeploymentDriver(stack, group, run, collection, template, store)
        print("training and promoting a first model ...")
        promoted = driver.train_and_promote(epochs=2, samples_per_class=40)
        driver.wait_for_champion(promoted.version)

        inserted: dict[str, float] = {}
        queryable: dict[str, float] = {}

        def poll_results() -> None:
            while len(queryable) < args.scenes:
                for scene in [s for s in inserted if s not in queryable]:
                    if driver.result(scene) is not None:
                        queryable[scene] = time.time()
                time.sleep(0.2)

        poller = threading.Thread(target=poll_results, daemon=True)
        poller.start()
        print(f"inserting {args.scenes} scenes, one every {args.interval} s ...")
        for _ in range(args.scenes):
            item = driver.new_item()
            stamp = time.time()
            driver.insert(item)
            inserted[item["id"]] = stamp
            time.sleep(args.interval)
        poller.join(timeout=600)

        discovered = {e.item_id: e for e in driver.discovered()}
        classified = {e.item_id: e for e in driver.classified()}
        baseline = baseline_seconds(driver)

    rows = []
    for scene, t0 in inserted.items():
        d, c = discovered[scene], classified[scene]
        t_disc = d.time.timestamp()
        t_done = c.time.timestamp()
        compute = c.duration_seconds
        rows.append(
            {
                "total": queryable[scene] - t0,
                "watcher lag": t_disc - t0,
                "queueing": max(0.0, t_done - compute - t_disc),
                "compute": compute,
                "indexing+poll": max(0.0, queryable[scene] - t_done),
            }
        )
    print(
        f"\nlatency over {len(rows)} scenes (29RKH, 1098 x 1098 px; ingest polls every "
        f"{args.poll} s; one scene every {args.interval} s) at {datetime.now(UTC):%Y-%m-%d %H:%M}Z"
    )
    print(f"{'':16}{'p50 s':>9}{'p95 s':>9}{'max s':>9}")
    for part in ("total", "watcher lag", "queueing", "compute", "indexing+poll"):
        values = [r[part] for r in rows]
        print(f"{part:16}{pct(values, 0.5):9.2f}{pct(values, 0.95):9.2f}{max(values):9.2f}")
    total50 = pct([r["total"] for r in rows], 0.5)
    print(
        f"\nbaseline: the same scene classified in-process, no bus or services: {baseline:.2f} s"
        f"\nratio end-to-end p50 / baseline: {total50 / baseline:.1f}x; compute in the service "
        f"p50 / baseline: {pct([r['compute'] for r in rows], 0.5) / baseline:.2f}x"
    )
    httpx.delete(f"{stack.stac_api_url}/collections/{collection}", timeout=30)


if __name__ == "__main__":
    main()
