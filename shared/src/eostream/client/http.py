"""What every eostream REST client shares: one ``httpx.Client``, the API key for its own API
only, path segments escaped, and every failure (an error status, no answer, an answer that is
not the JSON expected) turned into :class:`~eostream.client.errors.ApiError`."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

import httpx

from eostream.client.errors import ApiError

T = TypeVar("T")


def api_path(*segments: str) -> str:
    """An API path from its segments, each escaped whole (``/`` and dot segments too): an id is
    one segment, so ``result("a/statistics")`` asks for that scene, not for a's statistics."""
    escaped = (quote(s, safe="") for s in segments)
    return "/" + "/".join(s.replace(".", "%2E") if s in (".", "..") else s for s in escaped)


class RestClient:
    """A base URL, an optional API key and a timeout.

    The key goes as ``X-API-Key`` only to URLs under the base URL (same scheme, host, port and
    path prefix): :meth:`request` also takes absolute URLs the server handed out (a map's
    href), and one pointing elsewhere must not receive the key.

    Use it as a context manager, or call :meth:`close`. A caller may pass its own
    ``httpx.Client`` (``http=``), e.g. with a transport of its own; it is then not closed here.
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        http: httpx.Client | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._owned = http is None
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = http or httpx.Client(timeout=timeout)
        self._headers = headers

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._owned:
            self._http.close()

    def absolute(self, path_or_url: str) -> str:
        """``path_or_url`` as a URL: a path is put under the base URL, a URL is kept."""
        if path_or_url.startswith(("http://", "https://")):
            return path_or_url
        return f"{self.url}/{path_or_url.lstrip('/')}"

    def owns(self, url: str) -> bool:
        """Whether ``url`` is under the base URL, compared as httpx sends it (default ports and
        dot segments normalised), so a look-alike (``host.evil``, ``/api-other``) is not."""
        try:
            base, target = httpx.URL(self.url), httpx.URL(url)
        except httpx.InvalidURL:
            return False
        if (target.scheme, target.host, target.port) != (base.scheme, base.host, base.port):
            return False
        prefix = base.path.rstrip("/")
        return target.path == prefix or target.path.startswith(prefix + "/")

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """One request; any status >= 400 or transport failure raises :class:`ApiError`."""
        url = self.absolute(path)
        query = {k: v for k, v in (params or {}).items() if v is not None}
        sent = {**(self._headers if self.owns(url) else {}), **(headers or {})}
        try:
            response = self._http.request(method, url, params=query, json=json, headers=sent)
        except httpx.HTTPError as exc:
            raise ApiError(0, "unreachable", str(exc) or type(exc).__name__, url) from exc
        if response.status_code >= 400:
            raise error_of(response)
        return response

    def call(
        self,
        method: str,
        path: str,
        read: Callable[[Any], T],
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
    ) -> T:
        """:meth:`request`, then its JSON body read by ``read`` (a model's ``model_validate``)."""
        response = self.request(method, path, params=params, json=json, headers=headers)
        return decoded(response, read)

    def get(self, path: str, read: Callable[[Any], T], **params: Any) -> T:
        """``GET path`` with the query ``params`` (None left out), read like :meth:`call`."""
        return self.call("GET", path, read, params=params)


def json_object(body: Any) -> dict[str, Any]:
    """The JSON body, which must be an object (a ``read`` for :meth:`RestClient.call`)."""
    if not isinstance(body, dict):
        raise TypeError(f"expected a JSON object, got {type(body).__name__}")
    return body


def decoded(response: httpx.Response, read: Callable[[Any], T]) -> T:
    """The response's JSON body read by ``read``. A body that is not JSON (a proxy's login page)
    or not of the expected shape raises ApiError (code ``invalid_response``): the caller gets
    the one exception the package promises, not a JSONDecodeError or a ValidationError."""
    try:
        return read(response.json())
    except (ValueError, KeyError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
        what = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ApiError(
            response.status_code,
            "invalid_response",
            f"the answer is not what an eostream API sends ({what}): is the URL right?",
            str(response.url),
        ) from exc


def error_of(response: httpx.Response) -> ApiError:
    """The :class:`ApiError` of a failed response, with the server's error body when it sent one
    (OGC exceptions carry ``type``/``detail`` instead: those are read too)."""
    code, description = f"http_{response.status_code}", response.text[:500] or "no body"
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        detail = body.get("detail")
        if isinstance(detail, dict):  # an HTTPException carrying the error body
            body = detail
        code = str(body.get("code") or body.get("type") or code)
        description = str(body.get("description") or body.get("detail") or description)
    return ApiError(response.status_code, code, description, str(response.url))
