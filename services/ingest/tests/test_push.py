"""Pushed notifications (signed CloudEvents) on ingest's HTTP server at 127.0.0.1: one path with
the poller (announced once), the signature refusing forgeries, the policies of a polled item.

The in-process bus, sqlite and a static catalogue of real items; the same against the stack's
STAC API and Kafka, and PostgreSQL NOTIFY, is in test_push_stack.py.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from cloudevents.v1.conversion import to_binary, to_structured
from cloudevents.v1.http import CloudEvent
from pydantic import SecretStr, ValidationError

from eostream.ingest.api import PUSH_PATH, create_app
from eostream.ingest.arrivals import Arrivals
from eostream.ingest.service import build_ingest, from_settings, running
from eostream.ingest.settings import IngestSettings, PushSettings, StaticSource
from eostream.shared import deadletters as dl
from eostream.shared import deadletters_bus as dlb
from eostream.shared import topics
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.ops import OpsServer
from eostream.shared.testing import BodyRead, StreamedBody
from eostream.shared.webhooks import signed_headers

from .conftest import JsonDict
from .helpers import drain, write_catalogue

SECRET = "whsec_" + "c2VjcmV0LW9mLXRoZS1wdXNoLXRlc3Rz"  # base64 of "secret-of-the-push-tests"
ADDED = "org.eoepca.resource-registration.resource.added"
SCENES = topics.SCENES_DISCOVERED


def settings_for(tmp_path: Path, catalog: Path) -> IngestSettings:
    return IngestSettings(
        bus="memory",
        sources=(StaticSource(name="cat", href=str(catalog)),),
        sqlite_path=tmp_path / "state.sqlite",
        push=PushSettings(enabled=True, secret=SecretStr(SECRET)),
    )


def event(data: Any, kind: str = ADDED) -> CloudEvent:
    return CloudEvent({"type": kind, "source": "/eoepca/resource-registration"}, data)


def signed(
    ce: CloudEvent, *, secret: str = SECRET, at: float | None = None, structured: bool = False
) -> tuple[dict[str, str], bytes]:
    headers, body = to_structured(ce) if structured else to_binary(ce)
    when = int(time.time() if at is None else at)
    headers = {**headers, **signed_headers(secret, uuid.uuid4().hex, when, body)}
    if not structured:
        headers["content-type"] = "application/json"
    return headers, body


@asynccontextmanager
async def push_server(
    tmp_path: Path, items: list[JsonDict], body_read: BodyRead | None = None
) -> AsyncIterator[tuple[httpx.AsyncClient, InMemoryBus, Any]]:
    """The ingest app (ops and push routes) on 127.0.0.1, its watcher on a catalogue of
    ``items``; yields a client on it, the bus and the watcher. ``body_read``: counts the body
    bytes the app reads."""
    catalog = write_catalogue(tmp_path / "cat", items)
    settings = settings_for(tmp_path, catalog)
    bus = InMemoryBus(service="ingest")
    async with running(settings, from_settings(settings, bus=bus)) as watcher:
        arrivals = Arrivals(watcher)
        app: Any = create_app(
            settings, readiness=lambda: (True, "test"), arrivals_now=lambda: arrivals
        )
        if body_read is not None:
            body_read.app, app = app, body_read
        server = OpsServer(app, "127.0.0.1", 0)
        await server.start()
        try:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                yield client, bus, watcher
        finally:
            await server.stop()


async def test_a_pushed_then_polled_scene_is_announced_once(
    tmp_path: Path, earth_search_v1: list[JsonDict]
) -> None:
    pushed, polled_first = earth_search_v1[0], earth_search_v1[1]
    async with push_server(tmp_path, [pushed, polled_first]) as (client, bus, watcher):
        # binary mode, the data a reference to the item
        headers, body = signed(event({"id": pushed["id"], "collection": pushed["collection"]}))
        answer = await client.post(PUSH_PATH, content=body, headers=headers)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outcome"] == "announced"
        assert answer.json()["source"] == "cat"
        # the same notification delivered again (a sender's retry): nothing new
        again = await client.post(PUSH_PATH, content=body, headers=headers)
        assert again.json()["outcome"] == "duplicate"
        # the poll finds both items: announces only the one not pushed
        report = await watcher.poll(watcher.sources[0])
        assert (report.published, report.duplicates) == (1, 1)
        # polled first, then pushed (structured mode, the data the whole item): a duplicate
        headers, body = signed(event(polled_first), structured=True)
        late = await client.post(PUSH_PATH, content=body, headers=headers)
        assert late.status_code == 200, late.text
        assert late.json()["outcome"] == "duplicate"
        events = await drain(bus, SCENES, "check")
    assert sorted(e.item_id for e in events) == sorted([pushed["id"], polled_first["id"]])
    by_id = {e.item_id: e for e in events}
    assert by_id[pushed["id"]].source_name == "cat"


@pytest.mark.parametrize("forgery", ["unsigned", "wrong-secret", "altered-body", "old-timestamp"])
async def test_a_forged_or_unsigned_push_is_refused_and_announces_nothing(
    tmp_path: Path, earth_search_v1: list[JsonDict], forgery: str
) -> None:
    item = earth_search_v1[0]
    async with push_server(tmp_path, [item]) as (client, bus, _watcher):
        headers, body = signed(event({"id": item["id"], "collection": item["collection"]}))
        if forgery == "unsigned":
            headers = {k: v for k, v in headers.items() if not k.startswith("webhook-")}
        elif forgery == "wrong-secret":
            headers, body = signed(
                event({"id": item["id"], "collection": item["collection"]}),
                secret="whsec_" + "bm90LXRoZS1zZWNyZXQtYXQtYWxs",
            )
        elif forgery == "altered-body":
            body = body.replace(item["id"].encode(), (item["id"] + "-x").encode())
        elif forgery == "old-timestamp":  # signed right, but 10 minutes ago: a replay
            headers, body = signed(
                event({"id": item["id"], "collection": item["collection"]}),
                at=time.time() - 600,
            )
        answer = await client.post(PUSH_PATH, content=body, headers=headers)
        assert answer.status_code == 401, answer.text
        assert set(answer.json()) == {"code", "description"}
        expected = {
            "unsigned": "unauthorized",
            "wrong-secret": "bad_signature",
            "altered-body": "bad_signature",
            "old-timestamp": "stale_timestamp",
        }[forgery]
        assert answer.json()["code"] == expected
        assert bus.size(SCENES) == 0


async def test_pushed_items_pass_the_policies_of_polled_ones(
    tmp_path: Path, earth_search_v1: list[JsonDict]
) -> None:
    good = earth_search_v1[0]
    no_assets = copy.deepcopy(earth_search_v1[1])
    no_assets["assets"] = {}
    body_read = BodyRead()
    async with push_server(tmp_path, [good, no_assets], body_read) as (client, bus, _watcher):

        async def post(data: Any, kind: str = ADDED) -> httpx.Response:
            headers, body = signed(event(data, kind))
            return await client.post(PUSH_PATH, content=body, headers=headers)

        # an item that cannot be a scene: refused, dead-lettered with the reason, as if polled
        rejected = await post({"id": no_assets["id"], "collection": no_assets["collection"]})
        assert rejected.status_code == 422, rejected.text
        assert rejected.json()["code"] == "item_rejected"
        assert "missing assets" in rejected.json()["description"]
        (letter,) = dl.select(await dlb.read_letters(bus), dl.LetterFilter(topic="stac:cat"))
        assert letter.letter.original_key == no_assets["id"]
        assert "missing assets" in letter.letter.reason
        # an item the source does not have: not read from anywhere else
        missing = await post({"id": "S2B_NOT_THERE", "collection": good["collection"]})
        assert (missing.status_code, missing.json()["code"]) == (404, "item_not_found")
        # not a taken event type, no item named, not a CloudEvent at all
        other = await post({"id": good["id"]}, kind="com.example.something")
        assert (other.status_code, other.json()["code"]) == (422, "unsupported_event_type")
        unnamed = await post({"collection": good["collection"]})
        assert (unnamed.status_code, unnamed.json()["code"]) == (422, "invalid_notification")
        raw = json.dumps({"id": good["id"]}).encode()
        stamp = signed_headers(SECRET, "x", int(time.time()), raw)
        plain = await client.post(
            PUSH_PATH, content=raw, headers={"content-type": "application/json", **stamp}
        )
        assert (plain.status_code, plain.json()["code"]) == (400, "bad_request")
        # too large: refused before it is read when its length says so...
        limit = PushSettings().max_body_bytes
        body_read.read = 0
        huge = b"x" * (2 * limit)
        big = await client.post(
            PUSH_PATH, content=huge, headers={"content-type": "application/json"}
        )
        assert (big.status_code, big.json()["code"]) == (413, "too_large")
        assert body_read.read == 0, "the body was read before its declared length was checked"
        # ...and cut off while streaming when it declares no length (chunked)
        body_read.read = 0
        streamed = StreamedBody(16 * limit, chunk=1 << 16)
        cut = await client.post(
            PUSH_PATH, content=streamed, headers={"content-type": "application/json"}
        )
        assert (cut.status_code, cut.json()["code"]) == (413, "too_large")
        assert limit < body_read.read < 2 * limit, f"read {body_read.read} of {streamed.total}"
        assert bus.size(SCENES) == 0
        spec = (await client.get("/openapi.json")).json()
        route = spec["paths"][PUSH_PATH]["post"]
        assert {"200", "401", "413", "422"} <= set(route["responses"])
        assert "application/cloudevents+json" in route["requestBody"]["content"]


async def test_a_standby_replica_refuses_pushes_with_503(
    tmp_path: Path, earth_search_v1: list[JsonDict]
) -> None:
    item = earth_search_v1[0]
    catalog = write_catalogue(tmp_path / "cat", [item])
    settings = settings_for(tmp_path, catalog)
    bus = InMemoryBus(service="ingest")
    adapters = from_settings(settings, bus=bus)
    async with running(settings, adapters):
        runner = build_ingest(
            settings, bus=bus, state=adapters.state, lock=adapters.lock, sources=adapters.sources
        )
        # built, not leading: it must not write the seen-set the leader writes
        app = create_app(settings, readiness=runner.readiness, arrivals_now=runner.arrivals_now)
        server = OpsServer(app, "127.0.0.1", 0)
        await server.start()
        try:
            headers, body = signed(event({"id": item["id"], "collection": item["collection"]}))
            async with httpx.AsyncClient(base_url=server.url) as client:
                answer = await client.post(PUSH_PATH, content=body, headers=headers)
        finally:
            await server.stop()
    assert (answer.status_code, answer.json()["code"]) == (503, "standby")
    assert bus.size(SCENES) == 0


def test_push_needs_a_secret_and_a_source_it_names_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="INGEST_PUSH__SECRET"):
        PushSettings(enabled=True)
    with pytest.raises(ValidationError, match="INGEST_PUSH__SOURCE"):
        IngestSettings(
            bus="memory",
            sqlite_path=tmp_path / "s.sqlite",
            push=PushSettings(enabled=True, secret=SecretStr(SECRET), source="nope"),
        )


async def test_the_ingest_api_answers_only_documented_statuses_under_fuzzing(
    tmp_path: Path, earth_search_v1: list[JsonDict], fuzz: Any
) -> None:
    """schemathesis over the ops and push routes: no 5xx, every status and body documented
    (unsigned fuzz cases get the documented 401 body)."""
    async with push_server(tmp_path, earth_search_v1[:1]) as (client, bus, _watcher):
        url = str(client.base_url).rstrip("/")
        failures, seen = await asyncio.to_thread(fuzz, url, {}, 25, negative=True)
        assert not failures, "\n".join(failures[:10])
        assert ("POST", PUSH_PATH, 401) in seen
        assert bus.size(SCENES) == 0
