"""Credentials out of what people read: a URI may carry ``user:password@`` (an MLflow tracking
server behind basic auth, a database DSN, a broker or object-store URL) or a secret in its query
(``?token=``, ``?api_key=``, a presigned URL's ``X-Amz-Signature``). Error bodies (the bridge's
``GET /models/{name}`` is public) and every service's log lines (:class:`RedactingFormatter`,
installed by ``settings.configure_logging``) show both masked (:func:`redact_urls`); a link
(:func:`without_userinfo`) keeps its query, which a presigned link needs, and loses its user and
password."""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit, urlunsplit

#: the userinfo of every URL in a text: up to the last ``@`` before the path, query or fragment
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)[^/?#\s]*@")
#: a query parameter that carries a secret: named ``token``, ``secret``, ``password``,
#: ``signature``, ``credential`` (or ending in one after ``_``, ``-`` or ``.``: ``access_token``,
#: ``X-Amz-Signature``), ``sig``, ``key``, ``apikey``, ``auth``, or an API/access/secret/
#: subscription/private key (``api_key``, ``X-API-Key``); not ``sort_key`` or ``metric_key``.
#: Its value ends at ``&``, ``#``, a blank, a quote, a bracket or ``,``/``;``.
_SECRET_PARAM = re.compile(
    r"(?P<name>(?:[?&;])(?:"
    r"(?:[\w.\-]*[_.\-])?(?:token|secret|password|passwd|pwd|signature|credential)"
    r"|sig|key|apikey|auth|authorization"
    r"|(?:[\w.\-]*[_.\-])?(?:api|access|secret|subscription|private)[_.\-]?key"
    r")=)"
    r"[^&#\s\"'<>(),;]*",
    re.IGNORECASE,
)
MASK = "***"


def redact_urls(text: str) -> str:
    """``text`` with the user and password of every URL in it, and the value of every query
    parameter named as a secret, replaced by ``***``."""
    text = _USERINFO.sub(rf"\g<scheme>{MASK}@", text)
    return _SECRET_PARAM.sub(rf"\g<name>{MASK}", text)


def without_userinfo(uri: str) -> str:
    """``uri`` with no user or password at all (for a link); ``uri`` itself when it has none."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return redact_urls(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


class RedactingFormatter(logging.Formatter):
    """A formatter whose every line, the traceback included, has its URLs' userinfo masked: a
    library's error text ("API request to http://user:password@host failed") logged with
    ``log.exception`` or ``%s`` keeps no credential."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_urls(super().format(record))
