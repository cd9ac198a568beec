"""Notifications of new results: the hook that matches a result written to the index against the
subscriptions, and the worker that delivers what it matched.

The hook (:meth:`Notifier.on_result`, called by the pipeline after a result is stored, and again
whenever the scene is found classified already, in the classification's thread) only reads the
subscriptions and writes one delivery row per match and version of the result: classification never
waits for a subscriber, and a result written just before a crash is matched when its scene comes
again (Kafka delivers it again, its offset not committed). The worker (one asyncio task of the
running service) sends the due rows, at most ``concurrency`` at once: a webhook gets a signed
CloudEvent over HTTP, a Kafka target the CloudEvent in the Kafka binary mode through the service's
bus. A failed attempt is retried with exponential backoff (``backoff_seconds`` doubling up to
``max_backoff_seconds``); after ``max_retries`` retries, or at once when the target is no longer
allowed, the notification goes to the dead-letter topic with the reason and its row is marked dead
with it. Rows are in the results index, so a restart resumes where the last run stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime, timedelta
from typing import Any

import httpx
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from shapely.geometry import shape

from eostream.inference import metrics
from eostream.inference.results import ResultRecord
from eostream.inference.settings import SubscriptionsSettings
from eostream.inference.subscriptions import webhooks
from eostream.inference.subscriptions.matching import footprint, matched_classes
from eostream.inference.subscriptions.store import (
    Delivery,
    Subscription,
    SubscriptionStore,
    delivery_id,
    now,
)
from eostream.inference.subscriptions.webhooks import DeliveryFailed
from eostream.shared import topics
from eostream.shared.bus import Bus
from eostream.shared.bus.base import Delivery as BusDelivery
from eostream.shared.bus.base import dead_letter_message
from eostream.shared.codec import WireMessage
from eostream.shared.webhooks import sign

log = logging.getLogger(__name__)

EVENT_TYPE = "io.eostream.subscription.result"
SOURCE = "/eostream/inference"
SERVICE = "inference"
_FORMAT = JSONFormat()


def notification(
    sub: Subscription, record: ResultRecord, matched: tuple[str, ...]
) -> dict[str, Any]:
    """The CloudEvent (attributes and data, as stored) telling ``sub`` of ``record``."""
    assets = record.item.get("assets", {})
    links = record.item.get("links", [])
    self_href = next((ln.get("href") for ln in links if ln.get("rel") == "self"), None)
    return {
        "id": delivery_id(sub.id, record.id, record.created),
        "attributes": {
            "specversion": "1.0",
            "source": SOURCE,
            "type": EVENT_TYPE,
            "subject": record.id,
            "time": now().isoformat(),
            "datacontenttype": "application/json",
        },
        "data": {
            "subscription_id": sub.id,
            "result_id": record.id,
            "scene_id": record.scene_id,
            "model_name": record.model_name,
            "model_version": record.model_version,
            "datetime": record.datetime.isoformat() if record.datetime else None,
            "bbox": list(record.bbox) if record.bbox else None,
            "matched_classes": list(matched),
            "class_shares": {k: v["share"] for k, v in record.stats.get("classes", {}).items()},
            "item_href": self_href,
            "cog_href": assets.get("classification", {}).get("href"),
            "quicklook_href": assets.get("quicklook", {}).get("href"),
        },
    }


def cloud_event(stored: dict[str, Any]) -> CloudEvent:
    attributes = dict(stored["attributes"], id=stored["id"])
    attributes["time"] = datetime.fromisoformat(attributes["time"])
    return CloudEvent(attributes, stored["data"])


def webhook_request(stored: dict[str, Any], secret: str) -> tuple[dict[str, str], bytes]:
    """The CloudEvent in the HTTP binary mode, signed (Standard Webhooks headers)."""
    message = ce_http.to_binary(cloud_event(stored), _FORMAT)
    stamp = int(time.time())
    headers = dict(message.headers)
    headers["webhook-id"] = stored["id"]
    headers["webhook-timestamp"] = str(stamp)
    headers["webhook-signature"] = sign(secret, stored["id"], stamp, message.body)
    return headers, message.body


def kafka_message(stored: dict[str, Any]) -> WireMessage:
    """The CloudEvent in the Kafka binary mode, keyed by the result id."""
    message = ce_kafka.to_binary(cloud_event(stored), _FORMAT, key_mapper=lambda e: e.get_subject())
    key = message.key.encode() if isinstance(message.key, str) else message.key
    return WireMessage(key=key, value=message.value, headers=dict(message.headers))


def backoff(attempts: int, settings: SubscriptionsSettings) -> float:
    """Seconds before the next try after ``attempts`` failed ones (1 -> backoff_seconds)."""
    return float(min(settings.max_backoff_seconds, settings.backoff_seconds * 2 ** (attempts - 1)))


class Notifier:
    """Matches new results (the hook) and delivers the notifications (the worker)."""

    def __init__(
        self, settings: SubscriptionsSettings, store: SubscriptionStore, bus: Bus | None
    ) -> None:
        self.settings = settings
        self.store = store
        self.bus = bus
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._stopping = False

    # -- the hook (any thread) ------------------------------------------------------------
    def on_result(self, record: ResultRecord) -> None:
        """Write a delivery for each subscription ``record`` concerns; never raises (a failure
        is logged and counted: the result itself is written)."""
        try:
            matched = self._match(record)
        except Exception:
            log.exception("subscriptions: could not match result %s", record.id)
            metrics.NOTIFICATIONS.labels("any", "failed").inc()
            return
        if matched and self._loop is not None and self._wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(self._wake.set)

    def _match(self, record: ResultRecord) -> int:
        where = footprint(record.item, record.bbox)
        if where is None:
            return 0
        shares = {k: float(v["share"]) for k, v in record.stats.get("classes", {}).items()}
        count = 0
        for sub in self.store.overlapping(tuple(where.bounds)):
            found = matched_classes(sub, shape(sub.geometry), where, shares)
            if found is None:
                continue
            full = self.store.pending_count() >= self.settings.max_pending
            reason = (
                f"queue full: {self.settings.max_pending} notifications already wait "
                "(INFERENCE_SUBSCRIPTIONS__MAX_PENDING)"
                if full
                else None
            )
            event = notification(sub, record, found)
            count += self.store.enqueue(
                sub.id, record.id, event, dying=reason, since=record.created
            )
        return count

    # -- the worker ----------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stopping = False
        self._client = httpx.AsyncClient(follow_redirects=False)
        self._task = asyncio.create_task(self._run(), name="subscriptions-delivery")

    async def stop(self) -> None:
        """Let the attempts in flight finish (a request's timeout at most), then stop; one cut
        short is tried again when its lease ends."""
        task, self._task = self._task, None
        if task is not None and task.get_loop() is not asyncio.get_running_loop():
            # started in another event loop (now closed or stopped): nothing left to wait for
            task, self._client = None, None
        if task is not None:
            self._stopping = True
            if self._wake is not None:
                self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), self.settings.timeout_seconds + 5)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        self._loop = None

    async def _run(self) -> None:
        s = self.settings
        lease = s.timeout_seconds + 30
        while not self._stopping:
            try:
                due = await asyncio.to_thread(self.store.claim_due, s.concurrency, lease)
                if due:
                    await asyncio.gather(*(self._attempt(d) for d in due))
                    continue
                metrics.NOTIFICATIONS_PENDING.set(await asyncio.to_thread(self.store.pending_count))
                wait = await asyncio.to_thread(self._seconds_to_next)
            except asyncio.CancelledError:
                raise
            except Exception:  # the index unreachable: try again shortly, never stop
                log.exception("subscriptions: the delivery worker failed; trying again")
                wait = 5.0
            if self._wake is None:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)
            self._wake.clear()

    def _seconds_to_next(self) -> float:
        due = self.store.next_due()
        if due is None:
            return 30.0
        return max(0.05, min(30.0, (due - now()).total_seconds()))

    async def _attempt(self, delivery: Delivery) -> None:
        sub = await asyncio.to_thread(self.store.get, delivery.subscription_id)
        if sub is None:  # deleted while this one was in flight: nobody to tell
            await asyncio.to_thread(
                self.store.mark_dead, delivery.id, delivery.attempts, "subscription deleted"
            )
            return
        if delivery.status == "dying":
            await self._dead_letter(delivery, sub, delivery.reason or "", delivery.attempts)
            return
        attempts = delivery.attempts + 1
        try:
            await self._send(delivery, sub)
        except Exception as exc:  # an error no rule foresaw is a failed attempt too
            failed = (
                exc
                if isinstance(exc, DeliveryFailed)
                else DeliveryFailed(f"{type(exc).__name__}: {exc}"[:500])
            )
            if not isinstance(exc, DeliveryFailed):
                log.warning("subscriptions: %s failed unexpectedly", delivery.id, exc_info=True)
            metrics.NOTIFICATIONS.labels(sub.target, "failed").inc()
            if failed.final or attempts > self.settings.max_retries:
                reason = f"undeliverable after {attempts} attempt(s): {failed.reason}"
                await self._dead_letter(delivery, sub, reason, attempts)
            else:
                when = now() + timedelta(seconds=backoff(attempts, self.settings))
                log.info(
                    "subscriptions: %s to %s failed (%s); retry %d at %s",
                    delivery.id,
                    sub.id,
                    failed.reason,
                    attempts,
                    when.isoformat(),
                )
                await asyncio.to_thread(
                    self.store.retry_at, delivery.id, attempts, when, failed.reason
                )
            return
        metrics.NOTIFICATIONS.labels(sub.target, "sent").inc()
        await asyncio.to_thread(self.store.mark_sent, delivery.id, attempts)

    async def _send(self, delivery: Delivery, sub: Subscription) -> None:
        if sub.webhook_url is not None and sub.secret is not None:
            if self._client is None:
                raise DeliveryFailed("the notifier is stopped")
            headers, body = webhook_request(delivery.event, sub.secret)
            await webhooks.post(self._client, sub.webhook_url, headers, body, self.settings)
            return
        if sub.kafka_topic is None:
            raise DeliveryFailed("the subscription names no target", final=True)
        if self.bus is None:
            raise DeliveryFailed("this service runs without a bus: no Kafka target", final=True)
        try:
            await self.bus.publish_raw(sub.kafka_topic, kafka_message(delivery.event))
        except Exception as exc:  # the bus retried already; the worker retries later
            raise DeliveryFailed(f"publishing to {sub.kafka_topic}: {exc}"[:500]) from None

    async def _dead_letter(
        self, delivery: Delivery, sub: Subscription, reason: str, attempts: int
    ) -> None:
        """The notification, as a Kafka binary-mode CloudEvent, to the dead-letter topic with
        the reason; its row marked dead. Without a bus the row (and the log) keep it."""
        origin = sub.kafka_topic if sub.kafka_topic else f"webhook:{sub.id}"
        letter = dead_letter_message(
            kafka_message(delivery.event),
            BusDelivery(topic=origin, partition=None, offset=None, key=delivery.result_id),
            reason=reason,
            error_type="NotificationUndeliverable",
            service=SERVICE,
            attempts=max(attempts, 1),
        )
        if self.bus is not None:
            topic = getattr(self.bus, "dead_letter_topic", topics.DEAD_LETTER)
            try:
                await self.bus.publish_raw(topic, letter)
            except Exception:
                log.exception("subscriptions: dead-lettering %s failed; trying later", delivery.id)
                when = now() + timedelta(seconds=self.settings.max_backoff_seconds)
                await asyncio.to_thread(
                    self.store.retry_at, delivery.id, attempts, when, reason, dying=True
                )
                return
        log.error("subscriptions: notification %s to %s dead: %s", delivery.id, sub.id, reason)
        metrics.NOTIFICATIONS.labels(sub.target, "dead_lettered").inc()
        await asyncio.to_thread(self.store.mark_dead, delivery.id, attempts, reason)
