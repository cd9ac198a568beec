"""Domain errors of the ingest service."""

from __future__ import annotations

from eostream.shared.errors import ConfigError, EostreamError, RetryableError
from eostream.shared.redaction import redact_urls


class ItemRejected(EostreamError, ValueError):
    """A STAC item cannot become a SceneDiscovered (missing assets, bad geometry, unknown level,
    no datetime). It goes to the dead-letter topic with this message as the reason."""

    def __init__(self, item_id: str, reason: str) -> None:
        super().__init__(f"{item_id}: {reason}")
        self.item_id = item_id
        self.reason = reason


class SourceUnavailable(RetryableError):
    """A source cannot be read now (API down, catalogue unreadable): back off and retry.

    Its text names the source's URL without a user or password (``https://user:token@host``
    would otherwise reach ``/readyz`` and a push's 503 answer)."""

    def __init__(self, message: str) -> None:
        super().__init__(redact_urls(message))


class UnknownSource(ConfigError):
    """No source with that name is configured (check INGEST_SOURCES / INGEST_SOURCES_FILE)."""


class PushRefused(EostreamError):
    """A pushed notification that is not taken: its HTTP status, error code and reason."""

    def __init__(self, status: int, code: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.code = code
        self.description = description
