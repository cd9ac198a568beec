"""What a subscription request may say, checked before anything is stored. Pure: the geometry
(GeoJSON, longitude/latitude, valid), the classes (known ones), the minimum share and the
Kafka topic; the webhook URL's policy and reachability are :mod:`.webhooks`'."""

from __future__ import annotations

import math
import re
from collections.abc import Collection

from eostream.inference.errors import BadInputError
from eostream.inference.geojson import parse_geometry

__all__ = ["check_classes", "check_min_share", "check_topic", "parse_geometry"]

_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


def check_classes(classes: list[str], known: Collection[str]) -> tuple[str, ...]:
    """The classes asked for, each one the service knows (the live model's, the indexed
    results'), without repeats."""
    wanted = tuple(dict.fromkeys(classes))
    if not wanted:
        return ()
    if not known:
        raise BadInputError("no classes are known yet (no model deployed): subscribe without")
    unknown = [c for c in wanted if c not in known]
    if unknown:
        raise BadInputError(f"unknown class(es) {unknown[:10]}; known: {sorted(known)}")
    return wanted


def check_min_share(min_share: float | None, classes: tuple[str, ...]) -> float | None:
    if min_share is None:
        return None
    if not math.isfinite(min_share) or not 0 <= min_share <= 1:
        raise BadInputError(f"min_share must be within [0, 1] (got {min_share})")
    if not classes:
        raise BadInputError("min_share needs classes (the share of which class?)")
    return min_share


def check_topic(topic: str, prefix: str) -> str:
    """A Kafka target: a legal topic name under the subscribers' prefix."""
    if not _TOPIC.fullmatch(topic):
        raise BadInputError(
            "kafka_topic must be 1-249 characters of letters, digits, '.', '_' and '-'"
        )
    if not topic.startswith(prefix) or topic == prefix:
        raise BadInputError(f"kafka_topic must start with {prefix!r} and name something after it")
    return topic
