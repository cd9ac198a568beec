"""Credentials out of what people read: an MLflow URI may carry ``user:password@`` (a tracking
server behind basic auth, a database DSN). Error bodies (``GET /models/{name}`` is public), logs
and catalogue links show it without them."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

#: the userinfo of every URL in a text: up to the last ``@`` before the path, query or fragment
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)[^/?#\s]*@")
MASK = "***"


def redact_urls(text: str) -> str:
    """``text`` with the user and password of every URL in it replaced by ``***``."""
    return _USERINFO.sub(rf"\g<scheme>{MASK}@", text)


def without_userinfo(uri: str) -> str:
    """``uri`` with no user or password at all (for a link); ``uri`` itself when it has none."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return redact_urls(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
