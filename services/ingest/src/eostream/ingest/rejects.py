"""Dead letters of the items ingest rejects: the item as read, why, and where to read it again.

A rejected item (it maps to no valid scene) or an unreadable item file goes to the dead-letter
topic as a consumer's poison record would (``eostream.shared.bus.base.dead_letter_message``), with
its source and href so ``eostream dlq replay`` can read it again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import PurePosixPath
from urllib.parse import urlparse

from eostream.ingest.errors import ItemRejected
from eostream.ingest.sources import RawItem
from eostream.shared import metrics as shared_metrics
from eostream.shared.bus import Bus, Delivery
from eostream.shared.bus.base import dead_letter_message
from eostream.shared.codec import WireMessage

log = logging.getLogger(__name__)
SERVICE = "ingest"
REJECTED = "ItemRejected"  # the dead letters' error type
#: header of a letter that came from a replay (as eostream.shared.deadletters.REPLAYED_FROM)
REPLAYED_FROM = "dlq_replayed_from"


async def dead_letter(
    bus: Bus,
    topic: str,
    source: str,
    raw: RawItem,
    exc: ItemRejected,
    replayed_from: str | None = None,
) -> None:
    """Publish ``raw`` to the dead-letter ``topic`` with the reason of ``exc``."""
    key = exc.item_id
    headers = {"content-type": b"application/geo+json", "stac_source": source.encode()}
    if raw.href:  # where to read it again on a replay
        headers["stac_href"] = raw.href.encode("utf-8")
    if replayed_from:
        headers[REPLAYED_FROM] = replayed_from.encode("utf-8")
    message = WireMessage(
        key=key.encode("utf-8"),
        value=json.dumps(raw.item, separators=(",", ":")).encode("utf-8"),
        headers=headers,
    )
    delivery = Delivery(topic=f"stac:{source}", partition=None, offset=None, key=key)
    await bus.publish_raw(
        topic,
        dead_letter_message(
            message,
            delivery,
            reason=exc.reason,
            error_type=REJECTED,
            service=SERVICE,
            attempts=1,
        ),
    )
    # Counted like a consumer's dead letters: the "topic" is where the record came from.
    shared_metrics.DEAD_LETTERS.labels(SERVICE, delivery.topic, REJECTED).inc()
    log.warning("%s: rejected %s: %s", source, key, exc.reason)


def unreadable_id(raw: RawItem) -> str:
    """The item id an unreadable item stands for: its file's name without ``.json``; for one
    with no file (a STAC API's feature that is not an object) a digest of why, so each such
    feature is dead-lettered once, not at every poll, and two different ones are two letters."""
    if not raw.href:
        digest = hashlib.sha256((raw.unreadable or "").encode("utf-8")).hexdigest()[:12]
        return f"<unreadable {digest}>"
    stem = PurePosixPath(urlparse(raw.href).path).name
    return stem.removesuffix(".json") or "<unreadable>"
