"""Standard Webhooks signatures (https://www.standardwebhooks.com), pure (no I/O).

One copy for both directions: inference signs the notifications it sends to subscribers,
ingest verifies the item notifications pushed to it (ADR 0016).

The secret is ``whsec_<base64 key>`` (a plain text secret is taken as its UTF-8 bytes); the
request carries ``webhook-id``, ``webhook-timestamp`` (Unix seconds) and ``webhook-signature`` =
``v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>``, several space separated during a
key rotation.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping

#: a webhook-timestamp: integer seconds since the epoch, ASCII digits (12 reach year 33658)
_SECONDS = re.compile(r"[0-9]{1,12}")
SECRET_PREFIX = "whsec_"  # noqa: S105 - the Standard Webhooks prefix of a secret, not one


class SignatureError(ValueError):
    """A request whose signature does not hold; ``code`` names why (``unauthorized``: unsigned,
    ``stale_timestamp``, ``bad_signature``)."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


def new_secret() -> str:
    """A fresh ``whsec_`` secret with a 32-byte key."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def signing_key(secret: str) -> bytes:
    """The HMAC key: ``whsec_<base64>`` decoded, else the text's bytes."""
    if secret.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
        except binascii.Error:
            pass
    return secret.encode("utf-8")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value of a message."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(signing_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signed_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers of a signed request."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


def check_headers(headers: Mapping[str, str], *, now: float, tolerance: float) -> tuple[str, int]:
    """The message id and timestamp of a request's signature headers, checked before its body
    is read; raises :class:`SignatureError` when one is missing or the timestamp is not within
    ``tolerance`` seconds of ``now`` (against replay). :func:`verify` calls it too."""
    msg_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    if not msg_id or not stamp or not headers.get("webhook-signature"):
        raise SignatureError(
            "unauthorized",
            "unsigned: webhook-id, webhook-timestamp and webhook-signature are required "
            "(Standard Webhooks, HMAC-SHA256 with the shared secret)",
        )
    if not _SECONDS.fullmatch(stamp):  # not str.isdigit: it takes "²" and 5,000 digits
        raise SignatureError("bad_signature", "webhook-timestamp is not integer seconds")
    if abs(now - int(stamp)) > tolerance:
        raise SignatureError(
            "stale_timestamp",
            f"webhook-timestamp is more than {tolerance:g} s from now: refused against replay",
        )
    return msg_id, int(stamp)


def verify(
    secret: str, headers: Mapping[str, str], body: bytes, *, now: float, tolerance: float
) -> str:
    """The message id of a request signed with ``secret``; raises :class:`SignatureError` when
    a header is missing, the timestamp is not within ``tolerance`` seconds of ``now`` (against
    replay) or no signature matches (compared in constant time)."""
    msg_id, stamp = check_headers(headers, now=now, tolerance=tolerance)
    given = headers["webhook-signature"]
    expected = sign(secret, msg_id, stamp, body).encode()
    for candidate in given.split():
        if candidate.startswith("v1,") and hmac.compare_digest(candidate.encode(), expected):
            return msg_id
    raise SignatureError("bad_signature", "no v1 signature matches the request")
