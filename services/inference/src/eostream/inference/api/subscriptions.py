"""``/subscriptions``: be told when a new result covers an area (a signed webhook or a Kafka
topic). Every route needs the API key (a subscription names where results go); a bad request
answers 400 with the reason and changes nothing."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from shapely.geometry import mapping

from eostream.inference.api.deps import ApiKey, Service
from eostream.inference.api.ogc import BadRequestRoute
from eostream.inference.errors import BadInputError
from eostream.inference.service import InferenceService
from eostream.inference.subscriptions import spec, webhooks
from eostream.inference.subscriptions.delivery import Notifier
from eostream.inference.subscriptions.store import Delivery, Subscription, new_id, now
from eostream.shared.http_errors import error_responses
from eostream.shared.webhooks import new_secret


class _BadRequestRoute(BadRequestRoute):
    """Invalid parameters or body answer 400 (the issue's contract for subscriptions), with the
    service's own error body rather than the OGC one."""

    @staticmethod
    def refusal(description: str) -> Exception:
        return BadInputError(description)


#: 422 is documented (as every route's ErrorBody) but answered 400 here, as /jobs does
router = APIRouter(
    prefix="/subscriptions",
    tags=["subscriptions"],
    route_class=_BadRequestRoute,
    dependencies=[ApiKey],
)
ClassName = Annotated[str, StringConstraints(min_length=1, max_length=100)]
SubscriptionId = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class SubscriptionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    geometry: dict[str, Any] = Field(
        description="the area: a GeoJSON geometry in longitude/latitude (RFC 7946)",
        examples=[
            {
                "type": "Polygon",
                "coordinates": [[[2.7, 42.2], [2.9, 42.2], [2.9, 42.4], [2.7, 42.4], [2.7, 42.2]]],
            }
        ],
    )
    classes: list[ClassName] = Field(
        default_factory=list,
        max_length=50,
        description="notify only of results with one of these classes (none: every result)",
    )
    min_share: float | None = Field(
        default=None,
        description="with classes: the least share (0-1) one of them must have; none: present",
    )
    webhook_url: str | None = Field(
        default=None,
        max_length=2000,
        description="POST a signed CloudEvent here (it must answer the CloudEvents webhook "
        "handshake: OPTIONS with WebHook-Request-Origin -> WebHook-Allowed-Origin)",
    )
    kafka_topic: str | None = Field(
        default=None, max_length=249, description="or publish the CloudEvent to this topic"
    )


class SubscriptionOut(BaseModel):
    id: str
    created: datetime
    geometry: dict[str, Any]
    classes: list[str]
    min_share: float | None
    webhook_url: str | None
    kafka_topic: str | None


class SubscriptionCreated(SubscriptionOut):
    secret: str | None = Field(
        description="webhooks: the signing secret (Standard Webhooks, whsec_...), shown only "
        "now; verify webhook-signature with it"
    )


class SubscriptionList(BaseModel):
    subscriptions: list[SubscriptionOut]
    numberMatched: int


class DeliveryOut(BaseModel):
    id: str = Field(description="the CloudEvent id (and webhook-id)")
    result_id: str
    status: str = Field(description="pending, sent, dead (dead-lettered) or dying")
    attempts: int
    reason: str | None = Field(description="why the last attempt failed, or why it is dead")
    next_at: datetime
    created: datetime
    updated: datetime


class DeliveryList(BaseModel):
    deliveries: list[DeliveryOut]


def _notifier(service: InferenceService) -> Notifier:
    if service.notifier is None:
        raise HTTPException(503, "this service notifies nobody (built without subscriptions)")
    return service.notifier


def _out(sub: Subscription) -> dict[str, Any]:
    return {
        "id": sub.id,
        "created": sub.created,
        "geometry": sub.geometry,
        "classes": list(sub.classes),
        "min_share": sub.min_share,
        "webhook_url": sub.webhook_url,
        "kafka_topic": sub.kafka_topic,
    }


def _delivery(d: Delivery) -> dict[str, Any]:
    return {
        "id": d.id,
        "result_id": d.result_id,
        "status": d.status,
        "attempts": d.attempts,
        "reason": d.reason,
        "next_at": d.next_at,
        "created": d.created,
        "updated": d.updated,
    }


def _not_found(sub_id: str) -> HTTPException:
    return HTTPException(404, {"code": "not_found", "description": f"no subscription {sub_id}"})


def _known_classes(service: InferenceService, notifier: Notifier) -> set[str]:
    live = service.deployment.current
    known = set(live.card.classes) if live is not None else set()
    return known | notifier.store.indexed_classes()


@router.post(
    "",
    summary="Subscribe an area: be told of each new result that covers it",
    status_code=201,
    response_model=SubscriptionCreated,
    responses=error_responses(400, 401, 409, 413, 422, 503),
)
async def create(body: SubscriptionRequest, service: Service) -> dict[str, Any]:
    notifier = _notifier(service)
    s = notifier.settings
    geometry = spec.parse_geometry(body.geometry, s.max_vertices)
    known = await run_in_threadpool(_known_classes, service, notifier)
    classes = spec.check_classes(list(body.classes), known)
    min_share = spec.check_min_share(body.min_share, classes)
    if (body.webhook_url is None) == (body.kafka_topic is None):
        raise BadInputError("give exactly one target: webhook_url or kafka_topic")
    if await run_in_threadpool(notifier.store.count) >= s.max_subscriptions:
        raise HTTPException(409, f"{s.max_subscriptions} subscriptions exist already (the most)")
    secret = None
    if body.webhook_url is not None:
        await run_in_threadpool(webhooks.check_target, body.webhook_url, s)
        secret = new_secret()
    elif body.kafka_topic is not None:
        spec.check_topic(body.kafka_topic, s.kafka_topic_prefix)
        if notifier.bus is None:
            raise BadInputError("this service runs without a bus: subscribe with a webhook_url")
    sub = Subscription(
        id=new_id(),
        created=now(),
        geometry=dict(mapping(geometry)),
        bbox=tuple(geometry.bounds),
        classes=classes,
        min_share=min_share,
        webhook_url=body.webhook_url,
        kafka_topic=body.kafka_topic,
        secret=secret,
    )
    await run_in_threadpool(notifier.store.add, sub)
    return _out(sub) | {"secret": secret}


@router.get(
    "",
    summary="The subscriptions, newest first",
    response_model=SubscriptionList,
    responses=error_responses(400, 401, 422, 503),
)
async def list_subscriptions(
    service: Service,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> dict[str, Any]:
    notifier = _notifier(service)
    subs, total = await run_in_threadpool(notifier.store.page, limit, offset)
    return {"subscriptions": [_out(s) for s in subs], "numberMatched": total}


@router.get(
    "/{sub_id}",
    summary="One subscription",
    response_model=SubscriptionOut,
    responses=error_responses(400, 401, 404, 422, 503),
)
async def get_subscription(sub_id: SubscriptionId, service: Service) -> dict[str, Any]:
    sub = await run_in_threadpool(_notifier(service).store.get, sub_id)
    if sub is None:
        raise _not_found(sub_id)
    return _out(sub)


@router.get(
    "/{sub_id}/deliveries",
    summary="A subscription's latest notifications: sent, waiting or dead-lettered (and why)",
    response_model=DeliveryList,
    responses=error_responses(400, 401, 404, 422, 503),
)
async def deliveries(
    sub_id: SubscriptionId,
    service: Service,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> dict[str, Any]:
    store = _notifier(service).store
    if await run_in_threadpool(store.get, sub_id) is None:
        raise _not_found(sub_id)
    found = await run_in_threadpool(store.deliveries, sub_id, limit)
    return {"deliveries": [_delivery(d) for d in found]}


@router.delete(
    "/{sub_id}",
    summary="Unsubscribe (notifications not yet sent are dropped: the subscriber asked)",
    status_code=204,
    response_class=Response,
    responses=error_responses(400, 401, 404, 422, 503),
)
async def delete(sub_id: SubscriptionId, service: Service) -> Response:
    if not await run_in_threadpool(_notifier(service).store.delete, sub_id):
        raise _not_found(sub_id)
    return Response(status_code=204)
