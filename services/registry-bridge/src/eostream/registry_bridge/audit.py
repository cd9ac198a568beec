"""The audit log: who promoted, forced, rolled back or undid what, when and why.

Append-only by construction: one JSON object per entry in the bridge's object store (the models
bucket), ``<prefix>/<model>/<UTC time>-<id>.json``, written once and never rewritten, so the
listing is the history in time order. It lives beside the shipped models rather than in MLflow
tags because whoever can move an alias in MLflow can also write tags: the alias guard trusts an
override only when this log, which only the bridge writes, records it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Literal, TypeVar
from urllib.parse import quote
from uuid import UUID, uuid4

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from eostream.registry_bridge.shipping import store_retrying
from eostream.shared import tags
from eostream.shared.errors import ObjectNotFoundError
from eostream.shared.storage import ObjectStore

log = logging.getLogger(__name__)
T = TypeVar("T")

#: promote: a passing version made champion (by a person or the bridge); override: a version
#: that failed the gate made champion with ``force``; rollback: the previous champion back;
#: alias_accepted: a champion alias moved in MLflow to a passing version, shipped and announced;
#: alias_undone: a champion alias moved in MLflow to a version that may not be champion, moved
#: back; gated: the gate's verdict on ``version`` (the ``eostream.gate`` tag says it too, but
#: anyone who can write MLflow tags can write that one: this is the record the bridge trusts).
Action = Literal["promote", "override", "rollback", "alias_accepted", "alias_undone", "gated"]
#: rest: the credentialed REST API; cli: ``eostream models ...`` on an operator's machine;
#: auto: the bridge after a passed gate; mlflow: an alias moved in MLflow.
Via = Literal["rest", "cli", "auto", "mlflow"]


class AuditEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: UUID = Field(default_factory=uuid4)
    at: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))
    model: str = Field(min_length=1)
    action: Action
    by: str = Field(min_length=1, description="the credential's name, the OS user, or a service")
    via: Via
    from_version: str | None = Field(description="champion before (None: there was none)")
    to_version: str | None = Field(description="champion after (None: the alias was removed)")
    reason: str
    version: str | None = Field(default=None, description="gated: the version judged")
    verdict: Literal["passed", "failed", "refused"] | None = Field(
        default=None, description="gated: the gate's verdict"
    )
    registered_ms: int | None = Field(
        default=None,
        description="gated: when the version was registered (a model deleted and registered "
        "again numbers its versions from 1: the verdict is this version's, not the number's)",
    )


class AuditLog:
    def __init__(
        self,
        store: ObjectStore,
        prefix: str = "audit",
        *,
        attempts: int = 5,
        backoff: float = 0.5,
        backoff_max: float = 15.0,
    ) -> None:
        self.store = store
        self.prefix = prefix.strip("/")
        self._retrying = store_retrying(attempts, backoff, backoff_max)
        self._read: dict[str, AuditEntry] = {}  # entries are written once: each key read once

    def _call(self, fn: Callable[[], T]) -> T:
        return self._retrying(fn)

    def _folder(self, name: str) -> str:
        return f"{self.prefix}/{quote(name, safe='')}/"

    def append(self, entry: AuditEntry) -> str:
        """Write one entry; returns its key. Blocking (call from a thread)."""
        stamp = entry.at.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        key = f"{self._folder(entry.model)}{stamp}-{entry.id.hex}.json"
        body = entry.model_dump_json().encode()
        self._call(lambda: self.store.put_bytes(key, body, "application/json"))
        if entry.action == "gated":
            log.info("audit: %s v%s gate %s", entry.model, entry.version, entry.verdict)
            return key
        log.info(
            "audit: %s %s %s -> %s by %s (%s): %s",
            entry.model,
            entry.action,
            entry.from_version,
            entry.to_version,
            entry.by,
            entry.via,
            entry.reason,
        )
        return key

    def entries(self, name: str) -> list[AuditEntry]:
        """The model's entries, oldest first. Blocking."""
        keys = sorted(o.key for o in self._call(lambda: list(self.store.list(self._folder(name)))))

        def read(key: str) -> bytes:
            return self._call(lambda: self.store.get_bytes(key))

        found = []
        for key in keys:
            if key in self._read:
                found.append(self._read[key])
                continue
            try:
                entry = AuditEntry.model_validate(json.loads(read(key)))
            except (ObjectNotFoundError, ValueError, ValidationError) as exc:
                log.warning("audit entry %s unreadable, left out: %s", key, exc)
                continue
            self._read[key] = entry
            found.append(entry)
        return found


#: entries after which the champion is their ``to_version``
MOVES = frozenset({"promote", "override", "rollback", "alias_accepted"})


def moves(entries: Iterable[AuditEntry]) -> list[AuditEntry]:
    """The entries about the champion alias (every one but the gate's verdicts)."""
    return [e for e in entries if e.action != "gated"]


def verdict_on_record(
    entries: Iterable[AuditEntry], version: str, registered_ms: int | None = None
) -> str | None:
    """The gate's last verdict on ``version`` (registered at ``registered_ms``) as the bridge
    recorded it; None: none on record. A version the bridge made champion as passing before
    verdicts were recorded (a ``promote`` or an accepted alias move) counts as passed, so a
    deployment's earlier champions stay champions and rollback targets."""
    found: str | None = None
    for entry in entries:
        if entry.action == "gated" and entry.version == version:
            if None in (entry.registered_ms, registered_ms) or entry.registered_ms == registered_ms:
                found = entry.verdict
        elif (
            found is None
            and entry.action in ("promote", "alias_accepted")
            and entry.to_version == version
            and not _before(entry, registered_ms)
        ):
            found = "passed"  # made champion without force: it had passed
    return found


#: what the display surfaces (``models list``, REST ``/models``, the models catalogue) show for a
#: version whose ``eostream.gate`` tag claims a verdict the audit log does not hold
UNVERIFIED = "unverified"


def trusted_gate(
    tagged: str | None, entries: Iterable[AuditEntry], version: str, registered_ms: int | None
) -> str | None:
    """The gate's verdict on ``version`` as the bridge trusts it: the one on record
    (:func:`verdict_on_record`); with none on record, a tag that keeps the version out
    (failed, refused) as it is, any other tag :data:`UNVERIFIED`; None: no tag, not gated."""
    if tagged is None:
        return None
    recorded = verdict_on_record(entries, version, registered_ms)
    if recorded is not None:
        return recorded
    return tagged if tagged in (tags.GATE_FAILED, tags.GATE_REFUSED) else UNVERIFIED


#: how far the bridge's clock may be behind the registry's (registration times are MLflow's)
CLOCK_SKEW_MS = 300_000


def _before(entry: AuditEntry, registered_ms: int | None) -> bool:
    """Whether ``entry`` was written before the version was registered: it was about another
    version with the same number (a model deleted and registered again numbers from 1)."""
    if registered_ms is None:
        return False
    return entry.at.timestamp() * 1000 < registered_ms - CLOCK_SKEW_MS


def in_force(entries: Iterable[AuditEntry], version: str) -> bool:
    """Whether the last force of ``version`` in ``entries`` (oldest first) still holds: the
    champion has not moved to another version since (a promotion, another force, a rollback or
    an accepted alias move). A force rolled back "because it misclassifies rivers" could be
    made champion again by anyone moving the alias in MLflow; now that takes a new force."""
    forced = False
    for entry in entries:
        if entry.action == "override" and entry.to_version == version:
            forced = True
        elif entry.action in MOVES and entry.to_version != version:
            forced = False
    return forced
