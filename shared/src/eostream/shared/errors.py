"""Domain errors of the shared library, and how a consumer should treat them.

Consumers translate exceptions at the edge with :func:`classify`: invalid input goes to the
dead-letter topic at once, retryable errors are retried with backoff and then dead-lettered,
anything else stops the consumer so the orchestrator restarts it.
"""

from __future__ import annotations

from enum import Enum


class EostreamError(Exception):
    """Base of all eostream errors."""


class ConfigError(EostreamError):
    """The environment is wrong: a setting is missing or invalid, or a backend refuses us.

    The message is one line that names the problem and what to change.
    """


class InvalidEventError(EostreamError):
    """A message cannot be decoded or validated: retrying will not help (poison message)."""


class RetryableError(EostreamError):
    """A transient failure (a server down, a timeout): worth retrying with backoff."""


class BusUnavailableError(EostreamError):
    """The bus could not take a record for longer than its publish retries allow.

    Not the record's fault, so it is never dead-lettered: the consumer that was publishing stops
    without committing, its supervisor starts it again, and the record is redelivered.
    """


class InvalidKeyError(EostreamError, ValueError):
    """An object-store key is unsafe (absolute, traversing, empty segments) or too long."""


class ObjectNotFoundError(EostreamError, KeyError):
    """No object under that key."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else "object not found"


class ObjectUnreadableError(EostreamError, ValueError):
    """An object named by a URI cannot be used as given (too large, a scheme we cannot read, a
    4xx answer): retrying will not help."""


class Disposition(Enum):
    DEAD_LETTER = "dead_letter"
    RETRY = "retry"
    STOP = "stop"


def classify(exc: BaseException) -> Disposition:
    """The one error policy for consumers."""
    if isinstance(exc, InvalidEventError | ValueError):
        return Disposition.DEAD_LETTER
    if isinstance(exc, RetryableError | ConnectionError | TimeoutError):
        return Disposition.RETRY
    return Disposition.STOP
