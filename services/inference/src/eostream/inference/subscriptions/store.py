"""Subscriptions and their pending deliveries, kept in the results index (sqlite or PostgreSQL).

Both survive a restart: a subscription until it is deleted, a delivery until it is sent or
dead-lettered. A delivery is an outbox row: the hook that matches a new result writes it (once
per subscription and version of a result: matching the same result again writes nothing), the
worker claims it (a lease, so two replicas on one PostgreSQL never send it twice at once and a
worker that died mid-attempt leaves it to be tried again when the lease ends), then marks it
sent, reschedules it or marks it dead with the reason.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from eostream.inference.tables import classes_table, create_tables

metadata = sa.MetaData()

subscriptions_table = sa.Table(
    "subscriptions",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("created", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("geometry", sa.Text, nullable=False),
    sa.Column("minx", sa.Float, nullable=False),
    sa.Column("miny", sa.Float, nullable=False),
    sa.Column("maxx", sa.Float, nullable=False),
    sa.Column("maxy", sa.Float, nullable=False),
    sa.Column("classes", sa.Text, nullable=False),
    sa.Column("min_share", sa.Float),
    sa.Column("webhook_url", sa.Text),
    sa.Column("kafka_topic", sa.String(249)),
    sa.Column("secret", sa.Text),
)
deliveries_table = sa.Table(
    "subscription_deliveries",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("subscription_id", sa.String(36), nullable=False, index=True),
    sa.Column("result_id", sa.String(600), nullable=False),
    sa.Column("event", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("reason", sa.Text),
    sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
)

#: a delivery's status: to send; sent; dead-lettered; to be dead-lettered (the reason is set)
PENDING, SENT, DEAD, DYING = "pending", "sent", "dead", "dying"
WAITING = (PENDING, DYING)


@dataclass(frozen=True)
class Subscription:
    id: str
    created: datetime
    geometry: dict[str, Any]
    bbox: tuple[float, float, float, float]
    classes: tuple[str, ...]
    min_share: float | None
    webhook_url: str | None
    kafka_topic: str | None
    secret: str | None

    @property
    def target(self) -> str:
        return "webhook" if self.webhook_url else "kafka"


@dataclass(frozen=True)
class Delivery:
    """One notification of one result to one subscriber, with its subscriber's target."""

    id: str
    subscription_id: str
    result_id: str
    event: dict[str, Any]
    status: str
    attempts: int
    next_at: datetime
    reason: str | None
    created: datetime
    updated: datetime


def now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class SubscriptionStore:
    """SQLAlchemy Core over the results index's engine (its own tables)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def init(self) -> None:
        create_tables(self._engine, metadata)

    # -- subscriptions --------------------------------------------------------------------
    def add(self, sub: Subscription) -> None:
        row = {
            "id": sub.id,
            "created": _utc(sub.created),
            "geometry": json.dumps(sub.geometry),
            "minx": sub.bbox[0],
            "miny": sub.bbox[1],
            "maxx": sub.bbox[2],
            "maxy": sub.bbox[3],
            "classes": json.dumps(list(sub.classes)),
            "min_share": sub.min_share,
            "webhook_url": sub.webhook_url,
            "kafka_topic": sub.kafka_topic,
            "secret": sub.secret,
        }
        with self._engine.begin() as conn:
            conn.execute(subscriptions_table.insert(), [row])

    def get(self, sub_id: str) -> Subscription | None:
        stmt = sa.select(subscriptions_table).where(subscriptions_table.c.id == sub_id)
        with self._engine.connect() as conn:
            row = conn.execute(stmt).mappings().first()
        return _subscription(row) if row is not None else None

    def page(self, limit: int, offset: int) -> tuple[list[Subscription], int]:
        t = subscriptions_table
        stmt = sa.select(t).order_by(t.c.created.desc(), t.c.id).limit(limit).offset(offset)
        with self._engine.connect() as conn:
            rows = conn.execute(stmt).mappings().all()
            total = int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())
        return [_subscription(r) for r in rows], total

    def count(self) -> int:
        stmt = sa.select(sa.func.count()).select_from(subscriptions_table)
        with self._engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def delete(self, sub_id: str) -> bool:
        """Delete a subscription and what it still had to receive (the subscriber asked)."""
        with self._engine.begin() as conn:
            conn.execute(
                deliveries_table.delete().where(
                    deliveries_table.c.subscription_id == sub_id,
                    deliveries_table.c.status.in_(WAITING),
                )
            )
            gone = conn.execute(
                subscriptions_table.delete().where(subscriptions_table.c.id == sub_id)
            )
        return bool(gone.rowcount)

    def overlapping(self, bbox: tuple[float, float, float, float]) -> list[Subscription]:
        """Subscriptions whose bounding box meets ``bbox`` (the exact test is the matcher's)."""
        c = subscriptions_table.c
        minx, miny, maxx, maxy = bbox
        stmt = sa.select(subscriptions_table).where(
            c.minx <= maxx, c.maxx >= minx, c.miny <= maxy, c.maxy >= miny
        )
        with self._engine.connect() as conn:
            return [_subscription(r) for r in conn.execute(stmt).mappings().all()]

    # -- deliveries -----------------------------------------------------------------------
    def enqueue(
        self,
        sub_id: str,
        result_id: str,
        event: dict[str, Any],
        *,
        dying: str | None = None,
        since: datetime | None = None,
    ) -> bool:
        """Write one delivery, due now (``dying``: to be dead-lettered with that reason), and say
        whether it was written: not when this subscription already has a delivery of this
        result made at or after ``since`` (the result's ``created``: the same version of the
        result, matched again), nor when a row with the event's id exists (another replica
        matched it at the same moment; see :func:`delivery_id`)."""
        t = now()
        row = {
            "id": str(event["id"]),
            "subscription_id": sub_id,
            "result_id": result_id,
            "event": json.dumps(event),
            "status": DYING if dying else PENDING,
            "attempts": 0,
            "next_at": t,
            "reason": dying,
            "created": t,
            "updated": t,
        }
        c = deliveries_table.c
        try:
            with self._engine.begin() as conn:
                if since is not None:
                    made = sa.select(c.id).where(
                        c.subscription_id == sub_id,
                        c.result_id == result_id,
                        c.created >= _utc(since),
                    )
                    if conn.execute(made.limit(1)).first() is not None:
                        return False
                conn.execute(deliveries_table.insert(), [row])
        except sa.exc.IntegrityError:  # the same id: written by another replica meanwhile
            return False
        return True

    def pending_count(self) -> int:
        stmt = (
            sa.select(sa.func.count())
            .select_from(deliveries_table)
            .where(deliveries_table.c.status.in_(WAITING))
        )
        with self._engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def next_due(self) -> datetime | None:
        c = deliveries_table.c
        stmt = sa.select(sa.func.min(c.next_at)).where(c.status.in_(WAITING))
        with self._engine.connect() as conn:
            value = conn.execute(stmt).scalar_one_or_none()
        return _utc(value) if value is not None else None

    def claim_due(self, limit: int, lease_seconds: float) -> list[Delivery]:
        """Due pending deliveries, each leased to this worker for ``lease_seconds``."""
        c = deliveries_table.c
        t = now()
        stmt = (
            sa.select(deliveries_table)
            .where(c.status.in_(WAITING), c.next_at <= t)
            .order_by(c.next_at, c.id)
            .limit(limit)
        )
        claimed: list[Delivery] = []
        with self._engine.begin() as conn:
            for row in conn.execute(stmt).mappings().all():
                lease = t + timedelta(seconds=lease_seconds)
                done = conn.execute(
                    deliveries_table.update()
                    .where(c.id == row["id"], c.status.in_(WAITING), c.next_at <= t)
                    .values(next_at=lease, updated=t)
                )
                if done.rowcount == 1:
                    claimed.append(_delivery(row))
        return claimed

    def mark_sent(self, delivery_id: str, attempts: int) -> None:
        self._update(delivery_id, status=SENT, attempts=attempts, reason=None)

    def mark_dead(self, delivery_id: str, attempts: int, reason: str) -> None:
        self._update(delivery_id, status=DEAD, attempts=attempts, reason=reason[:2000])

    def retry_at(
        self, delivery_id: str, attempts: int, when: datetime, reason: str, *, dying: bool = False
    ) -> None:
        self._update(
            delivery_id,
            status=DYING if dying else PENDING,
            attempts=attempts,
            next_at=when,
            reason=reason[:2000],
        )

    def _update(self, delivery_id: str, **values: Any) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                deliveries_table.update()
                .where(deliveries_table.c.id == delivery_id)
                .values(updated=now(), **values)
            )

    def indexed_classes(self) -> set[str]:
        """Class names in the results index (the classes of every model that wrote one)."""
        stmt = sa.select(classes_table.c.class_name).distinct()
        with self._engine.connect() as conn:
            return {str(r[0]) for r in conn.execute(stmt)}

    def deliveries(self, sub_id: str, limit: int = 50) -> list[Delivery]:
        c = deliveries_table.c
        stmt = (
            sa.select(deliveries_table)
            .where(c.subscription_id == sub_id)
            .order_by(c.created.desc(), c.id)
            .limit(limit)
        )
        with self._engine.connect() as conn:
            return [_delivery(r) for r in conn.execute(stmt).mappings().all()]


def new_id() -> str:
    return str(uuid.uuid4())


#: the namespace of delivery ids (:func:`delivery_id`)
DELIVERIES = uuid.UUID("0b8d6f1e-55a4-4c1e-9d27-6a3f5e2c9b70")


def delivery_id(sub_id: str, result_id: str, result_created: datetime) -> str:
    """The id of the delivery telling ``sub_id`` of one version of a result (also its
    CloudEvent id, which subscribers deduplicate on): the same whenever that result is matched
    again, a new one for a recomputed result (its ``created`` moves)."""
    key = f"{sub_id}|{result_id}|{_utc(result_created).isoformat()}"
    return str(uuid.uuid5(DELIVERIES, key))


def _subscription(row: Any) -> Subscription:
    return Subscription(
        id=row["id"],
        created=_utc(row["created"]),
        geometry=json.loads(row["geometry"]),
        bbox=(row["minx"], row["miny"], row["maxx"], row["maxy"]),
        classes=tuple(json.loads(row["classes"])),
        min_share=row["min_share"],
        webhook_url=row["webhook_url"],
        kafka_topic=row["kafka_topic"],
        secret=row["secret"],
    )


def _delivery(row: Any) -> Delivery:
    return Delivery(
        id=row["id"],
        subscription_id=row["subscription_id"],
        result_id=row["result_id"],
        event=json.loads(row["event"]),
        status=row["status"],
        attempts=int(row["attempts"]),
        next_at=_utc(row["next_at"]),
        reason=row["reason"],
        created=_utc(row["created"]),
        updated=_utc(row["updated"]),
    )
