"""Latency of the whole loop: from a STAC item appearing in the STAC API to its classification
being queryable over REST, on the real local stack, each service its own process.

    eval "$(deploy/local/stack env)"
    EOSTREAM_DATA_DIR=../shared/data uv run python benchmarks/latency/bench_latency.py --scenes 20

It starts a throw-away deployment (the same ProcessGroup `eostream up --stack local` runs, in a
namespace of its own), trains and promotes a small first model, then inserts ``--scenes`` copies
of the real 29RKH scene (assets in MinIO) into the STAC API per mode, one every ``--interval``
seconds, the modes taking turns, and polls the REST API until each result is there. One ingest
watches three collections, one per mode (``--modes``):

* poll:   found by ingest's poll (every ``--poll`` seconds);
* push:   after the insert, a signed CloudEvent is POSTed to ingest's /notifications;
* notify: PostgreSQL NOTIFY from a trigger on pgstac.items (the STAC API's database).

The poll keeps running for all three (the safety net), so a push or notify scene is announced by
whichever comes first. The clock starts when the STAC API answered the insert (the item is
there; the insert call itself is shown apart, not counted: it is the STAC API's write). Each
scene's latency is split with the events' own timestamps:

* watcher lag: inserted -> SceneDiscovered (ingest's poll interval is most of it when polled);
* queueing:    SceneDiscovered -> inference starts the scene (SceneClassified time - compute);
* compute:     inference's classification (SceneClassified.duration_seconds);
* indexing:    the rest, until GET /results/{id} answered 200 (poll step ``--result-poll``);
* overhead:    total - compute of each scene: what the event-driven path adds to the work
  (#22's goal for push: p95 under 0.3 s).

The baseline, measured in the same run: the same scene classified in this process by the same
pipeline code and model with no bus or service in between. The ratio end-to-end / baseline says
what the event-driven path costs on top of the work itself.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import statistics
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
from psycopg.conninfo import make_conninfo

from eostream.ingest.notify import drop_trigger
from eostream.runner.driver import (
    DeploymentDriver,
    create_collection,
    stage_scene,
    watch_collection,
)
from eostream.runner.processes import ProcessGroup
from eostream.shared.deployment import Deployment, LocalStack
from eostream.shared.storage.s3 import S3ObjectStore
from eostream.shared.webhooks import signed_headers


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


MODES = ("poll", "push", "notify")
PARTS = ("total", "watcher lag", "queueing", "compute", "indexing+poll", "overhead", "insert")


def ingest_env(
    stack: LocalStack,
    collections: dict[str, str],
    args: argparse.Namespace,
    secret: str,
    channel: str,
) -> dict[str, str]:
    """One ingest watching a collection per mode; push and NOTIFY each tied to its own."""
    sources = [
        json.loads(watch_collection(stack, c, f"latency-{m}"))[0] for m, c in collections.items()
    ]
    env = {
        "INGEST_SOURCES": json.dumps(sources),
        "INGEST_POLL_INTERVAL_SECONDS": str(args.poll),
    }
    if "push" in collections:
        env |= {
            "INGEST_PUSH__ENABLED": "true",
            "INGEST_PUSH__SECRET": secret,
            "INGEST_PUSH__SOURCE": "latency-push",
        }
    if "notify" in collections:
        env |= {
            "INGEST_NOTIFY__ENABLED": "true",
            "INGEST_NOTIFY__CHANNEL": channel,
            "INGEST_NOTIFY__SOURCE": "latency-notify",
        }
    return env


def push(url: str, secret: str, item: dict[str, object]) -> None:
    """What a catalogue does after registering an item: a signed CloudEvent, binary mode."""
    body = json.dumps({"id": item["id"], "collection": item["collection"]}).encode()
    headers = {
        "ce-specversion": "1.0",
        "ce-id": uuid.uuid4().hex,
        "ce-source": "/benchmarks/latency",
        "ce-type": "org.eoepca.resource-registration.resource.added",
        "content-type": "application/json",
        **signed_headers(secret, uuid.uuid4().hex, int(time.time()), body),
    }
    response = httpx.post(f"{url}/notifications", content=body, headers=headers, timeout=30)
    if response.status_code != 200:
        raise RuntimeError(f"push of {item['id']} refused: {response.status_code} {response.text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=20, help="scenes per mode")
    parser.add_argument("--interval", type=float, default=4.0, help="seconds between inserts")
    parser.add_argument("--poll", type=float, default=2.0, help="ingest's poll interval (s)")
    parser.add_argument(
        "--result-poll",
        type=float,
        default=0.02,
        help="how often the benchmark asks the REST API for results (s); its step is part of "
        "each figure (up to one step late)",
    )
    parser.add_argument("--modes", default=",".join(MODES), help="of poll,push,notify")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if not modes or set(modes) - set(MODES):
        parser.error(f"--modes: some of {', '.join(MODES)}")

    stack = LocalStack.from_environ()
    data_dir = Path(os.environ["EOSTREAM_DATA_DIR"])
    run = uuid.uuid4().hex[:8]
    home = Path(tempfile.mkdtemp(prefix=f"eostream-latency-{run}-"))
    collections = {m: f"latency-{run}-{m}" for m in modes}
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    channel = f"latency_{run}"
    store = S3ObjectStore(stack.s3_settings(), "eostream")
    template = stage_scene(store, data_dir, f"latency/{run}/scene")
    for collection in collections.values():
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
            "ingest": ingest_env(stack, collections, args, secret, channel),
            "registry-bridge": {"BRIDGE_GATE__MIN_ACCURACY": "0.15"},
            "inference": {"INFERENCE_INTRA_OP_THREADS": "1"},
        },
    )
    print(f"starting 4 service processes (logs in {home / 'logs'}) ...")
    try:
        with group.running():
            driver = DeploymentDriver(stack, group, run, collections[modes[0]], template, store)
            print("training and promoting a first model ...")
            promoted = driver.train_and_promote(epochs=2, samples_per_class=40)
            driver.wait_for_champion(promoted.version)
            ingest_url = group["ingest"].ops_url

            inserted: dict[str, float] = {}
            insert_call: dict[str, float] = {}
            mode_of: dict[str, str] = {}
            queryable: dict[str, float] = {}
            total = args.scenes * len(modes)

            def poll_results() -> None:
                while len(queryable) < total:
                    for scene in [s for s in list(inserted) if s not in queryable]:
                        if driver.result(scene) is not None:
                            queryable[scene] = time.time()
                    time.sleep(args.result_poll)

            poller = threading.Thread(target=poll_results, daemon=True)
            poller.start()
            print(
                f"inserting {args.scenes} scenes per mode ({', '.join(modes)}), "
                f"one every {args.interval} s ..."
            )
            for _ in range(args.scenes):
                for mode in modes:
                    driver.collection = collections[mode]
                    item = driver.new_item()
                    called = time.time()
                    driver.insert(item)
                    stamp = time.time()
                    if mode == "push":
                        push(ingest_url, secret, item)
                    inserted[item["id"]], mode_of[item["id"]] = stamp, mode
                    insert_call[item["id"]] = stamp - called
                    time.sleep(args.interval)
            poller.join(timeout=600)

            discovered = {e.item_id: e for e in driver.discovered()}
            classified = {e.item_id: e for e in driver.classified()}
            baseline = baseline_seconds(driver)
    finally:
        if "notify" in modes:
            asyncio.run(drop_trigger(make_conninfo(stack.pg_dsn, dbname="stac"), channel))
        for collection in collections.values():
            httpx.delete(f"{stack.stac_api_url}/collections/{collection}", timeout=30)

    rows: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    for scene, t0 in inserted.items():
        d, c = discovered[scene], classified[scene]
        t_disc = d.time.timestamp()
        t_done = c.time.timestamp()
        compute = c.duration_seconds
        rows[mode_of[scene]].append(
            {
                "total": queryable[scene] - t0,
                "watcher lag": t_disc - t0,
                "queueing": max(0.0, t_done - compute - t_disc),
                "compute": compute,
                "indexing+poll": max(0.0, queryable[scene] - t_done),
                "overhead": queryable[scene] - t0 - compute,
                "insert": insert_call[scene],
            }
        )
    print(
        f"\nlatency over {args.scenes} scenes per mode (29RKH, 1098 x 1098 px; ingest polls "
        f"every {args.poll} s; one scene every {args.interval} s, modes in turn; results asked "
        f"every {args.result_poll} s) at {datetime.now(UTC):%Y-%m-%d %H:%M}Z"
    )
    print(f"{'':24}{'p50 s':>9}{'p95 s':>9}{'max s':>9}")
    for mode in modes:
        for part in PARTS:
            values = [r[part] for r in rows[mode]]
            label = f"{mode}: {part}"
            print(f"{label:24}{pct(values, 0.5):9.2f}{pct(values, 0.95):9.2f}{max(values):9.2f}")

    def stat(mode: str, part: str, q: float) -> float:
        return pct([r[part] for r in rows[mode]], q)

    print(f"\nbaseline: the same scene classified in-process, no bus or services: {baseline:.2f} s")
    for mode in modes:
        print(
            f"{mode}: end-to-end p50 / baseline {stat(mode, 'total', 0.5) / baseline:.1f}x; "
            f"compute in the service p50 / baseline "
            f"{stat(mode, 'compute', 0.5) / baseline:.2f}x; overhead (total - compute) p95 "
            f"{stat(mode, 'overhead', 0.95):.2f} s; total p95 minus compute p95 "
            f"{stat(mode, 'total', 0.95) - stat(mode, 'compute', 0.95):.2f} s"
        )
    if "poll" in modes:
        for mode in (m for m in modes if m != "poll"):
            print(
                f"{mode} / poll: total p50 "
                f"{stat(mode, 'total', 0.5) / stat('poll', 'total', 0.5):.2f}x, "
                f"p95 {stat(mode, 'total', 0.95) / stat('poll', 'total', 0.95):.2f}x; watcher lag "
                f"p95 {stat(mode, 'watcher lag', 0.95) / stat('poll', 'watcher lag', 0.95):.3f}x"
            )


if __name__ == "__main__":
    main()
