"""What every eostream REST client shares: one ``httpx.Client``, the API key on writes, and
errors turned into :class:`~eostream.client.errors.ApiError` with the server's error body."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self

import httpx

from eostream.client.errors import ApiError


class RestClient:
    """A base URL, an optional API key (sent as ``X-API-Key`` on every request) and a timeout.

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
        try:
            response = self._http.request(
                method, url, params=query, json=json, headers={**self._headers, **(headers or {})}
            )
        except httpx.HTTPError as exc:
            raise ApiError(0, "unreachable", str(exc) or type(exc).__name__, url) from exc
        if response.status_code >= 400:
            raise error_of(response)
        return response

    def get_json(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params).json()


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
