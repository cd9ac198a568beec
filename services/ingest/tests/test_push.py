"""Pushed notifications (signed CloudEvents) on ingest's HTTP server at 127.0.0.1: one path with
the poller (announced once), the signature refusing forgeries, the policies of a polled item.

The in-process bus, sqlite and a static catalogue of real items; the same against the stack's
STAC API and Kafka, and PostgreSQL NOTIFY, is in test_push_stack.py.
"""

from __future__ import annotations

import asyncio
import copy
import json
import sqlite3
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

from eostream.ingest.api import PUSH_PATH, RETRY_AFTER_SECONDS, create_app
from eostream.ingest.arrivals import Arrivals
from eostream.ingest.service import build_ingest, from_settings, running
from eostream.ingest.settings import IngestSettings, PushSettings, StacApiSource, StaticSource
from eostream.shared import deadletters as dl
from eostream.shared import deadletters_bus as dlb
from eostream.shared import topics
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.errors import BusUnavailableError
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
        # signature headers (checked before the body; the signature itself after it)
        stamped = {"content-type": "application/json", **stamp}
        big = await client.post(PUSH_PATH, content=huge, headers=stamped)
        assert (big.status_code, big.json()["code"]) == (413, "too_large")
        assert body_read.read == 0, "the body was read before its declared length was checked"
        # ...and cut off while streaming when it declares no length (chunked)
        body_read.read = 0
        streamed = StreamedBody(16 * limit, chunk=1 << 16)
        cut = await client.post(PUSH_PATH, content=streamed, headers=stamped)
        assert (cut.status_code, cut.json()["code"]) == (413, "too_large")
        assert limit < body_read.read < 2 * limit, f"read {body_read.read} of {streamed.total}"
        # unsigned: refused before a byte of the body is read, whatever its length
        body_read.read = 0
        unsigned = await client.post(
            PUSH_PATH, content=b"{}" * 1000, headers={"content-type": "application/json"}
        )
        assert (unsigned.status_code, unsigned.json()["code"]) == (401, "unauthorized")
        assert body_read.read == 0, "an unsigned body was read"
        # a Content-Length that is no number is a bad request, not a large one: uvicorn
        # refuses it before the app; the app itself, under another server (in-process here)
        app: Any = create_app(settings_for(tmp_path, tmp_path), readiness=lambda: (True, "t"))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://in-process") as asgi:
            junk = await asgi.post(
                PUSH_PATH, content=b"{}", headers={**stamped, "content-length": "abc"}
            )
        assert (junk.status_code, junk.json()["code"]) == (400, "bad_request"), junk.text
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


async def test_a_captured_push_resent_with_other_headers_names_only_its_signed_item(
    tmp_path: Path, earth_search_v1: list[JsonDict]
) -> None:
    """The signature covers the body, not the ce-* headers of binary mode: a captured request
    re-sent within the tolerance with another ce-subject must not announce another item (it
    did: a signed ``{}`` body took its item from the unsigned subject)."""
    first, other = earth_search_v1[0], earth_search_v1[1]
    async with push_server(tmp_path, [first, other]) as (client, bus, _watcher):
        headers, body = signed(event({"id": first["id"], "collection": first["collection"]}))
        assert (await client.post(PUSH_PATH, content=body, headers=headers)).status_code == 200
        retargeted = {**headers, "ce-subject": other["id"], "ce-id": "another"}
        again = await client.post(PUSH_PATH, content=body, headers=retargeted)
        assert again.json()["item_id"] == first["id"]
        assert again.json()["outcome"] == "duplicate"
        # an empty signed body naming its item by ce-subject alone is refused, whatever
        # content-type says (the CloudEvents library reads all of these in binary mode)
        headers, body = signed(event({}))
        for content_type in (
            "application/json",
            "APPLICATION/CLOUDEVENTS+JSON",
            "application/cloudevents-batch+json",
        ):
            sent = {**headers, "ce-subject": other["id"], "content-type": content_type}
            only_subject = await client.post(PUSH_PATH, content=body, headers=sent)
            assert only_subject.status_code == 422, (content_type, only_subject.text)
            assert "structured mode only" in only_subject.json()["description"]
        # in structured mode the subject is signed with the rest of the event
        ce = CloudEvent(
            {"type": ADDED, "source": "/eoepca/resource-registration", "subject": other["id"]},
            {"collection": other["collection"]},
        )
        headers, body = signed(ce, structured=True)
        taken = await client.post(PUSH_PATH, content=body, headers=headers)
        assert (taken.status_code, taken.json()["item_id"]) == (200, other["id"]), taken.text
        # ...also sent as application/json without ce-* headers: structured to the library too
        plain = {**headers, "content-type": "application/json"}
        again = await client.post(PUSH_PATH, content=body, headers=plain)
        assert (again.status_code, again.json()["item_id"]) == (200, other["id"]), again.text
        events = await drain(bus, SCENES, "check")
    assert sorted(e.item_id for e in events) == sorted([first["id"], other["id"]])


async def test_malformed_signed_cloudevents_are_400s(
    tmp_path: Path, earth_search_v1: list[JsonDict]
) -> None:
    """A sender holding the secret may still send nonsense: a 400 naming it, never a 500."""
    item = earth_search_v1[0]
    structured = {"content-type": "application/cloudevents+json"}
    attributes = f'"id": "1", "source": "/x", "type": "{ADDED}"'
    bodies = {
        "specversion a list": f'{{"specversion": [1], {attributes}, "data": {{"id": "a"}}}}',
        "specversion an object": f'{{"specversion": {{}}, {attributes}, "data": {{}}}}',
        "nested too deeply": f'{{"specversion": "1.0", {attributes}, "data": '
        + "[" * 100_000
        + "]" * 100_000
        + "}",
        "a list": "[1, 2]",
    }
    async with push_server(tmp_path, [item]) as (client, bus, _watcher):
        for case, text in bodies.items():
            body = text.encode()
            stamp = signed_headers(SECRET, uuid.uuid4().hex, int(time.time()), body)
            answer = await client.post(PUSH_PATH, content=body, headers={**structured, **stamp})
            assert answer.status_code == 400, (case, answer.text)
            assert answer.json()["code"] == "bad_request", case
        assert bus.size(SCENES) == 0


async def test_a_push_while_the_broker_is_down_is_a_503_and_is_announced_on_the_retry(
    tmp_path: Path, earth_search_v1: list[JsonDict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing is lost: the sender is told to retry (503, Retry-After), nothing is marked seen,
    and the same notification sent again once the broker is back is announced."""
    item = earth_search_v1[0]
    async with push_server(tmp_path, [item]) as (client, bus, watcher):
        headers, body = signed(event({"id": item["id"], "collection": item["collection"]}))

        async def broker_down(*_args: Any, **_kwargs: Any) -> None:
            raise BusUnavailableError("kafka 127.0.0.1:9092: not reachable")

        with monkeypatch.context() as patch:
            patch.setattr(bus, "publish_many", broker_down)
            patch.setattr(bus, "publish", broker_down)
            down = await client.post(PUSH_PATH, content=body, headers=headers)
        assert (down.status_code, down.json()["code"]) == (503, "unavailable"), down.text
        assert down.headers["retry-after"] == str(RETRY_AFTER_SECONDS)

        async def locked(*_args: Any, **_kwargs: Any) -> set[tuple[str, str]]:
            raise sqlite3.OperationalError("database is locked")

        with monkeypatch.context() as patch:  # the seen-set's database, not the broker
            patch.setattr(watcher._store, "unseen", locked)
            busy = await client.post(PUSH_PATH, content=body, headers=headers)
        assert (busy.status_code, busy.json()["code"]) == (503, "unavailable"), busy.text
        retried = await client.post(PUSH_PATH, content=body, headers=headers)
        assert retried.json()["outcome"] == "announced", retried.text
        events = await drain(bus, SCENES, "check")
    assert [e.item_id for e in events] == [item["id"]]


async def test_a_source_urls_credentials_reach_neither_readyz_nor_a_push_answer(
    tmp_path: Path,
) -> None:
    """A STAC API behind basic auth in its URL: when it cannot be read, /readyz (no key) and a
    push's 503 say which source and host, never the user and password (both showed them)."""
    url = "http://stacuser:S3cretT0ken@127.0.0.1:9/stac"
    settings = IngestSettings(
        bus="memory",
        sources=(StacApiSource(name="api", url=url, timeout_seconds=2),),
        sqlite_path=tmp_path / "state.sqlite",
        push=PushSettings(enabled=True, secret=SecretStr(SECRET)),
    )
    bus = InMemoryBus(service="ingest")
    async with running(settings, from_settings(settings, bus=bus)) as watcher:
        stop = asyncio.Event()
        polling = asyncio.create_task(watcher.run(stop))
        for _ in range(200):
            ready, why = watcher.readiness()
            if "SourceUnavailable" in why:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await polling
        app: Any = create_app(
            settings, readiness=watcher.readiness, arrivals_now=lambda: Arrivals(watcher)
        )
        server = OpsServer(app, "127.0.0.1", 0)
        await server.start()
        try:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                readyz = await client.get("/readyz")
                headers, body = signed(event({"id": "S2B_X", "collection": "sentinel-2-l2a"}))
                pushed = await client.post(PUSH_PATH, content=body, headers=headers)
        finally:
            await server.stop()
    assert not ready and "127.0.0.1:9" in why
    assert readyz.status_code == 503 and "127.0.0.1:9" in readyz.text
    assert (pushed.status_code, pushed.json()["code"]) == (503, "unavailable")
    for text in (why, readyz.text, pushed.text):
        assert "S3cretT0ken" not in text and "stacuser" not in text, text
