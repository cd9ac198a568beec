"""The client's one exception: what the server answered (its ``{"code", "description"}`` error
body), or why no answer came."""

from __future__ import annotations


class ApiError(Exception):
    """A REST call that did not succeed.

    ``status`` is the HTTP status (0: the server could not be reached), ``code`` and
    ``description`` come from the server's error body (every eostream API answers errors with
    ``{"code": ..., "description": ...}``), ``url`` is what was asked.
    """

    def __init__(self, status: int, code: str, description: str, url: str) -> None:
        self.status = status
        self.code = code
        self.description = description
        self.url = url
        where = f"{status} from {url}" if status else f"cannot reach {url}"
        super().__init__(f"{where}: {description} ({code})")
