"""The Kafka adapter's publish retry policy: which broker errors are transient, and how long a
publish rides them out before the bus is declared unavailable (ADR 0008)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

from eostream.shared import metrics
from eostream.shared.errors import BusUnavailableError

log = logging.getLogger(__name__)

PUBLISH_BACKOFF_SECONDS = 0.5
PUBLISH_BACKOFF_MAX_SECONDS = 5.0


def transient(exc: BaseException) -> bool:
    """A broker that is restarting, unreachable or electing a leader: worth trying again."""
    return isinstance(exc, KafkaError) and (
        bool(getattr(exc, "retriable", False))
        or isinstance(exc, KafkaConnectionError | KafkaTimeoutError)
    )


async def publish_retrying(
    send: Callable[[], Awaitable[None]], *, topic: str, service: str, retry_seconds: float
) -> None:
    """Run ``send`` until the broker takes it, through a restart or a leader election.

    A batch half taken before a failure is sent again whole: consumers drop the duplicates by
    event id. Past ``retry_seconds`` (the settings' ``publish_retry_seconds``) it raises
    :class:`BusUnavailableError`, which stops a consumer without committing (it is restarted
    and the record redelivered).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + retry_seconds
    delay = PUBLISH_BACKOFF_SECONDS
    attempt = 0
    while True:
        attempt += 1
        try:
            await send()
        except (KafkaError, OSError) as exc:
            if not (transient(exc) or isinstance(exc, OSError)):
                raise
            if loop.time() + delay > deadline:
                raise BusUnavailableError(
                    f"the broker did not take a record for {topic} within "
                    f"{retry_seconds:.0f}s ({attempt} attempts): "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            log.warning(
                "publishing to %s failed (attempt %d, %s: %s); retrying in %.1fs",
                topic,
                attempt,
                type(exc).__name__,
                exc,
                delay,
            )
            metrics.PUBLISH_RETRIES.labels(service, topic).inc()
            await asyncio.sleep(delay)
            delay = min(PUBLISH_BACKOFF_MAX_SECONDS, delay * 2)
        else:
            return
