"""Backfill throughput: 1,000 STAC items through the ingest watcher to real Kafka, against the
bare pystac-client search over the same items, measured in the same run.

    eval "$(deploy/local/stack env)"
    EOSTREAM_DATA_DIR=../shared/data uv run python benchmarks/ingest/bench_backfill.py

It creates a throw-away collection in the STAC API (EOSTREAM_STAC_API_URL), fills it with clones
of the real Earth Search v1 items (new ids and datetimes), times

* baseline: ``Client.open(api).search(collections=[c], limit=page).items_as_dicts()`` (paging only);
* ingest: ``Watcher.poll(backfill=True)``: the same search, plus mapping/validation, the seen-set
  (PostgreSQL when EOSTREAM_PG_DSN is set, else sqlite), publishing SceneDiscovered to Kafka with
  acks=all and waiting for every acknowledgement,

checks that every item reached the topic exactly once, and prints items/s and the ratio. It also
times the watcher alone on the same items read from a local FeatureCollection (no API).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from eostream.ingest.service import from_settings, running, started
from eostream.ingest.settings import (
    IngestSettings,
    ItemFilter,
    StacApiSource,
    StaticSource,
    utc_text,
)
from eostream.shared.settings import KafkaSettings


def env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f'{name} is not set (eval "$(deploy/local/stack env)")')
    return value


def load_items(data_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    base = data_dir / "sentinel2_stac/earth_search_v1"
    collection = json.loads((base / "sentinel-2-c1-l2a.collection.json").read_text())
    items = json.loads((base / "sentinel-2-c1-l2a.item-collection.json").read_text())["features"]
    return collection, items


def fill(
    api: str,
    cid: str,
    collection: dict[str, Any],
    templates: list[dict[str, Any]],
    n: int,
    start: datetime,
) -> list[dict[str, Any]]:
    body = copy.deepcopy(collection)
    body["id"], body["links"] = cid, []
    httpx.post(f"{api}/collections", json=body, timeout=30).raise_for_status()
    items = []
    for k in range(n):
        item = copy.deepcopy(templates[k % len(templates)])
        item["id"] = f"{item['id']}-bench-{k:05d}"
        item["collection"], item["links"] = cid, []
        item["properties"]["datetime"] = (start + timedelta(minutes=k)).strftime(
            "%Y-%m-%dT%H:%M:%S.%fZ"
        )
        items.append(item)
    for i in range(0, n, 200):
        chunk = {"type": "FeatureCollection", "features": items[i : i + 200]}
        r = httpx.post(f"{api}/collections/{cid}/items", json=chunk, timeout=300)
        r.raise_for_status()
    return items


def baseline(api: str, cid: str, page: int, start: datetime, end: datetime) -> tuple[int, float]:
    """The same search the watcher makes (collection and date range), and nothing else."""
    from pystac_client import Client

    began = time.perf_counter()
    search = Client.open(api).search(
        collections=[cid], datetime=f"{utc_text(start)}/{utc_text(end)}", limit=page
    )
    count = sum(1 for _ in search.items_as_dicts())
    return count, time.perf_counter() - began


async def ingest(settings: IngestSettings, start: datetime, end: datetime) -> tuple[int, float]:
    adapters = from_settings(settings)
    async with started(adapters.bus), running(settings, adapters) as watcher:
        began = time.perf_counter()
        report = await watcher.poll(watcher.sources[0], start=start, end=end, backfill=True)
        seconds = time.perf_counter() - began
    if report.rejected:
        raise SystemExit(f"unexpected rejections: {report.rejections[:3]}")
    return report.published, seconds


async def count_on_topic(bootstrap: str, topic: str) -> dict[str, int]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    counts: dict[str, int] = {}
    try:
        idle = 0
        while idle < 6:
            batch = await consumer.getmany(timeout_ms=500)
            idle = 0 if batch else idle + 1
            for records in batch.values():
                for r in records:
                    key = (r.key or b"").decode()
                    counts[key] = counts.get(key, 0) + 1
    finally:
        await consumer.stop()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--page-size", type=int, default=100)
    args = parser.parse_args()
    api, bootstrap = env("EOSTREAM_STAC_API_URL"), env("EOSTREAM_KAFKA_BOOTSTRAP")
    data_dir = Path(env("EOSTREAM_DATA_DIR"))
    run = uuid.uuid4().hex[:8]
    cid, topic = f"eostream-bench-{run}", f"eostream.bench.scenes.{run}"
    start = datetime(2024, 6, 1, tzinfo=UTC)
    end = start + timedelta(minutes=args.items)
    collection, templates = load_items(data_dir)

    print(f"loading {args.items} items into {api}/collections/{cid} ...")
    t0 = time.perf_counter()
    items = fill(api, cid, collection, templates, args.items, start)
    print(f"  loaded in {time.perf_counter() - t0:.1f}s")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            dsn = os.environ.get("EOSTREAM_PG_DSN")
            settings = IngestSettings(
                bus="kafka",
                kafka=KafkaSettings(bootstrap_servers=bootstrap),
                topic=topic,
                state="postgres" if dsn else "sqlite",
                pg_dsn=dsn,
                pg_schema="ingest_bench",
                sqlite_path=Path(tmp) / "state.sqlite",
                publish_batch=args.page_size,
                sources=(
                    StacApiSource(
                        name=f"bench-{run}",
                        url=api,
                        page_size=args.page_size,
                        filter=ItemFilter(collections=(cid,)),
                    ),
                ),
            )
            n0, s0 = baseline(api, cid, args.page_size, start, end)
            n1, s1 = asyncio.run(ingest(settings, start, end))
            n2, s2 = baseline(api, cid, args.page_size, start, end)
            counts = asyncio.run(count_on_topic(bootstrap, topic))
            # the watcher's own cost, without the API: the same items from a local file
            local = Path(tmp) / "items.json"
            for item in items:  # as a saved search result has them
                link = f"{api}/collections/{cid}/items/{item['id']}"
                item["links"] = [{"rel": "self", "href": link}]
            local.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
            static = settings.model_copy(
                update={
                    "topic": topic + ".static",
                    "sources": (StaticSource(name=f"bench-static-{run}", href=str(local)),),
                }
            )
            n3, s3 = asyncio.run(ingest(static, start, end))
    finally:
        httpx.delete(f"{api}/collections/{cid}", timeout=60)

    if (
        not (n0 == n1 == n2 == n3 == args.items)
        or len(counts) != args.items
        or set(counts.values()) != {1}
    ):
        raise SystemExit(
            f"count mismatch: search {n0}/{n2}, published {n1}, on topic "
            f"{len(counts)} keys, max per key {max(counts.values(), default=0)}"
        )
    base_rate = args.items / ((s0 + s2) / 2)
    rate = args.items / s1
    print(f"state store: {settings.state}; page size {args.page_size}; {args.items} items")
    print(f"  bare pystac-client search : {base_rate:8.1f} items/s  ({s0:.2f}s, {s2:.2f}s)")
    print(f"  ingest backfill -> Kafka  : {rate:8.1f} items/s  ({s1:.2f}s, all acked)")
    print(f"  ratio ingest / search     : {rate / base_rate:8.2f}")
    print(f"  on topic: {len(counts)} item ids, each exactly once")
    print(
        f"  (watcher alone, same items from a local file -> Kafka: {args.items / s3:.1f} items/s)"
    )


if __name__ == "__main__":
    main()
