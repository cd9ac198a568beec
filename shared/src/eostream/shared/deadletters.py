"""Dead letters for operators: which ones, and what replaying one publishes. No I/O here.

A *letter* is one record of the dead-letter topic (``eostream.deadletter``): the original key,
value and headers plus ``dlq_*`` headers (see :func:`eostream.shared.bus.base.dead_letter_message`).
Its id is a digest of its bytes (key, value, every header), the same on both buses and on every
read, so ``eostream dlq show --id`` and ``replay --id`` name one letter across runs; a letter the
broker holds twice (a publish retried) is one letter.

Replaying a letter:

* a bus record (original topic ``eostream.*``) goes back to its original topic with its original
  key, value and non-``dlq_`` headers, byte for byte, plus ``dlq_replayed_from=<letter id>``;
* a STAC item ingest rejected (original topic ``stac:<source>``) is not a bus record: replaying it
  publishes :class:`~eostream.shared.events.ItemReplayRequested` on ``eostream.ingest.replay``,
  and ingest re-reads the item from its source as it is now.

Each replay is written to a log topic (``<dead-letter topic>.replayed``, key: the letter id), and
a letter found there is not replayed again (ADR 0006).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from eostream.shared import topics
from eostream.shared.bus.base import DLQ_HEADER_PREFIX, parse_dead_letter
from eostream.shared.codec import WireMessage
from eostream.shared.errors import EostreamError
from eostream.shared.events import DeadLetter, ItemReplayRequested

#: Length of a letter id (hex digits of a sha256); commands accept any unique prefix of 4 or more.
LETTER_ID_LENGTH = 12
MIN_ID_PREFIX = 4
#: Header on a replayed record (and on a letter that came from one): the letter it replays.
REPLAYED_FROM = DLQ_HEADER_PREFIX + "replayed_from"
#: Original topics of ingest's rejected STAC items: ``stac:<source name>``.
STAC_PREFIX = "stac:"
#: Namespace of the ids of ItemReplayRequested events (uuid5 of the letter id).
REPLAY_NAMESPACE = uuid.UUID("5d1b8f0e-6a8c-4f57-9a0e-2f3c7d9b1e64")

#: Largest value a dead letter keeps whole (bytes); a larger one is kept as an excerpt of this
#: size, with ``dlq_original_size`` and ``dlq_truncated`` headers (Kafka refuses records over
#: about 1 MB by default, so a 10 MB item cannot be dead-lettered whole).
MAX_VALUE_BYTES = 256 * 1024
#: Headers of a dead letter whose value is an excerpt: the original value's size in bytes, and
#: ``true``. Such a letter cannot be replayed byte for byte (:func:`replay_of` refuses it).
ORIGINAL_SIZE = DLQ_HEADER_PREFIX + "original_size"
TRUNCATED = DLQ_HEADER_PREFIX + "truncated"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class DeadLetterQueryError(EostreamError, ValueError):
    """A selection that cannot work (a bad --since, an unknown or ambiguous id): one line."""


@dataclass(frozen=True)
class Letter:
    """One dead letter: its id, the record as on the dead-letter topic, its headers read."""

    id: str
    message: WireMessage
    letter: DeadLetter

    @property
    def is_stac_item(self) -> bool:
        return self.letter.original_topic.startswith(STAC_PREFIX)

    @property
    def replayed_from(self) -> str | None:
        """The letter whose replay failed again and became this one, if any."""
        raw = self.message.headers.get(REPLAYED_FROM)
        return raw.decode("utf-8", errors="replace") if raw else None


@dataclass(frozen=True)
class ReplayMark:
    """One line of the replay log: that letter was replayed, where to, when and by whom."""

    letter_id: str
    topic: str
    time: datetime
    by: str


@dataclass(frozen=True)
class Replay:
    """What replaying one letter publishes: a raw record, or ingest's replay request."""

    letter: Letter
    topic: str
    message: WireMessage | None = None
    request: ItemReplayRequested | None = None


def letter_id(message: WireMessage) -> str:
    """A digest of the record's bytes: key, value and every header (in name order)."""
    digest = hashlib.sha256()
    for part in (message.key or b"", message.value):
        digest.update(len(part).to_bytes(8, "big") + part)
    for name in sorted(message.headers):
        raw = name.encode("utf-8")
        digest.update(len(raw).to_bytes(8, "big") + raw)
        digest.update(len(message.headers[name]).to_bytes(8, "big") + message.headers[name])
    return digest.hexdigest()[:LETTER_ID_LENGTH]


def excerpt(value: bytes, max_bytes: int = MAX_VALUE_BYTES) -> tuple[bytes, dict[str, bytes]]:
    """The value a dead letter keeps, and the headers that say so: ``value`` itself when it is
    at most ``max_bytes`` long, else its first ``max_bytes`` bytes with the original size."""
    if len(value) <= max_bytes:
        return value, {}
    return value[:max_bytes], {
        ORIGINAL_SIZE: str(len(value)).encode("ascii"),
        TRUNCATED: b"true",
    }


def is_excerpt(message: WireMessage) -> bool:
    """Whether a letter keeps only an excerpt of the original value."""
    return message.headers.get(TRUNCATED) == b"true"


def read_letter(message: WireMessage) -> Letter:
    """A record of the dead-letter topic as a :class:`Letter`, even with damaged dlq headers."""
    try:
        letter = parse_dead_letter(message)
    except ValueError as exc:
        letter = DeadLetter(
            reason=f"(unreadable dlq_* headers: {exc})",
            error_type="",
            service="",
            original_topic="",
            original_key=message.key.decode("utf-8", errors="replace") if message.key else None,
            original_value=message.value,
            time=datetime.fromtimestamp(0, UTC),
        )
    return Letter(letter_id(message), message, letter)


def letters(messages: Iterable[WireMessage]) -> list[Letter]:
    """The letters of the records given, oldest first, each once."""
    found: dict[str, Letter] = {}
    for message in messages:
        letter = read_letter(message)
        found.setdefault(letter.id, letter)
    return sorted(found.values(), key=lambda item: (item.letter.time, item.id))


# -- selection ---------------------------------------------------------------------------------


def parse_since(text: str, now: datetime) -> datetime:
    """``2h``, ``30m``, ``7d``, ``1w``, ``45s`` before ``now``, or an ISO time (UTC if naive)."""
    match = _DURATION.match(text)
    if match:
        amount, unit = float(match.group(1)), match.group(2).lower()
        try:
            return now - timedelta(seconds=amount * _UNITS[unit])
        except (OverflowError, ValueError):  # 999999w: before the year 1
            raise DeadLetterQueryError(
                f"--since {text!r} reaches back before the year 1: give a shorter duration"
            ) from None
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise DeadLetterQueryError(
            f"--since {text!r} is neither an ISO time (2024-05-01T10:00:00Z) nor a duration "
            "(45s, 30m, 2h, 7d, 1w)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def reason_matcher(text: str) -> Callable[[str], bool]:
    """Match a reason by substring (case-insensitive) or, when ``text`` is one, by regex."""
    needle = text.casefold()
    try:
        pattern: re.Pattern[str] | None = re.compile(text, re.IGNORECASE)
    except re.error:
        pattern = None

    def matches(reason: str) -> bool:
        return needle in reason.casefold() or bool(pattern and pattern.search(reason))

    return matches


@dataclass(frozen=True)
class LetterFilter:
    """Which letters: every field given must match (None matches everything)."""

    #: the original topic, exactly or as a shell pattern (``stac:*``)
    topic: str | None = None
    #: a substring of the reason, or a regex
    reason: str | None = None
    since: datetime | None = None
    #: a letter id or a unique prefix of one (:func:`pick`)
    id: str | None = None
    service: str | None = None

    @property
    def empty(self) -> bool:
        return all(v is None for v in (self.topic, self.reason, self.since, self.id, self.service))

    def matches(self, item: Letter) -> bool:
        letter = item.letter
        if self.id is not None and not item.id.startswith(self.id.lower()):
            return False
        if self.topic is not None and not (
            letter.original_topic == self.topic
            or fnmatch.fnmatchcase(letter.original_topic, self.topic)
        ):
            return False
        if self.service is not None and letter.service != self.service:
            return False
        if self.since is not None and letter.time < self.since:
            return False
        return self.reason is None or reason_matcher(self.reason)(letter.reason)


def select(items: Iterable[Letter], where: LetterFilter) -> list[Letter]:
    if where.id is not None:
        check_id(where.id)
    return [item for item in items if where.matches(item)]


def check_id(text: str) -> None:
    if not re.fullmatch(f"[0-9a-fA-F]{{{MIN_ID_PREFIX},{LETTER_ID_LENGTH}}}", text):
        raise DeadLetterQueryError(
            f"--id {text!r} is not a letter id: {MIN_ID_PREFIX} to {LETTER_ID_LENGTH} hex digits "
            "as `eostream dlq list` shows them"
        )


def pick(items: Sequence[Letter], where: LetterFilter) -> Letter:
    """Exactly one letter, or an error saying how many matched."""
    chosen = select(items, where)
    if len(chosen) == 1:
        return chosen[0]
    what = f"id {where.id}" if where.id else "the filters"
    if not chosen:
        raise DeadLetterQueryError(f"no dead letter matches {what} ({len(items)} in all)")
    shown = ", ".join(c.id for c in chosen[:5])
    raise DeadLetterQueryError(
        f"{len(chosen)} dead letters match {what} ({shown}{', ...' if len(chosen) > 5 else ''}); "
        "pick one with --id"
    )


# -- replay ------------------------------------------------------------------------------------


def replay_log_topic(dead_letter_topic: str) -> str:
    """The replay log beside a dead-letter topic (``eostream.deadletter.replayed``)."""
    if dead_letter_topic == topics.DEAD_LETTER:
        return topics.DEAD_LETTER_REPLAYED
    return dead_letter_topic + ".replayed"


def replay_of(item: Letter, *, requested_by: str = "eostream dlq") -> Replay:
    """What replaying ``item`` publishes, and where."""
    letter = item.letter
    if item.is_stac_item:
        return Replay(item, topics.INGEST_REPLAY, request=_item_request(item, requested_by))
    if not letter.original_topic:
        raise DeadLetterQueryError(
            f"letter {item.id} names no original topic (dlq_original_topic): cannot replay it"
        )
    if is_excerpt(item.message):
        size = item.message.headers.get(ORIGINAL_SIZE, b"?").decode("ascii", errors="replace")
        raise DeadLetterQueryError(
            f"letter {item.id} keeps only an excerpt of its {size}-byte value: cannot replay it "
            "byte for byte; publish the original again from its source"
        )
    headers = {
        name: value
        for name, value in item.message.headers.items()
        if not name.startswith(DLQ_HEADER_PREFIX)
    }
    headers[REPLAYED_FROM] = item.id.encode("ascii")
    message = WireMessage(key=item.message.key, value=item.message.value, headers=headers)
    return Replay(item, letter.original_topic, message=message)


def _item_request(item: Letter, requested_by: str) -> ItemReplayRequested:
    letter = item.letter
    text = {k: v.decode("utf-8", errors="replace") for k, v in item.message.headers.items()}
    try:
        body = json.loads(item.message.value)
    except ValueError:
        body = None
    body = body if isinstance(body, dict) else {}
    item_id = letter.original_key or (body.get("id") if isinstance(body.get("id"), str) else None)
    source = text.get("stac_source") or letter.original_topic.removeprefix(STAC_PREFIX)
    if not item_id or not source:
        raise DeadLetterQueryError(f"letter {item.id} names no STAC item or source to look at")
    collection = body.get("collection")
    return ItemReplayRequested(
        id=uuid.uuid5(REPLAY_NAMESPACE, item.id),
        item_id=item_id,
        source_name=source,
        collection=collection if isinstance(collection, str) and collection else None,
        item_href=text.get("stac_href") or None,
        letter_id=item.id,
        reason=letter.reason[:2000],
        requested_by=requested_by,
        source="eostream-dlq",
    )


def replay_log_record(replay: Replay, *, when: datetime, by: str) -> WireMessage:
    body = {
        "letter_id": replay.letter.id,
        "original_topic": replay.letter.letter.original_topic,
        "topic": replay.topic,
        "time": when.astimezone(UTC).isoformat(),
        "by": by,
    }
    return WireMessage(
        key=replay.letter.id.encode("ascii"),
        value=json.dumps(body, separators=(",", ":")).encode("utf-8"),
        headers={"content-type": b"application/json"},
    )


def replay_marks(messages: Iterable[WireMessage]) -> dict[str, ReplayMark]:
    """The replay log read back: the first mark of each letter id (unreadable lines skipped)."""
    marks: dict[str, ReplayMark] = {}
    for message in messages:
        try:
            body = json.loads(message.value)
            mark = ReplayMark(
                letter_id=str(body["letter_id"]),
                topic=str(body.get("topic", "")),
                time=datetime.fromisoformat(str(body["time"])),
                by=str(body.get("by", "")),
            )
        except (ValueError, KeyError, TypeError):
            continue
        marks.setdefault(mark.letter_id, mark)
    return marks


def split_replayed(
    items: Iterable[Letter], marks: Mapping[str, ReplayMark]
) -> tuple[list[Letter], list[tuple[Letter, ReplayMark]]]:
    """(letters still to replay, letters already replayed with their mark)."""
    todo: list[Letter] = []
    done: list[tuple[Letter, ReplayMark]] = []
    for item in items:
        mark = marks.get(item.id)
        if mark is None:
            todo.append(item)
        else:
            done.append((item, mark))
    return todo, done
