"""Reading and replaying dead letters on a bus: the I/O half of ``eostream dlq``.

Works on both adapters: Kafka (read from the beginning without a consumer group, nothing
committed) and the in-process :class:`~eostream.shared.bus.memory.InMemoryBus` of the embedded
mode, which lives inside its process: call these functions on that bus object from the same
process (tests, the embedded system); another process cannot reach it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from eostream.shared import deadletters as dl
from eostream.shared import topics
from eostream.shared.bus.base import Bus
from eostream.shared.codec import WireMessage
from eostream.shared.errors import ConfigError

log = logging.getLogger(__name__)

Action = Literal["replayed", "would replay", "already replayed", "cannot replay"]


@dataclass(frozen=True)
class ReplayOutcome:
    letter: dl.Letter
    action: Action
    #: where it went (or would go)
    topic: str
    #: for "already replayed": the earlier replay
    mark: dl.ReplayMark | None = None
    #: for "cannot replay": why
    detail: str = ""


def dead_letter_topic(bus: Bus) -> str:
    topic = getattr(bus, "dead_letter_topic", None)
    return topic if isinstance(topic, str) and topic else topics.DEAD_LETTER


async def read_records(bus: Bus, topic: str, *, timeout: float = 20.0) -> list[WireMessage]:
    """Every record of ``topic`` now, oldest first per partition (operators' tools, tests)."""
    from eostream.shared.bus.memory import InMemoryBus

    if isinstance(bus, InMemoryBus):
        return bus.records(topic)
    read_topic = getattr(bus, "read_topic", None)
    if read_topic is None:
        raise ConfigError(f"{type(bus).__name__} cannot read a topic back")
    records: list[WireMessage] = await read_topic(topic, timeout=timeout)
    return records


async def read_letters(bus: Bus) -> list[dl.Letter]:
    """Every letter of the bus's dead-letter topic, oldest first, each once."""
    return dl.letters(await read_records(bus, dead_letter_topic(bus)))


async def read_marks(bus: Bus) -> dict[str, dl.ReplayMark]:
    """The replay log: which letters were replayed already."""
    return dl.replay_marks(await read_records(bus, dl.replay_log_topic(dead_letter_topic(bus))))


async def replay(
    bus: Bus,
    chosen: Sequence[dl.Letter],
    *,
    dry_run: bool = False,
    requested_by: str = "eostream dlq",
    marks: dict[str, dl.ReplayMark] | None = None,
) -> list[ReplayOutcome]:
    """Replay the letters not replayed before; record each in the replay log.

    The record is published first and marked after, so a crash in between can replay a letter
    twice (at least once, like every publish in eostream; the receiving handlers are idempotent),
    never lose the replay. Two operators replaying the same letter at the same moment can both
    publish it, for the same reason.
    """
    known = await read_marks(bus) if marks is None else marks
    log_topic = dl.replay_log_topic(dead_letter_topic(bus))
    outcomes: list[ReplayOutcome] = []
    for item in chosen:
        try:
            plan = dl.replay_of(item, requested_by=requested_by)
        except dl.DeadLetterQueryError as exc:
            outcomes.append(ReplayOutcome(item, "cannot replay", "", detail=str(exc)))
            continue
        mark = known.get(item.id)
        if mark is not None:
            outcomes.append(ReplayOutcome(item, "already replayed", plan.topic, mark))
            continue
        if dry_run:
            outcomes.append(ReplayOutcome(item, "would replay", plan.topic))
            continue
        if plan.request is not None:
            await bus.publish(plan.topic, plan.request)
        elif plan.message is not None:
            await bus.publish_raw(plan.topic, plan.message)
        when = datetime.now(UTC)
        await bus.publish_raw(log_topic, dl.replay_log_record(plan, when=when, by=requested_by))
        known[item.id] = dl.ReplayMark(item.id, plan.topic, when, requested_by)
        log.info("replayed dead letter %s to %s", item.id, plan.topic)
        outcomes.append(ReplayOutcome(item, "replayed", plan.topic))
    return outcomes
