"""Subscriptions end to end: a real webhook receiver (http.server on 127.0.0.1), real scenes
announced on the bus and classified by the service's consumer, the signed CloudEvent checked
with the secret the API gave once; retries, dead letters, a restart mid-retry, a Kafka target."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from prometheus_client import REGISTRY

from eostream.inference.api.app import create_app
from eostream.inference.embedded import component
from eostream.inference.service import InferenceService
from eostream.inference.settings import InferenceSettings, SubscriptionsSettings
from eostream.inference.subscriptions import webhooks
from eostream.inference.wiring import build_service
from eostream.shared import topics
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.embedded import EmbeddedContext
from eostream.shared.events import ModelPromoted
from eostream.shared.modelcard import EUROSAT_CLASSES
from eostream.shared.storage.local import LocalObjectStore

from .conftest import AUTH
from .test_end_to_end import run_until, scene_event

#: around the Boadella reservoir (Catalonia); the 29RKH tile (Western Sahara) is far from it
BOADELLA_AREA = {
    "type": "Polygon",
    "coordinates": [[[2.0, 41.8], [3.5, 41.8], [3.5, 42.8], [2.0, 42.8], [2.0, 41.8]]],
}
ORIGIN = "eostream-inference"


@dataclass
class Received:
    method: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A webhook: answers the CloudEvents handshake (if ``agree``) and POSTs with ``status``."""

    status: int = 200
    agree: bool = True
    posts: list[Received] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def do_OPTIONS(self) -> None:
                self.send_response(200)
                origin = self.headers.get("WebHook-Request-Origin", "")
                if receiver.agree and origin:
                    self.send_header("WebHook-Allowed-Origin", origin)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.posts.append(Received("POST", headers, body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.start()
    yield r
    r.stop()


@pytest.fixture
def sub_settings(settings: InferenceSettings) -> InferenceSettings:
    """Webhooks on 127.0.0.1 over http allowed (the default allows https to public hosts)."""
    return settings.model_copy(
        update={
            "subscriptions": SubscriptionsSettings(
                allowed_schemes=("http", "https"),
                allowed_networks=("127.0.0.1/32",),
                backoff_seconds=0.05,
                max_backoff_seconds=0.2,
                max_retries=2,
                timeout_seconds=5,
            )
        }
    )


@pytest.fixture
async def sub_service(
    sub_settings: InferenceSettings, bus: InMemoryBus
) -> AsyncIterator[InferenceService]:
    svc = await asyncio.to_thread(build_service, sub_settings, bus=bus)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


@pytest.fixture
async def api(
    sub_settings: InferenceSettings, sub_service: InferenceService
) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(sub_settings, sub_service))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


def verify(secret: str, received: Received) -> None:
    """The Standard Webhooks check a subscriber makes, written out here (not the service's)."""
    msg_id, stamp = received.headers["webhook-id"], received.headers["webhook-timestamp"]
    key = base64.b64decode(secret.removeprefix("whsec_"))
    content = f"{msg_id}.{stamp}.".encode() + received.body
    expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
    given = [s.split(",", 1)[1] for s in received.headers["webhook-signature"].split()]
    assert expected in given, "the signature does not verify with the subscription's secret"


def counter(target: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "eostream_inference_notifications_total", {"target": target, "outcome": outcome}
    )
    return value or 0.0


async def until(check: Callable[[], bool], timeout: float = 30, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def subscribe(api: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    r = await api.post("/subscriptions", json={"geometry": BOADELLA_AREA, **body}, headers=AUTH)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


async def deliveries(api: httpx.AsyncClient, sub_id: str) -> list[dict[str, Any]]:
    r = await api.get(f"/subscriptions/{sub_id}/deliveries", headers=AUTH)
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()["deliveries"]
    return found


async def settled(
    api: httpx.AsyncClient, sub_id: str, status: str, count: int = 1
) -> list[dict[str, Any]]:
    """The subscription's deliveries once at least ``count`` are there, all ``status`` (or as
    they are after 20 s)."""
    rows: list[dict[str, Any]] = []
    for _ in range(400):
        rows = await deliveries(api, sub_id)
        if len(rows) >= count and all(d["status"] == status for d in rows):
            break
        await asyncio.sleep(0.05)
    return rows


async def announce_both(
    bus: InMemoryBus,
    make_model: Callable[..., ModelPromoted],
    boadella_item: Callable[[str], Path],
    rkh_item: Path,
    *,
    promote: bool = True,
) -> None:
    """A model (unless deployed already), then two scenes through the service's consumer:
    Boadella, inside the area, and the 29RKH tile, outside it; returns once both results are
    written and announced."""
    if promote:
        await bus.publish(topics.MODELS_PROMOTED, make_model("1"))
    await bus.publish(
        topics.SCENES_DISCOVERED, scene_event(boadella_item("2020-06-21"), "boadella-2020-06-21")
    )
    await bus.publish(topics.SCENES_DISCOVERED, scene_event(rkh_item, "S2A_29RKH_20200219_0_L2A"))
    await run_until(bus, topics.SCENES_CLASSIFIED, 2)


async def test_a_scene_in_the_area_is_notified_once_signed_and_one_outside_is_not(
    api: httpx.AsyncClient,
    bus: InMemoryBus,
    receiver: Receiver,
    make_model: Callable[..., ModelPromoted],
    boadella_item: Callable[[str], Path],
    rkh_item: Path,
) -> None:
    sent_before = counter("webhook", "sent")
    created = await subscribe(api, webhook_url=receiver.url)
    assert created["secret"].startswith("whsec_")
    listed = (await api.get(f"/subscriptions/{created['id']}", headers=AUTH)).json()
    assert "secret" not in listed and listed["webhook_url"] == receiver.url  # shown once only

    await announce_both(bus, make_model, boadella_item, rkh_item)
    await until(lambda: len(receiver.posts) >= 1, what="the notification")
    # both results are written: wait until nothing is left to send, then count what arrived
    rows = await settled(api, created["id"], "sent")
    assert len(rows) == 1 and rows[0]["attempts"] == 1, rows
    assert len(receiver.posts) == 1, [p.headers for p in receiver.posts]

    post = receiver.posts[0]
    verify(created["secret"], post)
    # the CloudEvents HTTP binary mode: attributes in ce-* headers, the data as the body
    assert post.headers["ce-specversion"] == "1.0"
    assert post.headers["ce-type"] == "io.eostream.subscription.result"
    assert post.headers["ce-id"] == post.headers["webhook-id"] == rows[0]["id"]
    assert post.headers["content-type"].startswith("application/json")
    data = json.loads(post.body)
    assert data["scene_id"] == "boadella-2020-06-21"
    assert data["subscription_id"] == created["id"]
    assert data["result_id"] == rows[0]["result_id"] == post.headers["ce-subject"]
    assert data["cog_href"].endswith("classification.tif")
    assert set(data["class_shares"]) == set(EUROSAT_CLASSES)
    assert counter("webhook", "sent") == sent_before + 1

    # a tampered body does not verify
    with pytest.raises(AssertionError):
        verify(created["secret"], Received("POST", post.headers, post.body + b" "))


async def test_a_failing_webhook_is_retried_then_dead_lettered_with_the_reason(
    api: httpx.AsyncClient,
    sub_service: InferenceService,
    bus: InMemoryBus,
    receiver: Receiver,
    make_model: Callable[..., ModelPromoted],
    boadella_item: Callable[[str], Path],
    rkh_item: Path,
) -> None:
    failed_before = counter("webhook", "failed")
    dead_before = counter("webhook", "dead_lettered")
    answering = await subscribe(api, webhook_url=receiver.url)  # answers 500
    refusing_hook = Receiver()
    refusing_hook.start()
    refusing = await subscribe(api, webhook_url=refusing_hook.url)
    refusing_hook.stop()  # now it refuses connections
    receiver.status = 500

    await announce_both(bus, make_model, boadella_item, rkh_item)
    tries = sub_service.settings.subscriptions.max_retries + 1
    for sub in (answering, refusing):
        rows = await settled(api, sub["id"], "dead")
        assert [(d["status"], d["attempts"]) for d in rows] == [("dead", tries)], rows
    assert len(receiver.posts) == tries  # first attempt and the retries, each signed
    for post in receiver.posts:
        verify(answering["secret"], post)
    assert len({p.headers["webhook-id"] for p in receiver.posts}) == 1  # one message, retried

    letters = [
        d
        for d in await bus.read_dead_letters(limit=100)
        if d.error_type == "NotificationUndeliverable"
    ]
    by_origin = {d.original_topic: d for d in letters}
    assert set(by_origin) == {f"webhook:{answering['id']}", f"webhook:{refusing['id']}"}
    http_500 = by_origin[f"webhook:{answering['id']}"]
    assert http_500.service == "inference" and http_500.attempts == tries
    assert f"after {tries} attempt(s)" in http_500.reason and "HTTP 500" in http_500.reason
    assert "ConnectError" in by_origin[f"webhook:{refusing['id']}"].reason
    # the letter holds the notification itself, a CloudEvent in the Kafka binary mode
    event = ce_kafka.from_binary(
        ce_kafka.KafkaMessage(
            headers={k: v.encode() for k, v in http_500.original_headers.items()},
            key=(http_500.original_key or "").encode(),
            value=http_500.original_value,
        ),
        JSONFormat(),
        CloudEvent,
    )
    letter_data = event.get_data()
    assert isinstance(letter_data, dict) and letter_data["scene_id"] == "boadella-2020-06-21"
    assert counter("webhook", "failed") == failed_before + 2 * tries
    assert counter("webhook", "dead_lettered") == dead_before + 2


async def test_an_unforeseen_error_of_a_delivery_is_retried_then_dead_lettered(
    api: httpx.AsyncClient,
    sub_service: InferenceService,
    bus: InMemoryBus,
    receiver: Receiver,
    make_model: Callable[..., ModelPromoted],
    boadella_item: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An error that is no DeliveryFailed (here from the webhook call itself) counts as a
    failed attempt: retried with backoff, then dead-lettered with it (it was taken for the
    worker's own failure: the row came back after its lease, forever, never dead-lettered)."""

    async def broken_post(*_args: Any, **_kw: Any) -> None:
        raise UnicodeError("label empty or too long")

    monkeypatch.setattr(webhooks, "post", broken_post)  # what the delivery worker calls
    await asyncio.to_thread(sub_service.deployment.deploy, make_model("1"))
    created = await subscribe(api, webhook_url=receiver.url)
    await asyncio.to_thread(sub_service.pipeline.classify_href, str(boadella_item("2020-06-21")))
    tries = sub_service.settings.subscriptions.max_retries + 1
    rows = await settled(api, created["id"], "dead")
    assert [(d["status"], d["attempts"]) for d in rows] == [("dead", tries)], rows
    [letter] = [
        d
        for d in await bus.read_dead_letters(limit=100)
        if d.original_topic == f"webhook:{created['id']}"
    ]
    assert letter.reason == (
        f"undeliverable after {tries} attempt(s): UnicodeError: label empty or too long"
    )


async def test_a_kafka_target_gets_the_cloudevent_on_its_topic(
    api: httpx.AsyncClient,
    sub_service: InferenceService,
    bus: InMemoryBus,
    make_model: Callable[..., ModelPromoted],
    boadella_item: Callable[[str], Path],
    rkh_item: Path,
) -> None:
    topic = "eostream.notifications.analyst-1"
    # classes are checked against the live model's: deploy one first
    await asyncio.to_thread(sub_service.deployment.deploy, make_model("1"))
    created = await subscribe(api, kafka_topic=topic, classes=["Forest"], min_share=0.0)
    assert created["secret"] is None
    await announce_both(bus, make_model, boadella_item, rkh_item, promote=False)
    await until(lambda: bus.size(topic) >= 1, what="the Kafka notification")
    await asyncio.sleep(0.5)  # a second one (the scene outside the area) would be there now
    records = bus.records(topic)
    assert len(records) == 1
    event = ce_kafka.from_binary(
        ce_kafka.KafkaMessage(
            headers=records[0].headers, key=records[0].key, value=records[0].value
        ),
        JSONFormat(),
        CloudEvent,
    )
    assert event.get_type() == "io.eostream.subscription.result"
    data = event.get_data()
    assert isinstance(data, dict)
    assert data["scene_id"] == "boadella-2020-06-21" and data["matched_classes"] == ["Forest"]
    assert records[0].key == data["result_id"].encode()


async def test_a_result_written_just_before_a_crash_is_notified_when_its_scene_comes_again(
    api: httpx.AsyncClient,
    sub_service: InferenceService,
    receiver: Receiver,
    make_model: Callable[..., ModelPromoted],
    boadella_item: Callable[[str], Path],
) -> None:
    """The result is in the index but the process died before its hooks ran: Kafka delivers
    the scene again (its offset was never committed), the pipeline finds it classified, and
    the subscriber hears of it then; once, however often the scene comes again, and anew for a
    recomputed result."""
    pipeline, scene = sub_service.pipeline, str(boadella_item("2020-06-21"))
    await asyncio.to_thread(sub_service.deployment.deploy, make_model("1"))
    created = await subscribe(api, webhook_url=receiver.url)
    hooks = pipeline.on_result[:]
    pipeline.on_result.clear()  # the crash: the result is written, its hooks never run
    first = await asyncio.to_thread(pipeline.classify_href, scene)
    pipeline.on_result[:] = hooks  # the restarted service
    assert await deliveries(api, created["id"]) == []

    again = await asyncio.to_thread(pipeline.classify_href, scene)  # the redelivery
    assert again.skipped and again.record.id == first.record.id
    rows = await settled(api, created["id"], "sent")
    assert [(d["result_id"], d["status"]) for d in rows] == [(first.record.id, "sent")]
    for _ in range(2):  # more duplicates: matched again, nothing new
        assert (await asyncio.to_thread(pipeline.classify_href, scene)).skipped
    await asyncio.sleep(0.3)
    assert len(await deliveries(api, created["id"])) == 1 and len(receiver.posts) == 1

    redone = await asyncio.to_thread(pipeline.classify_href, scene, replace=True)
    assert not redone.skipped and redone.record.id == first.record.id
    rows = await settled(api, created["id"], "sent", count=2)
    assert len(rows) == 2 and len({d["id"] for d in rows}) == 2, rows
    await until(lambda: len(receiver.posts) == 2, what="the recomputed result's notification")
    assert len({p.headers["webhook-id"] for p in receiver.posts}) == 2


async def test_subscriptions_and_a_delivery_mid_retry_survive_a_restart(
    sub_settings: InferenceSettings,
    receiver: Receiver,
    make_model: Callable[..., ModelPromoted],
    boadella_item: Callable[[str], Path],
) -> None:
    settings = sub_settings.model_copy(
        update={
            "subscriptions": sub_settings.subscriptions.model_copy(
                update={"max_retries": 10, "backoff_seconds": 1.0, "max_backoff_seconds": 1.0}
            )
        }
    )
    first = await asyncio.to_thread(build_service, settings, bus=InMemoryBus(service="inference"))
    await first.start()
    try:
        transport = httpx.ASGITransport(app=create_app(settings, first))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as api:
            created = await subscribe(api, webhook_url=receiver.url)
        receiver.status = 503
        await asyncio.to_thread(first.deployment.deploy, make_model("1"))
        await asyncio.to_thread(first.pipeline.classify_href, str(boadella_item("2020-06-21")))
        await until(lambda: len(receiver.posts) >= 1, what="the first attempt")
    finally:
        await first.stop()  # mid-retry: the delivery waits in the results index
    attempts_before = len(receiver.posts)
    receiver.status = 200

    second = await asyncio.to_thread(build_service, settings, bus=InMemoryBus(service="inference"))
    await second.start()
    try:
        transport = httpx.ASGITransport(app=create_app(settings, second))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as api:
            listed = (await api.get("/subscriptions", headers=AUTH)).json()
            assert [s["id"] for s in listed["subscriptions"]] == [created["id"]]
            await until(lambda: len(receiver.posts) > attempts_before, what="the retry")
            for _ in range(100):
                rows = await deliveries(api, created["id"])
                if rows[0]["status"] == "sent":
                    break
                await asyncio.sleep(0.05)
            assert rows[0]["status"] == "sent" and rows[0]["attempts"] == attempts_before + 1
    finally:
        await second.stop()
    ids = {p.headers["webhook-id"] for p in receiver.posts}
    assert len(ids) == 1  # the same message, retried across the restart
    verify(created["secret"], receiver.posts[-1])


async def test_the_embedded_component_notifies_over_real_http(
    tmp_path: Path,
    receiver: Receiver,
    make_model: Callable[..., ModelPromoted],
    boadella_item: Callable[[str], Path],
    rkh_item: Path,
) -> None:
    """`eostream up`'s inference component: subscribe on its REST API over HTTP, announce the
    two scenes on the embedded bus; one signed notification arrives."""
    bus = InMemoryBus(service="embedded")
    options = {
        "api_key": AUTH["X-API-Key"],
        "intra_op_threads": 1,
        "subscriptions": {
            "allowed_schemes": ["http"],
            "allowed_networks": ["127.0.0.1/32"],
            "backoff_seconds": 0.05,
        },
        "model_roots": [str(tmp_path)],  # make_model's files, outside the store
    }
    inference = component(
        EmbeddedContext(
            bus=bus,
            store=LocalObjectStore(tmp_path / "objects", "eostream"),
            home=tmp_path / "home",
            mlflow_tracking_uri="sqlite:///unused.db",
            options={"inference": options},
        )
    )
    await inference.start()
    try:
        async with httpx.AsyncClient(base_url=inference.urls["REST API"], timeout=30) as api:
            created = await subscribe(api, webhook_url=receiver.url)
            await announce_both(bus, make_model, boadella_item, rkh_item)
            await until(lambda: len(receiver.posts) >= 1, what="the notification")
            for _ in range(100):
                rows = await deliveries(api, created["id"])
                if rows and all(r["status"] == "sent" for r in rows):
                    break
                await asyncio.sleep(0.05)
    finally:
        await inference.stop()
    assert [r["status"] for r in rows] == ["sent"] and len(receiver.posts) == 1
    verify(created["secret"], receiver.posts[0])
    assert json.loads(receiver.posts[0].body)["scene_id"] == "boadella-2020-06-21"
