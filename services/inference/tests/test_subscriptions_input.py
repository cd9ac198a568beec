# ruff: noqa: F811 (the fixtures imported from test_subscriptions are used by name)
"""Subscriptions: bad requests answer 400 (or 401/404) with a message and change nothing; the
pure parts (matching, request checks, signatures, backoff) on their own."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from shapely.geometry import box, shape

from eostream.inference.errors import BadInputError
from eostream.inference.service import InferenceService
from eostream.inference.settings import SubscriptionsSettings
from eostream.inference.subscriptions import spec
from eostream.inference.subscriptions.delivery import backoff
from eostream.inference.subscriptions.matching import footprint, matched_classes
from eostream.inference.subscriptions.store import Subscription, now
from eostream.shared.events import ModelPromoted
from eostream.shared.webhooks import new_secret

from .conftest import AUTH
from .test_subscriptions import (  # noqa: F401
    BOADELLA_AREA,
    Receiver,
    api,
    receiver,
    sub_service,
    sub_settings,
    subscribe,
)

BAD_GEOMETRIES: list[tuple[Any, str]] = [
    ("POLYGON((0 0, 1 0, 1 1, 0 0))", "geometry"),  # WKT, not GeoJSON
    ({"type": "Circle", "coordinates": [2.8, 42.3]}, "geometry type"),
    ({"type": "Polygon", "coordinates": "2.8 42.3"}, "coordinates"),
    ({"type": "Polygon"}, "coordinates"),
    ({"type": "Point", "coordinates": [2.8, 95.0]}, "latitude"),
    ({"type": "Point", "coordinates": [2.8, "42.3"]}, "position"),
    ({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [0, 0]]]}, "not valid"),
    (  # a bow tie: self-intersecting
        {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]},
        "Self-intersection",
    ),
    ({"type": "Polygon", "coordinates": [[[[[[[[[[[[[[[[[[[[0]]]]]]]]]]]]]]]]]]]]}, "position"),
]


def closed_port() -> int:
    """A port on 127.0.0.1 nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def count(api: httpx.AsyncClient) -> int:
    r = await api.get("/subscriptions", headers=AUTH)
    assert r.status_code == 200
    total: int = r.json()["numberMatched"]
    return total


async def refused(api: httpx.AsyncClient, body: dict[str, Any], *words: str) -> None:
    r = await api.post("/subscriptions", json=body, headers=AUTH)
    assert r.status_code == 400, (body, r.status_code, r.text)
    error = r.json()
    assert set(error) == {"code", "description"}
    for word in words:
        assert word.lower() in error["description"].lower(), (word, error)


async def test_bad_subscriptions_answer_400_and_change_nothing(
    api: httpx.AsyncClient,
    sub_service: InferenceService,
    receiver: Receiver,
    make_model: Callable[..., ModelPromoted],
) -> None:
    await asyncio.to_thread(sub_service.deployment.deploy, make_model("1"))
    kept = await subscribe(api, webhook_url=receiver.url, classes=["Forest"], min_share=0.3)
    hook = {"webhook_url": receiver.url}
    for geometry, words in BAD_GEOMETRIES:
        await refused(api, {"geometry": geometry, **hook}, words)
    area = {"geometry": BOADELLA_AREA}
    await refused(api, {**area, **hook, "classes": ["Jungle"]}, "unknown class", "Jungle")
    await refused(api, {**area, **hook, "classes": ["Forest"], "min_share": 1.5}, "[0, 1]")
    await refused(api, {**area, **hook, "classes": ["Forest"], "min_share": -0.1}, "[0, 1]")
    await refused(api, {**area, **hook, "min_share": 0.2}, "needs classes")
    await refused(api, area, "exactly one target")
    await refused(
        api, {**area, **hook, "kafka_topic": "eostream.notifications.x"}, "exactly one target"
    )
    await refused(api, {**area, "kafka_topic": "eostream.scenes.discovered"}, "must start with")
    await refused(api, {**area, "kafka_topic": "eostream.notifications.a b"}, "kafka_topic")
    await refused(api, {**area, **hook, "colour": "red"}, "colour")
    # unreachable: nothing listens there
    port = closed_port()
    await refused(
        api, {**area, "webhook_url": f"http://127.0.0.1:{port}/hook"}, "could not be reached"
    )
    # reachable, but it did not agree to receive (the CloudEvents webhook handshake)
    receiver.agree = False
    await refused(api, {**area, **hook}, "did not accept", "WebHook-Allowed-Origin")
    receiver.agree = True
    # forbidden by the outbound policy (SSRF): schemes, credentials, hosts outside the networks
    for url in (
        "ftp://127.0.0.1/hook",
        "file:///etc/passwd",
        "gopher://127.0.0.1:70/",
        f"http://user:secret@127.0.0.1:{port}/hook",
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/hook",
        "http:///no-host",
    ):
        await refused(api, {**area, "webhook_url": url}, "not allowed")

    # nothing else changed: the one subscription is still there, and still receives
    assert await count(api) == 1
    r = await api.get(f"/subscriptions/{kept['id']}", headers=AUTH)
    assert r.status_code == 200 and r.json()["classes"] == ["Forest"]
    assert r.json()["min_share"] == 0.3


async def test_the_default_policy_refuses_plain_http_and_private_addresses(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    """The default settings: https only, public addresses only."""
    area = {"geometry": BOADELLA_AREA}
    for url in (receiver.url, receiver.url.replace("http://", "https://"), "https://localhost/"):
        await refused(client, {**area, "webhook_url": url}, "not allowed")
    assert receiver.posts == []  # and nothing was sent there


async def test_subscriptions_need_the_key_and_unknown_ids_answer_404(
    api: httpx.AsyncClient, receiver: Receiver
) -> None:
    created = await subscribe(api, webhook_url=receiver.url)
    sid = created["id"]
    body = {"geometry": BOADELLA_AREA, "webhook_url": receiver.url}
    for method, path in (
        ("POST", "/subscriptions"),
        ("GET", "/subscriptions"),
        ("GET", f"/subscriptions/{sid}"),
        ("GET", f"/subscriptions/{sid}/deliveries"),
        ("DELETE", f"/subscriptions/{sid}"),
    ):
        for headers in ({}, {"X-API-Key": "wrong"}):
            r = await api.request(method, path, json=body, headers=headers)
            assert r.status_code == 401, (method, path, r.text)
    assert await count(api) == 1
    for method in ("GET", "DELETE"):
        r = await api.request(method, "/subscriptions/no-such-id", headers=AUTH)
        assert r.status_code == 404 and r.json()["code"] == "not_found"
    r = await api.delete(f"/subscriptions/{sid}", headers=AUTH)
    assert r.status_code == 204
    assert (await api.get(f"/subscriptions/{sid}", headers=AUTH)).status_code == 404
    assert await count(api) == 0


# -- the pure parts -------------------------------------------------------------------------
def _sub(classes: tuple[str, ...] = (), min_share: float | None = None) -> Subscription:
    return Subscription(
        id="s",
        created=now(),
        geometry=BOADELLA_AREA,
        bbox=(2.0, 41.8, 3.5, 42.8),
        classes=classes,
        min_share=min_share,
        webhook_url="https://example.org/hook",
        kafka_topic=None,
        secret=new_secret(),
    )


def test_matching_needs_the_area_and_a_class_at_its_share() -> None:
    area = shape(BOADELLA_AREA)
    inside, outside = box(2.7, 42.1, 2.9, 42.3), box(-12, 24, -11, 25)
    edge = box(3.5, 42.8, 4.0, 43.0)  # touches a corner: intersects
    shares = {"Forest": 0.4, "River": 0.0}
    assert matched_classes(_sub(), area, inside, shares) == ()
    assert matched_classes(_sub(), area, outside, shares) is None
    assert matched_classes(_sub(), area, edge, shares) == ()
    assert matched_classes(_sub(("Forest",), 0.4), area, inside, shares) == ("Forest",)
    assert matched_classes(_sub(("Forest",), 0.41), area, inside, shares) is None
    assert matched_classes(_sub(("River",)), area, inside, shares) is None  # present: > 0
    assert matched_classes(_sub(("River",), 0.0), area, inside, shares) == ("River",)
    assert matched_classes(_sub(("Forest", "River")), area, inside, shares) == ("Forest",)


def test_footprint_is_the_geometry_else_the_bbox() -> None:
    item = {"geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}}
    found = footprint(item, (5, 5, 6, 6))
    assert found is not None and found.bounds == (0, 0, 1, 1)
    found = footprint({"geometry": None}, (5, 5, 6, 6))
    assert found is not None and found.bounds == (5, 5, 6, 6)
    assert footprint({}, None) is None


def test_request_checks() -> None:
    assert spec.parse_geometry(BOADELLA_AREA, 100).bounds == (2.0, 41.8, 3.5, 42.8)
    with pytest.raises(BadInputError, match="more than 4 positions"):
        spec.parse_geometry(BOADELLA_AREA, 4)
    assert spec.check_classes(["Forest", "Forest"], {"Forest"}) == ("Forest",)
    with pytest.raises(BadInputError, match="no classes are known"):
        spec.check_classes(["Forest"], set())
    assert spec.check_min_share(None, ()) is None
    assert spec.check_min_share(0.0, ("Forest",)) == 0.0
    with pytest.raises(BadInputError):
        spec.check_min_share(float("nan"), ("Forest",))
    assert spec.check_topic("eostream.notifications.a", "eostream.notifications.")
    with pytest.raises(BadInputError):
        spec.check_topic("eostream.notifications.", "eostream.notifications.")


def test_backoff_doubles_up_to_its_cap() -> None:
    s = SubscriptionsSettings(backoff_seconds=2, max_backoff_seconds=10)
    assert [backoff(n, s) for n in range(1, 6)] == [2, 4, 8, 10, 10]
