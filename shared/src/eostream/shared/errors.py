"""Domain errors of the shared library, and how a consumer should treat them.

Consumers translate exceptions at the edge with :func:`classify`: invalid input goes to the
dead-letter topic at once, retryable errors are retried with backoff and then dead-lettered,
anything else stops the consumer so the orchestrator restarts it.
"""

from __future__ import annotations

import errno
from enum import Enum


class EostreamError(Exception):
    """Base of all eostream errors."""


class ConfigError(EostreamError):
    """The environment is wrong: a setting is missing or invalid, or a backend refuses us.

    The message is one line that names the problem and what to change.
    """


class InvalidEventError(EostreamError):
    """A message cannot be decoded or validated: retrying will not help (poison message)."""


class InvalidItemError(InvalidEventError, ValueError):
    """A STAC item's field has the wrong type or value (``roles`` not a list of strings, a
    ``raster:bands`` scale that is not a number): the item cannot be used as given."""


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


#: Words of a server that is down, restarting or overloaded, as MLflow (through requests),
#: PostgreSQL, sqlite and HTTP servers put them in their errors' messages.
_TRANSIENT_TEXT = (
    "Max retries exceeded",
    "Connection refused",
    "Connection aborted",
    "Connection reset",
    "Read timed out",
    "timed out",
    "database is locked",
    "could not connect to server",
    "server closed the connection",
    "error code 502",
    "error code 503",
    "error code 504",
)
#: MLflow's error codes of a server that asks to be tried again later.
_TRANSIENT_CODES = frozenset({"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"})
_TRANSIENT_TYPES = frozenset({"ConnectionError", "Timeout", "OperationalError"})


def is_transient(exc: BaseException) -> bool:
    """Whether a failure of a call to a server (MLflow, PostgreSQL, an HTTP store) looks like
    the server being down, slow or overloaded: worth retrying with backoff (ADR 0010).

    Duck-typed, so no client library is imported here: MLflow's ``error_code``, the class
    names of requests' and SQLAlchemy's errors, the words of their messages.
    """
    if isinstance(exc, RetryableError | ConnectionError | TimeoutError):
        return True
    if getattr(exc, "error_code", None) in _TRANSIENT_CODES:
        return True
    if type(exc).__name__ in _TRANSIENT_TYPES:
        return True
    text = str(exc)
    return any(marker in text for marker in _TRANSIENT_TEXT)


#: errnos of an OSError that the record caused, not the machine: a path it names that is too
#: long, missing, a folder, not a folder, a link loop or not a valid name. Retrying or restarting
#: cannot help, so the record is dead-lettered. Every other errno (a full or read-only disk, an
#: I/O error, no file handles or memory left, permission denied on our own files) is the
#: infrastructure's, and stops the consumer.
INPUT_ERRNOS = frozenset(
    {
        errno.ENAMETOOLONG,
        errno.ENOENT,
        errno.EISDIR,
        errno.ENOTDIR,
        errno.ELOOP,
        errno.EINVAL,
        errno.EILSEQ,
    }
)


def is_input_oserror(exc: BaseException) -> bool:
    """Whether ``exc`` is an OSError caused by the path or data a record names (INPUT_ERRNOS)."""
    return (
        isinstance(exc, OSError)
        and not isinstance(exc, ConnectionError | TimeoutError)
        and exc.errno in INPUT_ERRNOS
    )


def classify(exc: BaseException) -> Disposition:
    """The one error policy for consumers (ADR 0003).

    Invalid input (InvalidEventError, ValueError, and an OSError the record's own paths caused,
    :data:`INPUT_ERRNOS`) is dead-lettered; transient failures are retried; anything else stops
    the consumer, whose supervisor starts it again.
    """
    if isinstance(exc, InvalidEventError | ValueError):
        return Disposition.DEAD_LETTER
    if isinstance(exc, RetryableError | ConnectionError | TimeoutError):
        return Disposition.RETRY
    if is_input_oserror(exc):
        return Disposition.DEAD_LETTER
    return Disposition.STOP
