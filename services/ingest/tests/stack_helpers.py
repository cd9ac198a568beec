"""Helpers of the stack tests: load items into the real STAC API, read a Kafka topic to its end."""

from __future__ import annotations

import asyncio
import copy
import os
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import httpx
import pytest

from eostream.shared.bus.base import parse_dead_letter
from eostream.shared.codec import WireMessage, decode
from eostream.shared.events import DeadLetter, Event

JsonDict = dict[str, Any]


def stack_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f'{name} is not set: stack tests need it (eval "$(deploy/local/stack env)")')
    return value


def create_collection(api: str, template: JsonDict, collection_id: str) -> None:
    body = copy.deepcopy(template)
    body["id"] = collection_id
    body["links"] = []
    response = httpx.post(f"{api}/collections", json=body, timeout=30)
    assert response.status_code in (200, 201), response.text


def delete_collection(api: str, collection_id: str) -> None:
    httpx.delete(f"{api}/collections/{collection_id}", timeout=30)


def clone(item: JsonDict, *, collection: str, new_id: str, when: datetime) -> JsonDict:
    out = copy.deepcopy(item)
    out["id"] = new_id
    out["collection"] = collection
    out["links"] = []
    out["properties"]["datetime"] = when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return out


def post_items(api: str, collection: str, items: Iterable[JsonDict]) -> None:
    batch = list(items)
    if not batch:
        return
    if len(batch) == 1:
        response = httpx.post(f"{api}/collections/{collection}/items", json=batch[0], timeout=60)
    else:
        response = httpx.post(
            f"{api}/collections/{collection}/items",
            json={"type": "FeatureCollection", "features": batch},
            timeout=300,
        )
    assert response.status_code in (200, 201), response.text[:500]


async def read_topic(bootstrap: str, topic: str, timeout: float = 20.0) -> list[Event]:
    """Every event on ``topic`` from the beginning to the current end, decoded."""
    return [decode(m) for m in await read_records(bootstrap, topic, timeout)]


async def read_dead_letters(bootstrap: str, topic: str) -> list[DeadLetter]:
    return [parse_dead_letter(m) for m in await read_records(bootstrap, topic)]


async def read_records(bootstrap: str, topic: str, timeout: float = 20.0) -> list[WireMessage]:
    """Every record of ``topic`` from the beginning to the current end."""
    from aiokafka import AIOKafkaConsumer

    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await probe.start()
    try:
        if topic not in await probe.topics():
            return []
    finally:
        await probe.stop()
    # No group: the consumer is given every partition of the topic and commits nothing.
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        # the partitions come with a metadata update in the background: asked at once, on busy
        # cores they were not there yet and the read found no records
        deadline = asyncio.get_running_loop().time() + timeout
        while not consumer.assignment() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        tps = sorted(consumer.assignment())
        if not tps:
            return []
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records: list[WireMessage] = []
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            positions = [await consumer.position(tp) for tp in tps]
            if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                break
            batch = await consumer.getmany(timeout_ms=200)
            for part in batch.values():
                for r in part:
                    headers = {k: (v or b"") for k, v in (r.headers or [])}
                    records.append(WireMessage(r.key, r.value or b"", headers))
        return records
    finally:
        await consumer.stop()
